"""pdp.policy."""
