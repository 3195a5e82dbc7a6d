"""Shared helpers of the deploy tests: where the external tools are, and rendering the chart.

The tools come from scripts/install-test-tools.sh (into .tools/bin) or from PATH. A test that
needs a missing tool skips on a developer's machine and fails in CI (CI set), so that a broken
install can never pass as a green run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "critbatch"
TOOLS_BIN = ROOT / ".tools" / "bin"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
NAMESPACED_VALUES = CHART / "ci" / "namespaced-values.yaml"


def find_tool(name: str) -> str:
    """Path of an external tool (.tools/bin, this Python's bin, PATH); skip, or fail under CI."""
    for folder in (TOOLS_BIN, Path(sys.executable).parent):
        local = folder / name
        if local.is_file() and os.access(local, os.X_OK):
            return str(local)
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} not found in .tools/bin or PATH: run scripts/install-test-tools.sh"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run(args: list[str], *, stdin: str | None = None, timeout: float = 120) -> str:
    """Run a command and return its stdout; a non-zero exit fails with its output."""
    proc = subprocess.run(
        args, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def render(
    helm: str,
    *values_files: Path,
    sets: tuple[str, ...] = (),
    include_crds: bool = False,
    namespace: str = "critbatch-system",
) -> str:
    """`helm template` of the chart as text."""
    args = [helm, "template", "cb", str(CHART), "--namespace", namespace]
    if include_crds:
        args.append("--include-crds")
    for f in values_files:
        args += ["--values", str(f)]
    for s in sets:
        args += ["--set", s]
    return run(args)


def documents(text: str) -> list[dict]:
    """The non-empty YAML documents of a multi-document text."""
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="session")
def helm() -> str:
    return find_tool("helm")


@pytest.fixture(scope="session")
def helm3() -> str:
    return find_tool("helm3")


@pytest.fixture(scope="session")
def default_objects(helm: str) -> list[dict]:
    return documents(render(helm))


@pytest.fixture(scope="session")
def full_objects(helm: str) -> list[dict]:
    return documents(render(helm, FULL_VALUES))


@pytest.fixture(scope="session")
def namespaced_objects(helm: str) -> list[dict]:
    return documents(render(helm, NAMESPACED_VALUES))


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str) -> dict:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
