"""pdp-client: the thin client of the pdp policy decision point (gRPC over mutual TLS 1.3).

PDPClient / AsyncPDPClient ask for decisions; PEPInterceptor enforces them in a gRPC server.
"""

from ._aio import AsyncPDPClient
from ._client import PDPClient
from ._errors import (
    FailedPreconditionError,
    InvalidRequestError,
    PDPError,
    PDPUnavailableError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
)
from ._model import (
    AccessRequest,
    Action,
    Decision,
    Effect,
    Resource,
    RuleTrace,
    ServiceToken,
    Subject,
)
from ._pep import AsyncPEPInterceptor, PEPInterceptor, subject_from_peer
from ._tokens import ServiceTokenInterceptor, TokenSource

__all__ = [
    "AccessRequest",
    "Action",
    "AsyncPDPClient",
    "AsyncPEPInterceptor",
    "Decision",
    "Effect",
    "FailedPreconditionError",
    "InvalidRequestError",
    "PDPClient",
    "PDPError",
    "PDPUnavailableError",
    "PEPInterceptor",
    "PermissionDeniedError",
    "Resource",
    "ResourceExhaustedError",
    "RuleTrace",
    "ServiceToken",
    "ServiceTokenInterceptor",
    "Subject",
    "TokenSource",
    "UnauthenticatedError",
    "subject_from_peer",
]

__version__ = "0.1.0"
