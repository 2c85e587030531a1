"""The detectors: each turns security events into hits (key, window count, firing or not).

Detectors are single-threaded (the pipeline's worker calls them) and hold only bounded state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pdp.detect._config import DenyRatioJumpConfig, DetectionConfig
from pdp.detect._windows import BucketedRatio, KeyedWindows, peer_host
from pdp.events import Event, EventType, Severity

__all__ = ["RELEVANT_TYPES", "Detector", "Hit", "build_detectors"]

# Events any detector looks at; the pipeline drops the rest before queueing them.
RELEVANT_TYPES = frozenset(
    {
        EventType.DECISION,
        EventType.AUTH_FAILURE_CERT,
        EventType.AUTH_FAILURE_TOKEN,
        EventType.AUTH_FAILURE_PEER,
        EventType.PERMISSION_DENIED,
        EventType.TOKEN_REPLAY,
        EventType.BUNDLE_SIGNATURE_FAILURE,
    }
)

_ADMIN_METHOD_PREFIX = "/pdp.v1.Admin/"
_NO_DETAILS: Mapping[str, Any] = MappingProxyType({})
# The `kind` of a replayed service token: the server reports TokenError.code, and a replay
# is pdp.security.tokens.TokenReplayError, code "replayed_jti".
REPLAY_KIND = "replayed_jti"


@dataclass(slots=True, kw_only=True)
class Hit:
    """One event counted against one key; ``firing`` when the detector's condition holds.

    Read-only by convention: not a frozen dataclass only because a deny storm detector makes
    one per deny, and a frozen one costs three times as much to build.
    """

    key: str
    count: int  # events (or denies) in the window, this one included
    first_seen: float  # oldest event in the window
    firing: bool
    # What the alert carries; may be left empty when not firing (only a firing hit raises one).
    details: Mapping[str, Any] = field(default_factory=dict)
    quarantine_subject: str = ""  # what to quarantine if this detector acts; "" = nothing


@dataclass(frozen=True, slots=True, kw_only=True)
class Detector:
    """A named detector: ``observe(event)`` returns its hits (usually none or one)."""

    name: str
    severity: Severity
    window: float
    quarantine: bool
    quarantine_ttl: float
    observe: Callable[[Event], list[Hit]]
    tracked: Callable[[], int]  # keys held in its windows now (bounded by max_keys)
    # The events ``observe`` can count: the pipeline gives it no others (for any other event
    # it must return no hit and change nothing). ``outcomes`` narrows DECISION events by
    # outcome; None means every decision.
    types: frozenset[EventType] = RELEVANT_TYPES
    outcomes: frozenset[str] | None = None
    # For a detector that sees allows and never hits on one: count_allows(now, n) counts n
    # allow decisions at ``now`` exactly as n calls of observe would (a batch's allows at once).
    count_allows: Callable[[float, int], None] | None = None

    def sees(self, type_: EventType, outcome: str | None = None) -> bool:
        """Whether events of ``type_`` (decisions: with ``outcome``, None = any other) reach it."""
        if type_ not in self.types:
            return False
        if type_ is not EventType.DECISION or self.outcomes is None:
            return True
        return outcome is not None and outcome in self.outcomes


# A selector picks from an event the (key, quarantine subject, details) it counts against.
_Selector = Callable[[Event], list[tuple[str, str, dict[str, Any]]]]


def _threshold(
    *,
    window: float,
    threshold: int,
    max_keys: int,
    select: _Selector,
) -> tuple[Callable[[Event], list[Hit]], KeyedWindows]:
    windows = KeyedWindows(window=window, max_events=threshold, max_keys=max_keys)

    def observe(event: Event) -> list[Hit]:
        hits = []
        for key, subject, details in select(event):
            count, first = windows.add(key, event.time)
            hits.append(
                Hit(
                    key=key,
                    count=count,
                    first_seen=first,
                    firing=count >= threshold,
                    details={**details, "window": window, "threshold": threshold},
                    quarantine_subject=subject,
                )
            )
        return hits

    return observe, windows


def _who(event: Event) -> str:
    """The identity behind an event, else ``peer:<host>``, else ``unknown``."""
    if event.actor:
        return event.actor
    return f"peer:{peer_host(event.peer)}" if event.peer else "unknown"


def _deny_storm(event: Event) -> list[tuple[str, str, dict[str, Any]]]:
    if event.type is not EventType.DECISION or event.outcome != "deny":
        return []
    # Denies caused by the quarantine itself are not counted: a client retrying while
    # quarantined would otherwise keep renewing its own quarantine forever.
    if event.details.get("reason") == "quarantined":
        return []
    subject = str(event.details.get("subject") or event.actor or "")
    if not subject:
        return []
    return [(subject, subject, {"pep": event.actor})]


_AUTH_FAILURES = (
    EventType.AUTH_FAILURE_CERT,
    EventType.AUTH_FAILURE_TOKEN,
    EventType.AUTH_FAILURE_PEER,
)


def _auth_failure(event: Event) -> list[tuple[str, str, dict[str, Any]]]:
    if event.type not in _AUTH_FAILURES:
        return []
    kind = {"kind": str(event.details.get("kind", "")), "event": str(event.type)}
    out: list[tuple[str, str, dict[str, Any]]] = []
    if event.peer:
        out.append((f"peer:{peer_host(event.peer)}", "", {**kind, "key_kind": "peer"}))
    if event.actor:
        out.append((f"identity:{event.actor}", event.actor, {**kind, "key_kind": "identity"}))
    return out


def _token_replay(event: Event) -> list[tuple[str, str, dict[str, Any]]]:
    replay = event.type is EventType.TOKEN_REPLAY or (
        event.type is EventType.AUTH_FAILURE_TOKEN and event.details.get("kind") == REPLAY_KIND
    )
    if not replay:
        return []
    details = {"jti": str(event.details.get("jti", "")), "peer": event.peer}
    return [(_who(event), event.actor, details)]


def _revoked_certificate(event: Event) -> list[tuple[str, str, dict[str, Any]]]:
    if event.type is not EventType.AUTH_FAILURE_CERT:
        return []
    kind = event.details.get("kind")
    if kind not in ("revoked", "expired"):
        return []
    details = {"kind": kind, "serial": str(event.details.get("serial", "")), "peer": event.peer}
    return [(_who(event), "", details)]


def _bundle_signature(event: Event) -> list[tuple[str, str, dict[str, Any]]]:
    if event.type is not EventType.BUNDLE_SIGNATURE_FAILURE:
        return []
    details = {
        "reason": str(event.details.get("reason", "")),
        "key_id": str(event.details.get("key_id", "")),
        "peer": event.peer,
    }
    return [(_who(event), "", details)]


def _admin_outsider(event: Event) -> list[tuple[str, str, dict[str, Any]]]:
    listener = event.details.get("listener")
    method = str(event.details.get("method", ""))
    if event.type is EventType.PERMISSION_DENIED:
        if listener != "admin" and not method.startswith(_ADMIN_METHOD_PREFIX):
            return []
    elif event.type is not EventType.AUTH_FAILURE_PEER or listener != "admin":
        return []
    details = {"method": method, "listener": str(listener or ""), "peer": event.peer}
    return [(_who(event), "", details)]


def _deny_ratio(cfg: DenyRatioJumpConfig
                ) -> tuple[Callable[[Event], list[Hit]], Callable[[float, int], None]]:
    ratio = BucketedRatio(window=cfg.window, baseline_window=cfg.baseline_window, bucket=cfg.bucket)

    def count_allows(now: float, count: int) -> None:
        ratio.add(now, False, count)

    def observe(event: Event) -> list[Hit]:
        if event.type is not EventType.DECISION or event.outcome not in ("allow", "deny"):
            return []
        deny = event.outcome == "deny"
        ratio.add(event.time, deny)
        if not deny:
            return []  # only a deny can make the ratio jump; allows just feed the counts
        recent, recent_denies, base, base_denies = ratio.counts(event.time)
        recent_ratio = recent_denies / recent if recent else 0.0
        base_ratio = base_denies / base if base else 0.0
        firing = (
            recent >= cfg.min_events
            and base >= cfg.min_baseline_events
            and recent_ratio - base_ratio >= cfg.threshold
        )
        # Only a firing hit's details reach an alert; skip building them on every deny.
        details = {
            "recent_ratio": round(recent_ratio, 4),
            "baseline_ratio": round(base_ratio, 4),
            "recent_events": recent,
            "baseline_events": base,
            "window": cfg.window,
            "baseline_window": cfg.baseline_window,
            "threshold": cfg.threshold,
        } if firing else _NO_DETAILS
        first = event.time - cfg.window
        return [Hit(key="*", count=recent_denies, first_seen=first, firing=firing, details=details)]

    return observe, count_allows


def build_detectors(config: DetectionConfig) -> list[Detector]:
    """The enabled detectors of ``config``, each with fresh, bounded state."""
    out: list[Detector] = []
    # Each selector with the event types (and decision outcomes) it can return keys for.
    simple: list[tuple[str, Any, _Selector, frozenset[EventType], frozenset[str] | None]] = [
        ("deny_storm", config.deny_storm, _deny_storm, frozenset({EventType.DECISION}),
         frozenset({"deny"})),
        ("auth_failure_burst", config.auth_failure_burst, _auth_failure,
         frozenset(_AUTH_FAILURES), None),
        ("token_replay", config.token_replay, _token_replay,
         frozenset({EventType.TOKEN_REPLAY, EventType.AUTH_FAILURE_TOKEN}), None),
        ("revoked_certificate", config.revoked_certificate, _revoked_certificate,
         frozenset({EventType.AUTH_FAILURE_CERT}), None),
        ("bundle_signature", config.bundle_signature, _bundle_signature,
         frozenset({EventType.BUNDLE_SIGNATURE_FAILURE}), None),
        ("admin_outsider", config.admin_outsider, _admin_outsider,
         frozenset({EventType.PERMISSION_DENIED, EventType.AUTH_FAILURE_PEER}), None),
    ]
    for name, cfg, select, types, outcomes in simple:
        if not cfg.enabled:
            continue
        observe, windows = _threshold(
            window=cfg.window, threshold=cfg.threshold, max_keys=config.max_keys, select=select
        )
        out.append(
            Detector(
                name=name,
                severity=cfg.severity,
                window=cfg.window,
                quarantine=bool(getattr(cfg, "quarantine", False)),
                quarantine_ttl=float(getattr(cfg, "quarantine_ttl", 0.0)),
                observe=observe,
                tracked=windows.__len__,
                types=types,
                outcomes=outcomes,
            )
        )
    jump = config.deny_ratio_jump
    if jump.enabled:
        observe, count_allows = _deny_ratio(jump)
        out.append(
            Detector(
                name="deny_ratio_jump",
                severity=jump.severity,
                window=jump.window,
                quarantine=False,
                quarantine_ttl=0.0,
                observe=observe,
                tracked=lambda: 1,
                types=frozenset({EventType.DECISION}),
                outcomes=frozenset({"allow", "deny"}),
                count_allows=count_allows,
            )
        )
    return out
