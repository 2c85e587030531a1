"""The authoring tools' public surface is exactly the intended names."""

from __future__ import annotations

import pytest

from pdp.policy import commands, lint, shadow, testing


@pytest.mark.parametrize(
    ("module", "names"),
    [
        (commands, {"register_bundle_tools"}),
        (lint, {"Finding", "Severity", "glob_covers", "glob_intersects", "lint"}),
        (shadow, {"ShadowDifference", "ShadowEvaluator", "ShadowReportData"}),
        (
            testing,
            {
                "DEFAULT_NOW",
                "CaseResult",
                "Coverage",
                "SuiteError",
                "SuiteResult",
                "TestCase",
                "load_suite",
                "load_suite_file",
                "request_to_dict",
                "run_suite",
            },
        ),
    ],
)
def test_exported_names(module: object, names: set[str]) -> None:
    exported = set(getattr(module, "__all__"))  # noqa: B009
    assert exported == names
    assert all(hasattr(module, name) for name in exported)
