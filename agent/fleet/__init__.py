"""``edge-agent fleet``: the rollout controller, run centrally (a Deployment or a CI job).

It reads the fleet's metrics from Prometheus, decides per model whether the canary steps on,
holds, is promoted or is rolled back (``policy``), and writes the next fleet manifest where the
nodes read it (``manifest_store``). All its state is in the manifest's ``status``.
"""
