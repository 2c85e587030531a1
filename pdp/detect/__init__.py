"""Threat detection: sliding-window detectors over the security event stream, alerts, sinks.

A :class:`DetectionPipeline` takes events off the hot path, raises one alert per incident and
may quarantine a subject; see docs/threat-detection.md.
"""

from pdp.detect._alerts import (
    Alert,
    AlertSink,
    AlertSinkError,
    CallbackAlertSink,
    JsonLinesAlertSink,
)
from pdp.detect._config import (
    AdminOutsiderConfig,
    AuthFailureBurstConfig,
    BundleSignatureConfig,
    DenyRatioJumpConfig,
    DenyStormConfig,
    DetectionConfig,
    RevokedCertificateConfig,
    TokenReplayConfig,
    WebhookConfig,
)
from pdp.detect._pipeline import DetectionPipeline, DetectionStats, QuarantineFn
from pdp.detect._webhook import WebhookAlertSink, WebhookStats

__all__ = [
    "AdminOutsiderConfig",
    "Alert",
    "AlertSink",
    "AlertSinkError",
    "AuthFailureBurstConfig",
    "BundleSignatureConfig",
    "CallbackAlertSink",
    "DenyRatioJumpConfig",
    "DenyStormConfig",
    "DetectionConfig",
    "DetectionPipeline",
    "DetectionStats",
    "JsonLinesAlertSink",
    "QuarantineFn",
    "RevokedCertificateConfig",
    "TokenReplayConfig",
    "WebhookAlertSink",
    "WebhookConfig",
    "WebhookStats",
]
