"""Keeps the engine's active bundle, quarantine and shadow in step with the bundle store.

Every path to activation (a push, ActivateBundle, Rollback, a change made by another
replica, start-up) goes through :meth:`BundleManager.sync`, which re-validates the stored
bytes (digest and signature) before one atomic swap in the engine.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pdp.clock import Clock
from pdp.errors import BundleError, StoreCorruptError
from pdp.policy import Bundle, CompiledPolicy, Limits, PolicyEngine, compile_bundle, load_bundle
from pdp.security.signing import BundleVerifier
from pdp.store import Activation, BundleStore, StoredBundle

__all__ = ["BundleManager", "Validated"]

log = logging.getLogger(__name__)


def _glibc(name: str) -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        found: Callable[..., int] = getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError):  # not glibc
        return None
    return found


_TRIM = _glibc("malloc_trim")
_MALLOPT = _glibc("mallopt")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
_MMAP_THRESHOLD = 1 << 20  # bytes: blocks this big get their own mapping


def _release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim; elsewhere a no-op).

    Loading a large bundle goes through buffers as big as the bundle (the pushed bytes, their
    text, the store's copy); freed, they stay in the process's resident set until trimmed.
    """
    if _TRIM is not None:
        _TRIM(0)


def _map_large_blocks() -> None:
    """Have glibc give every block of 1 MiB or more its own mapping, unmapped when freed.

    glibc's threshold starts at 128 KiB but rises to the size of the largest mapped block
    freed (up to 32 MiB). A push goes through several buffers as big as the bundle (the
    received message, the request's copy, its bytes, their text, the store's copies: 14 MB
    each at 100,000 rules); once the first is freed the others come from the heap, and
    those still alive when the push's sync trims (the request and its bytes) stayed
    resident after the push returned: 177 -> 147 MB right after a 100,000-rule push. A
    fixed threshold stops the rise. The trim threshold (free memory at the top of a heap
    that free() gives back at once) rose with it, to twice its size; it is fixed at 2 MiB
    (else 159 MB). Blocks on the decision path are far smaller (a 1,000-request batch is
    ~100 KB).
    """
    if _MALLOPT is not None:
        _MALLOPT(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        _MALLOPT(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD)


@dataclass(frozen=True, slots=True)
class Validated:
    """A pushed bundle that parsed, validated and carries an acceptable signature."""

    bundle: Bundle
    data: bytes
    signature: bytes | None
    key_id: str | None


class BundleManager:
    """Validation, storage and activation of bundles for one replica."""

    def __init__(
        self,
        *,
        store: BundleStore,
        engine: PolicyEngine,
        verifier: BundleVerifier,
        limits: Limits,
        clock: Clock,
        on_activated: Callable[[CompiledPolicy], None] | None = None,
        on_shadow: Callable[[CompiledPolicy | None], None] | None = None,
        on_settled: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._engine = engine
        self._verifier = verifier
        self._limits = limits
        self._clock = clock
        self._on_activated = on_activated
        self._on_shadow = on_shadow
        self._on_settled = on_settled
        self._unsettled = 0  # settle() calls until on_settled runs (0: nothing to settle)
        self._lock = threading.RLock()
        self._activation: Activation | None = None
        self._shadow_version: str | None = None
        self._state: object = object()
        # Compiled policies by version, so that a push, its activation and the sync that
        # follows parse and compile a bundle once, not three times (seconds at 100k rules).
        # Bounded: after every sync only the active and the shadow version stay (a policy
        # of 100,000 rules is ~40 MB; a replaced one must not outlive its activation).
        self._compiled: dict[tuple[str, str], CompiledPolicy] = {}
        _map_large_blocks()

    # --- validation --------------------------------------------------------------------------

    def validate(
        self, data: bytes, signature: bytes | None, key_id: str | None, *, source: str
    ) -> Validated:
        """Parse, validate and check the signature of pushed bytes; raise BundleError."""
        bundle = load_bundle(data, source=source, limits=self._limits)
        self._verifier.verify(bundle.digest, signature or None, key_id or None)
        return Validated(bundle, data, signature or None, key_id or None)

    def compile_stored(
        self, stored: StoredBundle, *, bundle: Bundle | None = None
    ) -> CompiledPolicy:
        """Re-validate a stored bundle before it may serve.

        ``bundle`` is the already validated parse of ``stored.data`` (a push), else the
        stored bytes are parsed again. Raises StoreCorruptError or BundleError.
        """
        key = (stored.version, stored.data_sha256)
        cached = self._compiled.get(key)
        if cached is not None:
            return cached
        if bundle is None:
            bundle = load_bundle(stored.data, source=f"store:{stored.version}",
                                 limits=self._limits)
        if bundle.digest != stored.digest:
            raise StoreCorruptError(
                f"stored bundle {stored.version}: canonical digest {bundle.digest[:12]} does not "
                f"match the recorded digest {stored.digest[:12]}; refusing to serve it"
            )
        self._verifier.verify(bundle.digest, stored.signature, stored.key_id)
        policy = compile_bundle(bundle, version=stored.version, sequence=stored.sequence)
        if len(self._compiled) >= 3:
            self._compiled.pop(next(iter(self._compiled)))
        self._compiled[key] = policy
        return policy

    # --- admin acts -------------------------------------------------------------------------

    def store(self, valid: Validated, *, by: str) -> StoredBundle:
        """Store a validated bundle (not yet active)."""
        return self._store.put(
            valid.data,
            digest=valid.bundle.digest,
            signature=valid.signature,
            key_id=valid.key_id,
            pushed_by=by,
            name=valid.bundle.name,
            revision=valid.bundle.revision,
            rule_count=len(valid.bundle.rules),
            now=self._clock(),
        )

    def activate(
        self,
        version: str,
        *,
        by: str,
        bundle: Bundle | None = None,
        stored: StoredBundle | None = None,
    ) -> StoredBundle:
        """Activate a stored version everywhere (store first), then here; return it.

        The bundle is compiled before the store's pointer moves, so a version that cannot
        serve is never made active. ``bundle``: its validated parse, and ``stored``: the
        record :meth:`store` just returned, when the caller has them (the store checks the
        bytes it holds again as it activates them).
        """
        with self._lock:
            if stored is None or stored.version != version:
                stored = self._store.get(version)
            self.compile_stored(stored, bundle=bundle)
            self._store.activate(version, by=by, now=self._clock())
            self.sync()
            return stored

    def rollback(self, *, by: str) -> StoredBundle:
        """Make the previously active version active again; return it."""
        with self._lock:
            activation = self._store.rollback(by=by, now=self._clock())
            stored = self._store.get(activation.version)
            self.sync()
            return stored

    # --- reconciliation ---------------------------------------------------------------------

    @property
    def activation(self) -> Activation | None:
        return self._activation

    def sync(self) -> None:
        """Bring the engine in line with the store: active bundle, quarantine, shadow.

        A stored bundle that fails re-validation is refused loudly and the engine keeps
        what it serves.
        """
        with self._lock:
            before, shadow_before = self._engine.policy, self._shadow_version
            self._sync_active()
            self._sync_quarantine()
            self._sync_shadow()
            self._prune()
            changed = self._engine.policy is not before or self._shadow_version != shadow_before
            del before  # a replaced policy goes now, and its memory with it
            if changed:
                self._unsettled = 2
                _release_free_memory()

    def settle(self) -> None:
        """Run ``on_settled`` once after the active or the shadow policy changed, at the
        second call after the change.

        The server's monitor calls it every half second: on_settled then runs 0.5-1 s after
        the change, once the push that made it has returned and dropped its parse of the
        bundle, and not again while pushes keep coming.
        """
        with self._lock:
            if not self._unsettled:
                return
            self._unsettled -= 1
            if not self._unsettled and self._on_settled is not None:
                self._on_settled()

    def _prune(self) -> None:
        keep = {self._activation.version if self._activation else None, self._shadow_version}
        for key in [k for k in self._compiled if k[0] not in keep]:
            del self._compiled[key]

    def sync_if_changed(self) -> None:
        """Sync when the store's state token moved (cheap to call often)."""
        token = self._store.state_token()
        if token != self._state:
            self._state = token
            self.sync()
            # Also the buffers of a push that just returned (its request, the bytes it
            # stored), freed only after its own sync.
            _release_free_memory()

    def _sync_active(self) -> None:
        # The activation first: the bundle (megabytes, checksummed on every read) is read
        # only when it is newer than what the engine serves.
        latest = self._store.activation()
        if latest is None or (
            self._activation is not None and latest.sequence <= self._activation.sequence
        ):
            return
        # Just compiled from checked bytes (this replica's push or activation): no need to
        # read them again.
        policy = next((p for (v, _), p in self._compiled.items() if v == latest.version), None)
        activation = latest
        if policy is None:
            current = self._store.active()
            if current is None:
                return
            activation, stored = current
            if self._activation is not None and activation.sequence <= self._activation.sequence:
                return
            try:
                policy = self.compile_stored(stored)
            except (BundleError, StoreCorruptError) as exc:
                log.error("refusing to activate stored bundle %s: %s", stored.version, exc)
                raise
        self._engine.activate(policy)
        self._activation = activation
        if self._on_activated is not None:
            self._on_activated(policy)

    def _sync_quarantine(self) -> None:
        entries = self._store.quarantined(now=self._clock())
        self._engine.set_quarantine({e.subject: e.until for e in entries})

    def _sync_shadow(self) -> None:
        version = self._store.shadow()
        if version == self._shadow_version:
            return
        self._shadow_version = version
        if self._on_shadow is None:
            return
        if version is None:
            self._on_shadow(None)
            return
        self._on_shadow(self.compile_stored(self._store.get(version)))
