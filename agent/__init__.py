"""edge-agent: the per-node daemon that serves the models of :mod:`inference` over HTTP."""

__version__ = "0.1.0"
