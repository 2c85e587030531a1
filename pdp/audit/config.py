"""The ``[audit]`` config section: where the hash-chained trail lives and how it is written.

Built from TOML by ``pdp.configuration.build_section(AuditConfig, table, where="[audit]")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["AuditConfig"]

_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditConfig:
    """Settings of the audit trail; ``__post_init__`` raises ValueError on a bad combination."""

    dir: Path = Path("audit")  # directory of audit-NNNNNN.jsonl files and audit.head
    max_file_bytes: int = 64 * _MIB  # rotate to a new file once a file would exceed this size
    fsync: Literal["always", "batch", "never"] = "batch"  # always: per record; batch: per batch
    queue_size: int = 100_000  # decisions accepted but not yet written; see queue_wait
    queue_wait: float = 1.0  # seconds a decision waits for room in a full queue, then refused
    batch_max: int = 1024  # most decision records written with one write + flush
    flush_interval: float = 0.05  # seconds the writer waits to fill a batch before writing
    sample_allow: float = 1.0  # fraction of allow decisions kept (denies are always kept)
    fail_open: bool = False  # true: keep answering while the trail is unwritable (RISKY)
    enabled: bool = True  # false: no audit trail at all (NullAuditLog)

    def __post_init__(self) -> None:
        if self.max_file_bytes < 4096:
            raise ValueError("max_file_bytes must be at least 4096")
        if self.queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if not self.queue_wait >= 0:
            raise ValueError("queue_wait must be 0 or more seconds")
        if self.batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        if not self.flush_interval > 0:
            raise ValueError("flush_interval must be positive")
        if not 0.0 <= self.sample_allow <= 1.0:
            raise ValueError("sample_allow must be between 0.0 and 1.0")
