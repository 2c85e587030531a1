"""pdp.audit."""
