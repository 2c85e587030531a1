"""Ports for servers that tests (and benchmarks) start in other processes."""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port"]

_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral() -> tuple[int, int]:
    try:
        low, high = (int(x) for x in _RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, outside the ephemeral range.

    A port the kernel hands out for bind(("", 0)) comes from the ephemeral range, which is
    also where every outgoing connection's source port comes from: between this call and the
    server's own bind, another process's connection (a replica's PostgreSQL session, a TLS
    probe) could take it. Ports below that range are never given out implicitly.
    """
    low, _ = _ephemeral()
    top = max(2048, low)
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(1024, top)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a crowded machine: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
