"""The Dockerfile, without a Docker engine: hadolint, and its structure read as data."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

import pytest

from .conftest import ROOT, find_tool, run

DOCKERFILE = ROOT / "Dockerfile"
FINAL_STAGES = ("trainer", "operator")
# Packages and tools that build software: none may reach a final stage.
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|make|cmake|build-essential|python3?-dev|cargo|rustc|git|curl|wget)\b"
)


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def of(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def logical_lines(text: str) -> list[str]:
    """The instructions of a Dockerfile: continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue
        current += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    return logical


def global_args(text: str) -> dict[str, str]:
    """The ARGs declared before the first FROM, with their defaults ('' for none)."""
    found = {}
    for entry in logical_lines(text):
        keyword, _, arg = entry.partition(" ")
        if keyword.upper() == "FROM":
            break
        if keyword.upper() == "ARG":
            name, _, default = arg.strip().partition("=")
            found[name] = default
    return found


def parse(text: str) -> list[Stage]:
    """Stages of a Dockerfile; a FROM's ${ARG} reads as that global ARG's default."""
    defaults = global_args(text)
    stages: list[Stage] = []
    for entry in logical_lines(text):
        keyword, _, arg = entry.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = arg.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"unnamed stage: {entry}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], words[0])
            stages.append(Stage(name=words[2], base=base))
        elif stages:
            stages[-1].instructions.append((keyword, arg.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return {s.name: s for s in parse(DOCKERFILE.read_text())}


def external_base(stages: dict[str, Stage], name: str) -> str:
    """The image a stage finally builds on, following FROM <stage> chains."""
    base = stages[name].base
    while base in stages:
        base = stages[base].base
    return base


def test_hadolint_is_clean() -> None:
    hadolint = find_tool("hadolint")
    out = run([hadolint, "--no-color", str(DOCKERFILE)])
    assert out.strip() == ""


def test_targets_exist(stages: dict[str, Stage]) -> None:
    for target in FINAL_STAGES:
        assert target in stages


def test_bases_are_pinned_by_tag_and_digest(stages: dict[str, Stage]) -> None:
    external = {s.base for s in stages.values() if s.base not in stages} - {"scratch"}
    assert external, "no external base image"
    for base in external:
        assert re.fullmatch(r"[a-z0-9./_-]+:[\w.-]+@sha256:[0-9a-f]{64}", base), base
        assert ":latest@" not in base


def test_trainer_is_on_pytorch_cuda_runtime_and_operator_on_slim_python(stages) -> None:
    trainer = external_base(stages, "trainer")
    assert trainer.startswith("pytorch/pytorch:") and "-cuda" in trainer and "-runtime@" in trainer
    assert external_base(stages, "operator").startswith("python:3.11-slim")


@pytest.mark.parametrize("target", FINAL_STAGES)
def test_final_stages_run_as_a_numeric_non_root_user(stages, target: str) -> None:
    users = stages[target].of("USER")
    assert users, f"{target} sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 10000, users[-1]
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # Nothing after the last USER switches back.
    kinds = [kw for kw, _ in stages[target].instructions]
    assert "USER" not in kinds[kinds.index("USER") + 1 :]


@pytest.mark.parametrize("target", FINAL_STAGES)
def test_final_stages_carry_no_build_tools(stages, target: str) -> None:
    stage = stages[target]
    for arg in stage.of("RUN"):
        assert not BUILD_TOOLS.search(arg), f"{target}: RUN {arg}"
        assert "pip install" not in arg and "apt-get install" not in arg, f"{target}: RUN {arg}"
    # Only the built virtual environment and the optional weights come from other stages.
    copied_from = {}
    for arg in stage.of("COPY"):
        words = shlex.split(arg)
        source = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
        assert source is not None, f"{target}: COPY from the build context: {arg}"
        copied_from[source] = [w for w in words if not w.startswith("--")][:-1]
    assert set(copied_from) <= {f"{target}-build", "inception"}
    assert copied_from[f"{target}-build"] == ["/opt/critbatch"]
    assert "wheel" not in copied_from


@pytest.mark.parametrize("target", FINAL_STAGES)
def test_final_stages_are_labelled_and_have_an_entrypoint(stages, target: str) -> None:
    labels = " ".join(stages[target].of("LABEL"))
    for key in ("title", "description", "version", "revision", "created", "licenses", "source"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert stages[target].of("ENTRYPOINT") == [f'["critbatch-{target}"]']
    assert stages[target].of("HEALTHCHECK"), "HEALTHCHECK (or HEALTHCHECK NONE) is explicit"


def test_inception_weights_are_baked_only_when_given(stages) -> None:
    """A URL needs its checksum; no source leaves an empty folder (no download at build)."""
    inception = stages["inception"]
    args = {a.split("=")[0] for a in inception.of("ARG")}
    assert args == {"INCEPTION_WEIGHTS_URL", "INCEPTION_WEIGHTS_SHA256"}
    (script,) = inception.of("RUN")
    assert 'if [ -n "$INCEPTION_WEIGHTS_URL" ]' in script
    assert "sha256sum --check" in script
    assert any(a.startswith("--from=inception ") for a in stages["trainer"].of("COPY"))


def test_dockerignore_keeps_the_context_small() -> None:
    """An allow-list: only the package sources and metadata reach the build."""
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed >= {"pyproject.toml", "src", "operator", "trainer"}
    assert not allowed & {".git", ".venv", ".tools", "tests", "charts", "examples"}
    # Every file the wheel stage copies is allowed into the context.
    wheel = parse(DOCKERFILE.read_text())
    (stage,) = [s for s in wheel if s.name == "wheel"]
    for arg in stage.of("COPY"):
        for path in shlex.split(arg)[:-1]:
            assert path.rstrip("/") in allowed, path


def test_bases_are_build_arguments() -> None:
    """A base made elsewhere (scripts/images/build.sh) can replace each official one."""
    text = DOCKERFILE.read_text()
    assert set(global_args(text)) == {"PYTHON_IMAGE", "PYTHON_TAG", "TORCH_IMAGE", "TORCH_TAG"}
    froms = [e.split()[1] for e in logical_lines(text) if e.upper().startswith("FROM ")]
    for base in ("PYTHON", "TORCH"):
        assert froms.count(f"${{{base}_IMAGE}}:${{{base}_TAG}}") == 1, base


def test_every_pip_step_can_read_only_a_wheelhouse(stages: dict[str, Stage]) -> None:
    """An empty `wheelhouse` stage that `--build-context wheelhouse=FOLDER` replaces, mounted
    at /wheelhouse wherever pip runs, and pip's offline settings as build arguments without
    defaults: an unset one leaves pip on its index, an empty one would be an invalid value."""
    assert stages["wheelhouse"].base == "scratch" and not stages["wheelhouse"].instructions
    pip_stages = [s for s in stages.values() if any("pip " in r for r in s.of("RUN"))]
    assert {s.name for s in pip_stages} == {"wheel", "operator-build", "trainer-build"}
    for stage in pip_stages:
        assert set(stage.of("ARG")) >= {"PIP_NO_INDEX", "PIP_FIND_LINKS"}, stage.name
        for step in stage.of("RUN"):
            assert "--mount=type=bind,from=wheelhouse,target=/wheelhouse" in step, stage.name
