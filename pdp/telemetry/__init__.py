"""pdp.telemetry."""
