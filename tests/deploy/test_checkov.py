"""checkov's security scan of the rendered chart and of the Dockerfile: no failed check.

checkov is slow to start, so it runs once for the module, on the chart rendered with default,
full and namespaced values and on the Dockerfile together. Every skip must carry a reason
(an inline `checkov.io/skipN: CHECK=reason` annotation in the chart).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import FULL_VALUES, NAMESPACED_VALUES, ROOT, find_tool, render

# The only findings the chart may skip, with the condition that makes each one not apply.
ALLOWED_SKIPS = {"CKV_K8S_38", "CKV_K8S_43", "CKV_K8S_15"}


@pytest.fixture(scope="module")
def checkov_reports(tmp_path_factory: pytest.TempPathFactory, helm: str) -> dict[str, dict]:
    """checkov's JSON report per framework (kubernetes, dockerfile)."""
    checkov = find_tool("checkov")
    folder = tmp_path_factory.mktemp("rendered")
    for name, values in (("default", ()), ("full", (FULL_VALUES,)),
                         ("namespaced", (NAMESPACED_VALUES,))):
        (folder / f"{name}.yaml").write_text(render(helm, *values))
    (folder / "Dockerfile").write_bytes((ROOT / "Dockerfile").read_bytes())
    proc = subprocess.run(
        [checkov, "--directory", str(folder), "--framework", "kubernetes", "dockerfile",
         "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=600, check=False,
        # No telemetry or guideline downloads: the scan works offline.
        env={"PATH": str(Path(checkov).parent), "HOME": str(folder),
             "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    reports = json.loads(proc.stdout)
    if isinstance(reports, dict):
        reports = [reports]
    return {r["check_type"]: r for r in reports}


def failures(report: dict) -> list[str]:
    return [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for c in report["results"]["failed_checks"]
    ]


@pytest.mark.parametrize("framework", ["kubernetes", "dockerfile"])
def test_no_failed_check(checkov_reports: dict[str, dict], framework: str) -> None:
    report = checkov_reports[framework]
    assert report["summary"]["passed"] > 0
    assert report["summary"]["parsing_errors"] == 0
    assert failures(report) == []


def test_every_skip_is_justified(checkov_reports: dict[str, dict]) -> None:
    for report in checkov_reports.values():
        for check in report["results"]["skipped_checks"]:
            assert check["check_id"] in ALLOWED_SKIPS, check["check_id"]
            reason = check["check_result"].get("suppress_comment") or ""
            assert len(reason.split()) >= 5, f"{check['check_id']}: no reason given"


def test_digest_and_pull_policy_skips_go_with_the_values(checkov_reports) -> None:
    """With a digest and pullPolicy Always (full values) only the token skip remains."""
    skipped: dict[str, set[str]] = {}
    for check in checkov_reports["kubernetes"]["results"]["skipped_checks"]:
        skipped.setdefault(Path(check["file_path"]).stem, set()).add(check["check_id"])
    assert skipped["full"] == {"CKV_K8S_38"}
    assert skipped["default"] == ALLOWED_SKIPS
