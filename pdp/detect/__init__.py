"""pdp.detect."""
