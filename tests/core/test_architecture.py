"""The layout's promises (docs/contracts.md), read from the source: who may import what, and
the shared names and rules written once, in `critbatch.vocabulary`."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "src" / "critbatch"
TRAINER = ROOT / "trainer" / "critbatch_trainer"
OPERATOR = ROOT / "operator" / "critbatch_operator"

# What the trainer, which runs in its own image, may use of the core.
TRAINER_MAY_IMPORT = {"critbatch.vocabulary", "critbatch.science", "critbatch.provenance",
                      "critbatch.errors", "critbatch.files", "critbatch.protocol",
                      "critbatch.orphans"}
# Names of the vocabulary that no other module may define again.
VOCABULARY_NAMES = {"MODELS", "DATASETS", "EMBEDDED", "EMBEDDED_DATASETS", "BUILTIN_DATASETS",
                    "KNOWN_DATASET_SIZES", "DEVICES", "MAX_TRIALS", "MAX_TRIALS_PER_GPU",
                    "MAX_TRIALS_PER_GROUP", "TrialKey", "Pair", "OptimizerSide",
                    "optimizer_defaults", "trials_text", "parse_trials", "DIGITS_DEFAULTS"}


def modules(*roots: Path) -> Iterator[tuple[Path, ast.Module]]:
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            yield path, ast.parse(path.read_text(), str(path))


def imported(tree: ast.Module) -> set[str]:
    """Every module an `import` or `from ... import` names, at any depth of the file."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def defined(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level (assignments, functions, classes)."""
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Assign):
            out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
    return out


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_trainer_uses_only_the_torch_free_core_it_is_allowed():
    for path, tree in modules(TRAINER):
        core = {m for m in imported(tree) if m.startswith("critbatch.")}
        outside = {m for m in core
                   if m not in TRAINER_MAY_IMPORT and m.rsplit(".", 1)[0] not in TRAINER_MAY_IMPORT}
        assert not outside, f"{rel(path)} imports {sorted(outside)}"
        assert "critbatch_operator" not in {m.split(".")[0] for m in imported(tree)}


@pytest.mark.parametrize("forbidden", ["torch", "kopf", "scipy", "critbatch_trainer",
                                       "critbatch_operator", "kubernetes"])
def test_the_core_imports_no_heavy_or_outer_package(forbidden):
    """The operator's image has no torch or scipy; only a CLI command may reach a cluster."""
    for path, tree in modules(CORE):
        if forbidden == "kubernetes" and path.parent.name == "commands":
            continue
        assert forbidden not in {m.split(".")[0] for m in imported(tree)}, rel(path)


def test_shared_names_and_rules_are_defined_only_in_the_vocabulary():
    for path, tree in modules(CORE, TRAINER, OPERATOR):
        if path.name == "vocabulary.py":
            continue
        again = defined(tree) & VOCABULARY_NAMES
        assert not again, f"{rel(path)} defines {sorted(again)} again; use critbatch.vocabulary"


def test_the_spec_and_the_trainer_both_read_their_rules_from_the_vocabulary():
    readers = {rel(path) for path, tree in modules(CORE / "spec", TRAINER)
               if any(m.startswith("critbatch.vocabulary") for m in imported(tree))}
    assert any(r.startswith("src/critbatch/spec/") for r in readers)
    assert any(r.startswith("trainer/critbatch_trainer/config") for r in readers)
    assert "trainer/critbatch_trainer/group.py" in readers  # --trials B:S,... and its limit
