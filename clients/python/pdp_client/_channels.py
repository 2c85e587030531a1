"""mTLS credentials read from files, and a round-robin pool of channels that follows their renewal.

A renewed client certificate opens a new generation of channels; the old one closes when idle.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import grpc

from ._errors import PDPError, PDPUnavailableError

__all__ = ["ChannelPool", "CredentialFiles", "Generation", "channel_options"]

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class CredentialFiles:
    """The CA bundle, client certificate chain and private key, by path."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def signature(self) -> tuple[tuple[int, int, int], ...]:
        """(mtime_ns, size, inode) of each file; raise OSError if one is missing."""
        out = []
        for p in (self.ca_file, self.cert_file, self.key_file):
            st = os.stat(p)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def load(self) -> grpc.ChannelCredentials:
        """Read the files into channel credentials; raise PDPError naming a bad file.

        The key is read into memory only for gRPC and never logged or kept on this object.
        """
        blobs = []
        for p in (self.ca_file, self.key_file, self.cert_file):
            try:
                data = Path(p).read_bytes()
            except OSError as exc:
                raise PDPError(f"cannot read {p}: {exc.strerror}", code="CREDENTIALS") from None
            if not data.strip():
                raise PDPError(f"empty credential file {p}", code="CREDENTIALS")
            blobs.append(data)
        ca, key, chain = blobs
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=chain
        )


def channel_options(
    server_name: str | None, index: int, generation: int
) -> list[tuple[str, object]]:
    """Channel args that give every channel its own connection (local subchannel pool, own key)."""
    opts: list[tuple[str, object]] = [
        ("grpc.use_local_subchannel_pool", 1),
        ("pdp_client.channel", f"{generation}.{index}"),
        ("grpc.primary_user_agent", "pdp-client/0.1"),
    ]
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return opts


@dataclass(eq=False, slots=True)
class Generation(Generic[C]):
    """One set of connections opened with one version of the credentials."""

    number: int
    conns: list[C]
    inflight: int = 0
    retired: bool = False
    closed: bool = False
    _rr: itertools.count[int] = field(default_factory=itertools.count)


class ChannelPool(Generic[C]):
    """`size` connections made by `make(credentials, index, generation)`, handed out in turn.

    `acquire` re-checks the credential files at most every `reload_interval` seconds; when they
    changed it opens a new generation and retires the old one, which `close` shuts once its
    in-flight calls have been released. Unreadable new files keep the current generation.
    """

    def __init__(
        self,
        files: CredentialFiles,
        *,
        size: int,
        make: Callable[[grpc.ChannelCredentials, int, int], C],
        close: Callable[[C], None],
        reload_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if size < 1:
            raise ValueError("channels must be at least 1")
        self._files = files
        self._size = size
        self._make = make
        self._close = close
        self._interval = reload_interval
        self._clock = clock
        self._lock = threading.Lock()
        creds = files.load()
        try:
            self._signature = files.signature()
        except OSError as exc:
            msg = f"cannot stat {exc.filename}: {exc.strerror}"
            raise PDPError(msg, code="CREDENTIALS") from None
        self._current = self._open(creds, 0)
        self._checked = clock()
        self._retiring: list[Generation[C]] = []
        self._shut = False

    def _open(self, creds: grpc.ChannelCredentials, number: int) -> Generation[C]:
        return Generation(number, [self._make(creds, i, number) for i in range(self._size)])

    @property
    def generation(self) -> int:
        """The number of the current generation (0 at start, +1 per credential change)."""
        return self._current.number

    @property
    def retiring(self) -> int:
        """How many old generations still wait for in-flight calls."""
        with self._lock:
            return len(self._retiring)

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked < self._interval:
            return
        self._checked = now
        try:
            sig = self._files.signature()
            if sig == self._signature:
                return
            creds = self._files.load()
        except (OSError, PDPError):
            return  # mid-rotation: keep the working credentials, look again next time
        self._signature = sig
        old, self._current = self._current, self._open(creds, self._current.number + 1)
        old.retired = True
        self._retiring.append(old)
        self._reap(old)

    def _reap(self, gen: Generation[C]) -> None:
        if gen.retired and gen.inflight == 0 and not gen.closed:
            gen.closed = True
            self._retiring.remove(gen)
            for conn in gen.conns:
                self._close(conn)

    def acquire(self) -> tuple[Generation[C], C]:
        """The next connection in turn and its generation; pass the generation to `release`.

        Raises PDPUnavailableError (code CLOSED) after `close`.
        """
        with self._lock:
            if self._shut:
                raise PDPUnavailableError("client is closed", code="CLOSED")
            self._maybe_reload()
            gen = self._current
            gen.inflight += 1
            return gen, gen.conns[next(gen._rr) % len(gen.conns)]

    def release(self, gen: Generation[C]) -> None:
        """Mark one call on `gen` finished; closes a retired generation when it becomes idle."""
        with self._lock:
            gen.inflight -= 1
            self._reap(gen)

    def close(self) -> None:
        """Close every connection now, in-flight or not; later `acquire` calls raise."""
        with self._lock:
            if self._shut:
                return
            self._shut = True
            gens = [*self._retiring, self._current]
            self._retiring.clear()
        for gen in gens:
            if not gen.closed:
                gen.closed = True
                for conn in gen.conns:
                    self._close(conn)
