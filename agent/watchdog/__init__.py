"""Supervision: systemd's notify protocol, the hardware watchdog, the self-test inference."""
