"""pdp: a zero-trust policy decision point (gRPC over mutual TLS 1.3).

Importing the package pins gRPC's TLS 1.2 cipher list to one suite that can never be
negotiated, before gRPC reads it at its first channel or server; see pdp.security.tls.
"""

import os as _os

# gRPC 1.85 has no server-side minimum TLS version. TLS 1.3 suites are not configurable
# in BoringSSL and always on; TLS 1.2 gets only a PSK suite, and no PSK is ever configured,
# so a TLS 1.2 handshake fails with NO_SHARED_CIPHER. The server proves it at start-up
# with a real TLS 1.2 probe and refuses to serve if the probe is accepted.
_os.environ["GRPC_SSL_CIPHER_SUITES"] = "ECDHE-PSK-CHACHA20-POLY1305"
# gRPC logs every refused handshake (the start-up probe's included) at INFO; keep errors only.
_os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

__version__ = "0.1.0"
