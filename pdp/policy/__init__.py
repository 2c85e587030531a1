"""The policy engine: bundle model and loader, compiled first-match evaluation, decision cache.

A pure library on plain Python objects; it knows nothing of gRPC or protobuf.
"""

from pdp.policy.cache import CacheStats, DecisionCache
from pdp.policy.compiler import CompiledPolicy, compile_bundle
from pdp.policy.engine import PolicyEngine
from pdp.policy.loader import load_bundle, load_bundle_file
from pdp.policy.model import (
    Action,
    Bundle,
    Decision,
    Effect,
    Limits,
    Request,
    Resource,
    ResourceMatch,
    Rule,
    RuleTrace,
    Subject,
    SubjectMatch,
)

__all__ = [
    "Action",
    "Bundle",
    "CacheStats",
    "CompiledPolicy",
    "Decision",
    "DecisionCache",
    "Effect",
    "Limits",
    "PolicyEngine",
    "Request",
    "Resource",
    "ResourceMatch",
    "Rule",
    "RuleTrace",
    "Subject",
    "SubjectMatch",
    "compile_bundle",
    "load_bundle",
    "load_bundle_file",
]
