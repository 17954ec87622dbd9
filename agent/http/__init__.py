"""The HTTP face of the daemon: parse, validate, call the service, serialise."""
