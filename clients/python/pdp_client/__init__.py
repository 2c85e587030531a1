"""pdp-client: the thin client of the pdp policy decision point."""
