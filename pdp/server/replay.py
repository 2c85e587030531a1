"""Service-token replay memory shared by every replica through the bundle store.

Configured with ``[tokens] shared_replay = true``: each new token costs one store round trip;
the local memory still answers replays at this replica without one.
"""

from __future__ import annotations

from pdp.clock import Clock
from pdp.errors import StoreError, TokenError
from pdp.security.tokens import ReplayCache, TokenReplayError
from pdp.store import BundleStore

__all__ = ["ReplayMemoryUnavailableError", "StoreReplayCache"]


class ReplayMemoryUnavailableError(TokenError):
    """The shared replay memory cannot be reached: new tokens are refused (fail closed)."""

    code = "replay_memory_unavailable"
    jti = ""


class StoreReplayCache(ReplayCache):
    """A ReplayCache that also records each token in the shared store (fail closed)."""

    def __init__(self, store: BundleStore, *, clock: Clock,
                 max_entries: int = 1_000_000) -> None:
        super().__init__(max_entries, clock=clock)
        self._store = store

    def check_and_remember(self, issuer: str, jti: str, until: float) -> None:
        """Raise TokenReplayError if any replica saw (issuer, jti) before; a store that
        cannot answer refuses the token (TokenKeySetError), it does not let it pass."""
        super().check_and_remember(issuer, jti, until)
        try:
            fresh = self._store.remember_token(issuer, jti, until, now=self._clock())
        except StoreError as exc:
            raise ReplayMemoryUnavailableError(f"replay memory unavailable: {exc}") from None
        if not fresh:
            raise TokenReplayError("jti already used at another replica (replayed token)",
                                   jti=jti)
