"""pdp.server."""
