"""The server's configuration: one TOML file, one typed frozen section per component.

``load_config`` reads the file, applies ``PDP_*`` environment overrides and resolves
relative paths against the file's directory; every fault names the setting.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pdp.audit import AuditConfig
from pdp.configuration import build_section
from pdp.detect import DetectionConfig
from pdp.errors import ConfigError
from pdp.policy import Limits
from pdp.security.keys import KeyConfig
from pdp.security.signing import BundleSigningConfig
from pdp.security.tls import TLSConfig
from pdp.store import StoreConfig
from pdp.telemetry import TelemetryConfig

__all__ = [
    "AccessConfig",
    "CacheConfig",
    "ClientConfig",
    "Config",
    "ListenerConfig",
    "ServerConfig",
    "TokenConfig",
    "load_config",
]

ENV_PREFIX = "PDP_"
_TOP_LEVEL_SCALARS = frozenset({"data_dir"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerConfig:
    address: str  # host:port to listen on
    allow_cidrs: tuple[str, ...] = ()  # if set, only peers from these networks are served


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    data: ListenerConfig = ListenerConfig(address="127.0.0.1:7443")  # Authorization + Identity
    admin: ListenerConfig = ListenerConfig(address="127.0.0.1:7444")  # Admin, loopback by default
    threads: int = 16  # gRPC worker threads per process
    workers: int = 1  # server processes sharing the data port (SO_REUSEPORT); see docs
    serve_admin: bool = True  # whether this process binds the admin listener (worker 0 does)
    max_message_bytes: int = 4 * 1024 * 1024  # larger messages get RESOURCE_EXHAUSTED
    max_bundle_bytes: int = 64 * 1024 * 1024  # admin listener message limit (bundle pushes)
    max_batch: int = 1000  # most requests in one AuthorizeBatch
    grace_seconds: float = 10.0  # SIGTERM drains in-flight calls for at most this long
    replica_id: str = ""  # names this replica in audit and status; default: hostname-pid
    tls12_probe: bool = True  # prove at start-up, with a real handshake, that TLS 1.2 is refused

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError("threads must be at least 1")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if self.max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be at least 1024")


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheConfig:
    enabled: bool = True  # the decision cache; keyed by bundle version, so never stale
    max_size: int = 100_000  # most cached decisions
    ttl: float = 60.0  # seconds a cached decision lives
    # repeat: a decision is kept when asked for a second time (one-off requests never fill
    # the cache); all: every decision is kept at once
    admission: Literal["repeat", "all"] = "repeat"


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessConfig:
    """The system policy in short form: who may call the PDP's own RPCs (identity globs)."""

    authorize: tuple[str, ...] = ()  # may call Authorization and Identity on the data listener
    admin: tuple[str, ...] = ()  # may call Admin on the admin listener
    explain: tuple[str, ...] = ()  # may ask Authorize to explain (it reveals policy structure)
    policy_file: Path | None = None  # a full system-policy bundle instead (see docs)


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenConfig:
    issuer: str = "pdp"  # `iss` of issued service tokens, and the accepted issuer
    audience: tuple[str, ...] = ("pdp",)  # audiences Authorize accepts for service_token
    default_ttl: float = 120.0  # seconds, when the caller asks for none
    external_jwks_file: Path | None = None  # also accept tokens of this issuer's key set
    external_issuer: str = ""  # the `iss` of the external issuer
    shared_replay: bool = False  # remember used tokens in the store: one use in the whole fleet


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Where the `pdp` CLI connects (check, bundle push, quarantine, status)."""

    target: str = "127.0.0.1:7443"
    admin_target: str = "127.0.0.1:7444"
    server_name: str = "localhost"  # expected name in the server's certificate
    ca_file: Path | None = None
    cert_file: Path | None = None  # identity for `pdp check` (a data-plane caller)
    key_file: Path | None = None
    admin_cert_file: Path | None = None  # identity for admin commands (push, quarantine, ...)
    admin_key_file: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    data_dir: Path = Path("data")  # the SQLite store, audit and keys live here by default
    server: ServerConfig = ServerConfig()
    tls: TLSConfig
    store: StoreConfig = field(default_factory=StoreConfig)
    cache: CacheConfig = CacheConfig()
    limits: Limits = field(default_factory=Limits)
    access: AccessConfig = AccessConfig()
    bundles: BundleSigningConfig = field(default_factory=BundleSigningConfig)
    keys: KeyConfig | None = None  # default: keys in data_dir/keys
    tokens: TokenConfig = TokenConfig()
    audit: AuditConfig | None = None  # default: audit in data_dir/audit
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    client: ClientConfig = ClientConfig()

    @property
    def key_config(self) -> KeyConfig:
        return self.keys or KeyConfig(dir=self.data_dir / "keys")

    @property
    def audit_config(self) -> AuditConfig:
        return self.audit or AuditConfig(dir=self.data_dir / "audit")


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read a TOML config file, apply PDP_* overrides, resolve relative paths.

    Raises ConfigError naming the file and setting of any fault.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", field=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", field=str(path)) from None
    apply_env_overrides(raw, os.environ if env is None else env)
    _default_dirs_under_data_dir(raw)
    if "tls" not in raw:
        raise ConfigError("missing [tls] section: the PDP serves only over mutual TLS",
                          field=str(path))
    try:
        config = build_section(Config, raw, where="config")
    except ConfigError as exc:
        raise ConfigError(exc.message, field=f"{path}: {exc.field}") from None
    resolved: Config = _resolve_paths(config, path.parent)
    return resolved


def apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """``PDP_AUDIT__FSYNC=always`` sets ``[audit] fsync``; ``__`` separates levels.

    Values are read as TOML values when they parse (numbers, booleans, arrays), else strings.
    """
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        # Only PDP_SECTION__KEY (and PDP_DATA_DIR) are settings; other PDP_* variables,
        # such as a CA passphrase, are not.
        if not parts or (len(parts) == 1 and parts[0] not in _TOP_LEVEL_SCALARS):
            continue
        table = raw
        for part in parts[:-1]:
            nxt = table.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError("environment override into a non-table setting", field=name)
            table = nxt
        table[parts[-1]] = _parse_env_value(value)


def _default_dirs_under_data_dir(raw: dict[str, Any]) -> None:
    """An [audit] or [keys] table without ``dir`` keeps its files under ``data_dir``, as
    when the table is absent, not next to the config file (often a read-only mount)."""
    data_dir = raw.get("data_dir", "data")
    for section, name in (("audit", "audit"), ("keys", "keys")):
        table = raw.get(section)
        if isinstance(table, dict) and "dir" not in table and isinstance(data_dir, str):
            table["dir"] = f"{data_dir.rstrip('/')}/{name}"


def _parse_env_value(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _resolve_paths(obj: Any, base: Path) -> Any:
    """Return ``obj`` with every relative Path field made absolute against ``base``."""
    if isinstance(obj, Path):
        return obj if obj.is_absolute() else (base / obj).resolve()
    if isinstance(obj, dict):
        return {k: _resolve_paths(v, base) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_resolve_paths(v, base) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: _resolve_paths(getattr(obj, f.name), base)
                   for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    return obj
