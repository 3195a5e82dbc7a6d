"""`critbatch run DIR/`: a campaign's sweeps run one after another, references first, each into
OUT/<sweep>/ so that its spec.reference.sweep resolves from the sibling run; then the campaign
report. Against the FAKE trainer (Θ = 1000, |S| = 1797, N(b) known in advance); the last test
runs three tiny sweeps of the real trainer end to end.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from local_helpers import FAKE_TRAINER, local_manifest, one_line_error, run_events

from critbatch import report
from critbatch.campaign import CAMPAIGN_LABEL
from critbatch.cli import main
from critbatch.commands import run as run_command
from critbatch.local.campaign import load_campaign
from critbatch.local.progress import Progress

PARAMS, SIZE = 1000, 1797  # what the fake trainer reports
TRAINER = " ".join(FAKE_TRAINER)
CAMPAIGN = "table3"
REF = "zeta-adam"  # last by name, first by reference: the order is the references', not names'

pytestmark = pytest.mark.usefixtures("fast_fake")


@pytest.fixture(autouse=True)
def short_trials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake's N(b) = 200 b / (b - 8): a few hundred steps, b* still 16."""
    monkeypatch.setenv("FAKE_A", "200")


@pytest.fixture
def no_sweep_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each sweep's own report is test_report's subject; here its plots would only cost
    seconds a sweep. The campaign report is written for real."""
    monkeypatch.setattr(report, "render", lambda resource, out_dir: None)


class InterruptOnceATrialIsDone(Progress):
    """Ctrl-C (a KeyboardInterrupt in the run's loop) once one trial is final."""

    def update(self, status, trials, elapsed):
        if any(t.phase in ("Reached", "Censored") for t in trials):
            raise KeyboardInterrupt


def labelled(manifest: dict, campaign: str | None = CAMPAIGN) -> dict:
    if campaign is not None:
        manifest["metadata"]["labels"] = {CAMPAIGN_LABEL: campaign}
    return manifest


def reference_sweep(name: str = REF, **spec) -> dict:
    return labelled(local_manifest(name, **{"batchSizes": [16, 32, 64], "parallelism": 3,
                                            **spec}))


def rmsprop_sweep(name: str, lr: float, reference: str = REF, **spec) -> dict:
    """Another optimizer on the same (fake) architecture, predicted from `reference`."""
    return reference_sweep(name, reference={"sweep": reference}, **spec, optimizer={
        "name": "rmsprop", "generator": {"learningRate": lr},
        "discriminator": {"learningRate": lr}})


def rmsprop_prediction(ratio: float, lr: float) -> float:
    """Proposition 3.4 for RMSProp by hand: b* = r·α / D, D = √Θ / |S|."""
    return ratio * lr / (math.sqrt(PARAMS) / SIZE)


def write(path: Path, *docs: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


CONFIG_MAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "notes"},
              "data": {"why": "not a sweep"}}


def campaign_dir(root: Path) -> Path:
    """The reference in a file of its own; the two predicted sweeps in one file of several
    documents (with a ConfigMap); kustomize's file beside them."""
    d = root / "table3"
    write(d / "reference.yaml", reference_sweep())
    # alpha-rms, two trials at a time: interrupted once one is done, its third is not started
    write(d / "predicted.yml", rmsprop_sweep("beta-rms", 2e-3), CONFIG_MAP,
          rmsprop_sweep("alpha-rms", 5e-3, parallelism=2))
    write(d / "kustomization.yaml", {"apiVersion": "kustomize.config.k8s.io/v1beta1",
                                     "kind": "Kustomization",
                                     "resources": ["reference.yaml", "predicted.yml"]})
    return d


def status_of(run: Path) -> dict:
    return yaml.safe_load((run / "status.yaml").read_text())


def result_files(run: Path) -> dict[str, tuple[str, int]]:
    """Each trial's result.json: its text and when it was written."""
    return {p.parent.name: (p.read_text(), p.stat().st_mtime_ns)
            for p in sorted((run / "trials").glob("*/result.json"))}


def test_a_campaign_runs_references_first_predicts_the_others_and_writes_its_report(
        tmp_path, capsys, monkeypatch, no_sweep_plots):
    monkeypatch.chdir(tmp_path)
    d = campaign_dir(tmp_path)
    assert main(["run", str(d), "--quiet", "--trainer", TRAINER]) == 0
    out = Path("runs") / CAMPAIGN  # the label names the campaign's default directory
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in lines[:3]] == [REF, "alpha-rms", "beta-rms"]
    assert lines[3] == (f"campaign {CAMPAIGN}: 3/3 sweeps succeeded; report: "
                        f"{out / 'campaign.md'}")

    order = [e["sweep"] for e in run_events(out) if e["event"] == "sweep-start"]
    assert order == [REF, "alpha-rms", "beta-rms"]  # references first, then by name
    assert [e["event"] for e in run_events(out)] == [
        "campaign", *["sweep-start", "sweep-done"] * 3]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(order)
    for before, after in itertools.pairwise(order):
        # one after another: a sweep starts (locks its directory) after the last status of the
        # sweep before it
        assert (out / before / "status.yaml").stat().st_mtime_ns <= \
            (out / after / "run.lock").stat().st_mtime_ns
        assert run_events(out / before)[-1]["time"] <= run_events(out / after)[0]["time"]

    ref = status_of(out / REF)
    ratio = ref["criticalBatchSize"]["noiseRatio"]
    assert ref["phase"] == "Succeeded" and ratio > 0
    assert ref["criticalBatchSize"]["predicted"] is None
    for name, lr in (("alpha-rms", 5e-3), ("beta-rms", 2e-3)):
        status = status_of(out / name)
        assert status["phase"] == "Succeeded"
        assert status["criticalBatchSize"]["predicted"] == pytest.approx(
            rmsprop_prediction(ratio, lr), rel=1e-5)
        assert not [w for w in status["warnings"] if "reference" in w]
        assert yaml.safe_load((out / name / "sweep.yaml").read_text())["spec"]["reference"] == {
            "sweep": REF}

    md = (out / "campaign.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and "Succeeded" in ln]
    assert [r.split("|")[1].strip() for r in rows] == [REF, "alpha-rms", "beta-rms"]
    assert (out / "campaign.png").stat().st_size > 0 and (out / "campaign.svg").stat().st_size

    assert main(["run", str(d), "--quiet", "--trainer", TRAINER]) == 2  # not over it
    one_line_error(capsys, f"--out: {out} already holds a campaign run: pass --resume")


def test_an_interrupted_campaign_resumes_where_it_stopped_and_reruns_nothing(
        tmp_path, capsys, monkeypatch, no_sweep_plots):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.003")
    d = campaign_dir(tmp_path)
    out = tmp_path / "out"
    views: list[str] = []

    def interrupt_the_second_sweep(mode: str) -> Progress:
        views.append(mode)
        return InterruptOnceATrialIsDone() if len(views) == 2 else Progress()

    monkeypatch.setattr(run_command, "make_progress", interrupt_the_second_sweep)
    assert main(["run", str(d), "-o", str(out), "--json", "--trainer", TRAINER]) == 130
    monkeypatch.undo()
    done = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert done["event"] == "done" and "Interrupted (Ctrl-C) in sweep alpha-rms" in done["reason"]
    assert f"critbatch run --resume {d} -o {out}" in done["reason"]
    assert [r["phase"] for r in done["sweeps"]] == ["Succeeded", "Running", "Pending"]
    assert not (out / "beta-rms").exists()  # later sweeps untouched
    assert (out / "campaign.md").exists()
    first = result_files(out / REF)
    first_events = run_events(out / REF)
    interrupted = status_of(out / "alpha-rms")
    assert interrupted["warnings"][0].startswith("Interrupted (Ctrl-C)")
    kept = {t["batchSize"]: t for t in interrupted["trials"] if t["phase"] == "Reached"}
    assert kept and len(kept) < 3, interrupted["trials"]
    before = result_files(out / "alpha-rms")
    n_alpha = len(run_events(out / "alpha-rms"))

    assert main(["run", "--resume", "-o", str(out)]) == 2  # a campaign needs its manifests
    one_line_error(capsys, f"--out: {out} holds a campaign run: resume it with its manifests")
    monkeypatch.setattr(report, "render", lambda resource, out_dir: None)
    assert main(["run", "--resume", str(d), "-o", str(out), "--trainer", TRAINER]) == 0
    said = capsys.readouterr()
    assert f"campaign {CAMPAIGN} [1/3]: sweep {REF} finished before (Succeeded): kept" in said.err
    assert f"campaign {CAMPAIGN} [2/3]: sweep alpha-rms -> {out / 'alpha-rms'}" in said.err
    assert f"Campaign {CAMPAIGN}" in said.out and "3/3 sweeps succeeded" in said.out
    assert f"report: {out / 'campaign.md'}, " in said.out
    assert result_files(out / REF) == first  # not rerun: same results, not rewritten
    assert run_events(out / REF) == first_events  # no new trainer start, no event at all
    kept_event = [e for e in run_events(out) if e["event"] == "sweep-kept"]
    assert [e["sweep"] for e in kept_event] == [REF]
    resumed = status_of(out / "alpha-rms")
    assert resumed["phase"] == "Succeeded"
    restarted = {e["batch_size"] for e in run_events(out / "alpha-rms")[n_alpha:]
                 if e["event"] == "start"}
    assert restarted == {16, 32, 64} - set(kept)
    after = result_files(out / "alpha-rms")
    assert {k: v for k, v in after.items() if k in before} == before  # nothing lost
    for b in kept:
        assert next(t for t in resumed["trials"] if t["batchSize"] == b) == kept[b]
    third = status_of(out / "beta-rms")
    assert third["phase"] == "Succeeded" and third["criticalBatchSize"]["predicted"] > 0
    assert "| beta-rms |" in (out / "campaign.md").read_text()


def test_a_failed_sweep_does_not_stop_the_campaign_and_the_exit_code_says_so(
        tmp_path, capsys, no_sweep_plots):
    d = tmp_path / "c"
    # The fake never reaches the target at b <= 8: no measurement, the sweep fails.
    write(d / "a.yaml", local_manifest("a-fails", batchSizes=[4, 8], target={
        "fidThreshold": 10, "evalEvery": 50, "evalSamples": 100, "maxSteps": 100}))
    write(d / "b.yaml", local_manifest("b-works", batchSizes=[16]))
    out = tmp_path / "out"
    assert main(["run", str(d), "-o", str(out), "--quiet", "--trainer", TRAINER]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(f"campaign c: 1/2 sweeps succeeded; report: {out / 'campaign.md'}; "
                           "not succeeded: a-fails (NoMeasurement: "), last
    assert status_of(out / "a-fails")["phase"] == "Failed"
    assert status_of(out / "b-works")["phase"] == "Succeeded"
    assert "| b-works |" in (out / "campaign.md").read_text()


def bad_cycle(d: Path) -> None:
    write(d / "a.yaml", rmsprop_sweep("a", 1e-3, reference="b"))
    write(d / "b.yaml", rmsprop_sweep("b", 1e-3, reference="a"))


def bad_labels(d: Path) -> None:
    write(d / "a.yaml", reference_sweep("a"))
    write(d / "b.yaml", labelled(local_manifest("b"), "other"))


def bad_duplicate(d: Path) -> None:
    write(d / "a.yaml", reference_sweep("same"))
    write(d / "b.yaml", rmsprop_sweep("same", 1e-3))


def bad_no_sweep(d: Path) -> None:
    write(d / "notes.yaml", CONFIG_MAP)
    write(d / "kustomization.yaml", {"resources": ["notes.yaml"]})


def bad_field(d: Path) -> None:
    write(d / "a.yaml", reference_sweep("a"))
    broken = rmsprop_sweep("b", 1e-3)
    broken["spec"]["parallelism"] = 0
    write(d / "b.yaml", reference_sweep("c"), broken)


@pytest.mark.parametrize(("make", "starts"), [
    (bad_cycle, "{d}: spec.reference.sweep: the sweeps reference each other in a cycle: "
                "a -> b -> a"),
    (bad_labels, f"{{d}}: metadata.labels.{CAMPAIGN_LABEL}: sweep 'a' is in campaign "
                 f"'{CAMPAIGN}', sweep 'b' in 'other'"),
    (bad_duplicate, "{d}/b.yaml: metadata.name: 'same' is given twice (also in {d}/a.yaml)"),
    (bad_no_sweep, "SWEEP: {d} holds no CriticalBatchSweep"),
    (bad_field, "{d}/b.yaml (document 2): spec.parallelism: "),
], ids=["cycle", "two-labels", "duplicate-name", "no-sweep", "bad-field"])
def test_a_bad_campaign_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, make, starts):
    d = tmp_path / "campaign"
    d.mkdir()
    make(d)
    out = tmp_path / "out"
    assert main(["run", str(d), "-o", str(out), "--trainer", TRAINER]) == 2
    one_line_error(capsys, starts.format(d=d))
    assert not out.exists()


def test_a_campaign_without_a_label_is_named_after_its_directory(tmp_path):
    d = tmp_path / "lab-notebook"
    write(d / "ref.yaml", local_manifest("ref"))
    write(d / "other.yaml", local_manifest("other", reference={"sweep": "ref"}))
    campaign = load_campaign([d])
    assert campaign.name == "lab-notebook"
    assert [s.name for s in campaign.sweeps] == ["ref", "other"]
    assert all(s.path.parent == d for s in campaign.sweeps)


def test_one_plain_sweep_file_keeps_its_own_output_directory(tmp_path, capsys, monkeypatch,
                                                             no_sweep_plots):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "one.yaml", reference_sweep("solo", batchSizes=[16]))
    assert main(["run", "one.yaml", "--quiet", "--trainer", TRAINER]) == 0
    assert capsys.readouterr().out.startswith("Succeeded, trials 1/1")
    assert (tmp_path / "runs" / "solo" / "status.yaml").is_file()  # not runs/<campaign>/solo


# -- the real trainer ---------------------------------------------------------------------------

# The tiny DCGAN on the embedded digits (16x16) crosses FID 500 in 100 to 250 steps at these
# rates; most of a trial's time is the trainer's start.
TINY = {"target": {"fidThreshold": 500, "evalEvery": 20, "evalSamples": 100, "maxSteps": 400},
        "batchSizes": [8, 32], "seeds": 1, "parallelism": 2, "pruning": {"sfoBound": False}}


def tiny(name: str, optimizer: str, lr: float, reference: str | None = None) -> dict:
    spec = dict(TINY, optimizer={"name": optimizer, "generator": {"learningRate": lr},
                                 "discriminator": {"learningRate": lr}})
    if reference:
        spec["reference"] = {"sweep": reference}
    return labelled(local_manifest(name, **spec), "tiny")


@pytest.mark.slow
def test_three_tiny_sweeps_of_the_real_trainer_as_one_campaign(tmp_path):
    pytest.importorskip("torch")
    d = tmp_path / "tiny"
    write(d / "adam.yaml", tiny("adam", "adam", 1e-3))
    write(d / "rmsprop.yaml", tiny("rmsprop", "rmsprop", 5e-4, reference="adam"))
    write(d / "adam-slow.yaml", tiny("adam-slow", "adam", 5e-4, reference="adam"))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "critbatch", "run", str(d), "-o", str(out),
                           "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: a sweep that found no b*
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    starts = [r["sweep"] for r in records if r["event"] == "sweep-start"]
    assert starts == ["adam", "adam-slow", "rmsprop"]
    rows = records[-1]["sweeps"]
    assert [r["sweep"] for r in rows] == starts
    assert all(r["trialsDone"] == 2 for r in rows)
    ref = status_of(out / "adam")["criticalBatchSize"]
    for row in rows[1:]:
        assert (row["predicted"] is not None) == (ref["noiseRatio"] is not None)
    assert (proc.returncode == 0) == all(r["phase"] == "Succeeded" for r in rows)
    assert (out / "campaign.md").is_file() and (out / "campaign.png").is_file()
    warm = [r["pid"] for r in records if r["event"] == "warm"]
    assert len(warm) == 3 and len(set(warm)) == 1  # one warm server for the three sweeps
