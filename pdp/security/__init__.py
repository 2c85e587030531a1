"""pdp.security."""
