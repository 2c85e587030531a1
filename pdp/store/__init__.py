"""pdp.store."""
