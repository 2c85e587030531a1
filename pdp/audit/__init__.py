"""The hash-chained audit trail: a fail-closed writer, its record format and the verifier.

Records are JSON lines chained by sha256 across size-rotated files; see docs/audit-logging.md.
"""

from __future__ import annotations

from pdp.audit.config import AuditConfig
from pdp.audit.log import AuditCorruptError, AuditLog, NullAuditLog, create_audit_log
from pdp.audit.verify import VerifyReport, verify

__all__ = [
    "AuditConfig",
    "AuditCorruptError",
    "AuditLog",
    "NullAuditLog",
    "VerifyReport",
    "create_audit_log",
    "verify",
]
