"""`critbatch report` on hostile input: names that would escape OUT, links, garbled statuses."""

from __future__ import annotations

import pytest
import yaml
from local_helpers import local_manifest, one_line_error

from critbatch.cli import main


def _resource(name: str) -> dict:
    resource = local_manifest(name)
    resource["status"] = {
        "phase": "Succeeded", "trialsDone": 1, "trialsTotal": 1,
        "trials": [{"batchSize": 16, "seed": 0, "phase": "Reached", "steps": 2000,
                    "sfo": 32000}],
        "criticalBatchSize": {"measured": 16},
    }
    return resource


@pytest.mark.parametrize("name", ["../../escaped", "/escaped-abs", "..", "a/../../b",
                                  "\x1b[31mred"])
def test_report_stays_inside_out_whatever_the_name(tmp_path, monkeypatch, name):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    listing = {"apiVersion": "v1", "kind": "List",
               "items": [_resource(name), _resource(name)]}
    (work / "list.yaml").write_text(yaml.safe_dump(listing))
    assert main(["report", "list.yaml", "-o", "r"]) == 0
    (work / "one.yaml").write_text(yaml.safe_dump(_resource(name)))
    assert main(["report", "one.yaml"]) == 0
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("summary.md")}
    assert len(written) == 3
    assert all(p.parts[0] == "work" for p in written), written
    assert sum(p.parts[1] == "r" for p in written) == 2


def test_report_refuses_a_link_inside_out_that_leads_outside(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "r" / "evil").symlink_to(tmp_path / "elsewhere")
    listing = {"kind": "List", "items": [_resource("evil"), _resource("good")]}
    (tmp_path / "list.yaml").write_text(yaml.safe_dump(listing))
    assert main(["report", "list.yaml", "-o", "r"]) == 2
    one_line_error(capsys, "--out: r/evil leads outside r")
    assert not list((tmp_path / "elsewhere").iterdir())


def test_report_replaces_a_linked_file_instead_of_following_it(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (out / "summary.md").symlink_to(victim)
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(_resource("x")))
    assert main(["report", str(tmp_path / "one.yaml"), "-o", str(out)]) == 0
    assert victim.read_text() == "keep"
    assert not (out / "summary.md").is_symlink()


@pytest.mark.parametrize(("status", "starts"), [
    ({"trials": [{"batchSize": "big", "phase": "Reached"}]},
     "status.trials[0].batchSize: expected a number"),
    ({"trials": [{"batchSize": 10**30, "phase": "Reached", "steps": 5}]},
     "status.trials[0].batchSize: expected an integer in 1..1048576"),
    ({"trials": [], "warnings": 5}, "status.warnings: expected a list"),
    ({"trials": [], "criticalBatchSize": [1]}, "status.criticalBatchSize: expected a mapping"),
    ({"trials": [], "criticalBatchSize": {"plausible": [[1]]}},
     "status.criticalBatchSize.plausible[0]: expected a number"),
    ({"trials": [], "criticalBatchSize": {"probabilities": {"x": 1}}},
     "status.criticalBatchSize.probabilities: 'x' is not a batch size"),
])
def test_report_of_a_garbled_status_is_exit_2_naming_the_field(tmp_path, capsys, status, starts):
    resource = _resource("x")
    resource["status"] = {"phase": "Running", **status}
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(resource))
    assert main(["report", str(tmp_path / "one.yaml"), "-o", str(tmp_path / "r")]) == 2
    one_line_error(capsys, starts)


def test_report_out_on_a_file_and_bad_files_are_exit_2(tmp_path, capsys):
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(_resource("x")))
    (tmp_path / "file").write_text("")
    assert main(["report", str(tmp_path / "one.yaml"), "-o", str(tmp_path / "file")]) == 2
    one_line_error(capsys, f"--out: {tmp_path}/file exists and is not a directory")
    (tmp_path / "bad.yaml").write_bytes(b"name: \xff\n")
    assert main(["report", str(tmp_path / "bad.yaml")]) == 2
    one_line_error(capsys, f"FILE: {tmp_path}/bad.yaml is not UTF-8 text")
    (tmp_path / "deep.yaml").write_text("[" * 100_000)
    assert main(["report", str(tmp_path / "deep.yaml")]) == 2
    one_line_error(capsys, f"{tmp_path}/deep.yaml: nested too deeply")
