"""The public surface of pdp_client is exactly the intended names, and it never imports `pdp`."""

from __future__ import annotations

import subprocess
import sys

import pdp_client

EXPECTED = {
    "AccessRequest", "Action", "AsyncPDPClient", "AsyncPEPInterceptor", "Decision", "Effect",
    "FailedPreconditionError", "InvalidRequestError", "PDPClient", "PDPError",
    "PDPUnavailableError", "PEPInterceptor", "PermissionDeniedError", "Resource",
    "ResourceExhaustedError", "RuleTrace", "ServiceToken", "ServiceTokenInterceptor", "Subject",
    "TokenSource", "UnauthenticatedError", "subject_from_peer",
}


def test_exported_members() -> None:
    assert set(pdp_client.__all__) == EXPECTED
    assert len(pdp_client.__all__) == len(EXPECTED)
    for name in pdp_client.__all__:
        assert getattr(pdp_client, name).__module__.startswith("pdp_client.")
    public = {n for n in vars(pdp_client) if not n.startswith("_")}
    assert public == EXPECTED


def test_errors_share_one_root() -> None:
    for name in pdp_client.__all__:
        obj = getattr(pdp_client, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, pdp_client.PDPError)


def test_client_never_imports_the_server_package() -> None:
    code = ("import sys, pdp_client, pdp_client._proto.admin_pb2_grpc; "
            "assert 'pdp' not in sys.modules; "
            "assert not any(m.startswith('pdp.') for m in sys.modules)")
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True)
