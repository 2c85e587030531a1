"""The ``[detection]`` config section: the pipeline, its alert sinks and one table per detector.

Every detector has its own class so that a partial TOML table keeps that detector's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pdp.events import Severity

__all__ = [
    "AdminOutsiderConfig",
    "AuthFailureBurstConfig",
    "BundleSignatureConfig",
    "DenyRatioJumpConfig",
    "DenyStormConfig",
    "DetectionConfig",
    "RevokedCertificateConfig",
    "TokenReplayConfig",
    "WebhookConfig",
]


def _check_threshold(name: str, window: float, threshold: int) -> None:
    if window <= 0:
        raise ValueError(f"{name}.window must be > 0 seconds, got {window}")
    if threshold < 1:
        raise ValueError(f"{name}.threshold must be >= 1, got {threshold}")


def _check_quarantine(name: str, quarantine: bool, ttl: float) -> None:
    if quarantine and ttl <= 0:
        raise ValueError(f"{name}.quarantine_ttl must be > 0 seconds, got {ttl}")


@dataclass(frozen=True, slots=True, kw_only=True)
class DenyStormConfig:
    """Many denies for one subject in a short window: probing or a broken client."""

    enabled: bool = True  # run this detector
    window: float = 60.0  # sliding window, seconds
    threshold: int = 100  # denies for one subject within the window that raise an alert
    severity: Severity = Severity.HIGH  # severity of the alert
    quarantine: bool = True  # quarantine the subject when the alert is raised
    quarantine_ttl: float = 900.0  # how long the quarantine lasts, seconds

    def __post_init__(self) -> None:
        _check_threshold("deny_storm", self.window, self.threshold)
        _check_quarantine("deny_storm", self.quarantine, self.quarantine_ttl)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthFailureBurstConfig:
    """Many authentication failures from one peer address or one identity."""

    enabled: bool = True  # run this detector
    window: float = 60.0  # sliding window, seconds
    threshold: int = 20  # failures per peer host, or per identity, that raise an alert
    severity: Severity = Severity.HIGH  # severity of the alert
    quarantine: bool = False  # quarantine the identity (never a bare address) on alert
    quarantine_ttl: float = 900.0  # how long the quarantine lasts, seconds

    def __post_init__(self) -> None:
        _check_threshold("auth_failure_burst", self.window, self.threshold)
        _check_quarantine("auth_failure_burst", self.quarantine, self.quarantine_ttl)


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenReplayConfig:
    """A service token (by jti) presented a second time."""

    enabled: bool = True  # run this detector
    window: float = 300.0  # sliding window, seconds
    threshold: int = 1  # replays by one identity within the window that raise an alert
    severity: Severity = Severity.HIGH  # severity of the alert
    quarantine: bool = False  # quarantine the identity that presented the replayed token
    quarantine_ttl: float = 900.0  # how long the quarantine lasts, seconds

    def __post_init__(self) -> None:
        _check_threshold("token_replay", self.window, self.threshold)
        _check_quarantine("token_replay", self.quarantine, self.quarantine_ttl)


@dataclass(frozen=True, slots=True, kw_only=True)
class RevokedCertificateConfig:
    """A revoked or expired client certificate presented to a listener."""

    enabled: bool = True  # run this detector
    window: float = 300.0  # sliding window, seconds
    threshold: int = 1  # uses by one identity (or peer host) that raise an alert
    severity: Severity = Severity.HIGH  # severity of the alert

    def __post_init__(self) -> None:
        _check_threshold("revoked_certificate", self.window, self.threshold)


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleSignatureConfig:
    """A pushed bundle whose signature is missing, untrusted or does not verify."""

    enabled: bool = True  # run this detector
    window: float = 300.0  # sliding window, seconds
    threshold: int = 1  # failures by one admin identity that raise an alert
    severity: Severity = Severity.CRITICAL  # severity of the alert

    def __post_init__(self) -> None:
        _check_threshold("bundle_signature", self.window, self.threshold)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminOutsiderConfig:
    """An admin RPC refused to an identity outside the admin set, or from outside its CIDRs."""

    enabled: bool = True  # run this detector
    window: float = 300.0  # sliding window, seconds
    threshold: int = 1  # refusals for one identity (or peer host) that raise an alert
    severity: Severity = Severity.HIGH  # severity of the alert

    def __post_init__(self) -> None:
        _check_threshold("admin_outsider", self.window, self.threshold)


@dataclass(frozen=True, slots=True, kw_only=True)
class DenyRatioJumpConfig:
    """The share of denies over a short window jumps above that of the preceding baseline."""

    enabled: bool = True  # run this detector
    window: float = 60.0  # the short (recent) window, seconds
    baseline_window: float = 900.0  # the baseline: this many seconds before the short window
    threshold: float = 0.3  # alert when recent ratio - baseline ratio >= this (0..1)
    min_events: int = 50  # decisions needed in the short window before judging
    min_baseline_events: int = 200  # decisions needed in the baseline before judging
    bucket: float = 5.0  # counting granularity, seconds (memory: one bucket per this)
    severity: Severity = Severity.WARNING  # severity of the alert

    def __post_init__(self) -> None:
        if self.window <= 0 or self.baseline_window <= 0:
            raise ValueError("deny_ratio_jump windows must be > 0 seconds")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"deny_ratio_jump.threshold must be in (0, 1], got {self.threshold}")
        if self.min_events < 1 or self.min_baseline_events < 1:
            raise ValueError("deny_ratio_jump.min_events and min_baseline_events must be >= 1")
        if not 0 < self.bucket <= self.window:
            raise ValueError("deny_ratio_jump.bucket must be > 0 and <= window")


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookConfig:
    """The HTTP webhook alert sink; an empty url turns it off."""

    url: str = ""  # http(s) URL that receives each alert as a JSON POST; "" = off
    timeout: float = 2.0  # per-attempt timeout, seconds
    retries: int = 3  # further attempts after a failed one
    backoff: float = 0.5  # first retry delay, seconds; doubles per attempt
    queue_size: int = 1000  # alerts waiting for delivery; more are dropped and counted
    proxy: bool = False  # honour the HTTP(S)_PROXY environment variables

    def __post_init__(self) -> None:
        if self.url:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"webhook.url must be an http(s) URL with a host: {self.url!r}")
        if self.timeout <= 0:
            raise ValueError(f"webhook.timeout must be > 0 seconds, got {self.timeout}")
        if self.retries < 0:
            raise ValueError(f"webhook.retries must be >= 0, got {self.retries}")
        if self.backoff < 0:
            raise ValueError(f"webhook.backoff must be >= 0, got {self.backoff}")
        if self.queue_size < 1:
            raise ValueError(f"webhook.queue_size must be >= 1, got {self.queue_size}")


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectionConfig:
    """Threat detection: the event queue, incident cooldown, alert sinks and detectors."""

    enabled: bool = True  # run the detector pipeline at all
    queue_size: int = 100_000  # events waiting for the detectors; more are dropped and counted
    cooldown: float = 600.0  # an incident stays open this long; then the same one re-raises
    max_keys: int = 10_000  # keys (subjects, peers, identities) tracked per detector window
    alert_file: Path | None = None  # JSON-lines file that receives every alert (mode 0600)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)  # HTTP webhook sink
    deny_storm: DenyStormConfig = field(default_factory=DenyStormConfig)  # per subject
    auth_failure_burst: AuthFailureBurstConfig = field(default_factory=AuthFailureBurstConfig)
    token_replay: TokenReplayConfig = field(default_factory=TokenReplayConfig)  # per identity
    revoked_certificate: RevokedCertificateConfig = field(
        default_factory=RevokedCertificateConfig
    )  # revoked or expired client certificate use
    bundle_signature: BundleSignatureConfig = field(default_factory=BundleSignatureConfig)
    admin_outsider: AdminOutsiderConfig = field(default_factory=AdminOutsiderConfig)
    deny_ratio_jump: DenyRatioJumpConfig = field(default_factory=DenyRatioJumpConfig)

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
        if self.cooldown <= 0:
            raise ValueError(f"cooldown must be > 0 seconds, got {self.cooldown}")
        if self.max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {self.max_keys}")
