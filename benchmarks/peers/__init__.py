"""Peer PDPs measured side by side with pdp (Cerbos)."""
