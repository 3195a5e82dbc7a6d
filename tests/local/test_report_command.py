"""`critbatch report` on hostile input: names that would escape OUT, links, garbled statuses,
campaigns whose names collide with each other or with the campaign's own files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from local_helpers import local_manifest, one_line_error

from critbatch.campaign import CAMPAIGN_LABEL
from critbatch.cli import main


def _resource(name: str, campaign: str | None = None) -> dict:
    resource = local_manifest(name)
    if campaign is not None:
        resource["metadata"]["labels"] = {CAMPAIGN_LABEL: campaign}
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
    # Two names that make the same path component: a directory each, x and x-2.
    listing = {"apiVersion": "v1", "kind": "List",
               "items": [_resource(name), _resource(name + "/")]}
    (work / "list.yaml").write_text(yaml.safe_dump(listing))
    assert main(["report", "list.yaml", "-o", "r"]) == 0
    assert (work / "r" / "campaign.md").is_file()
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


def test_a_campaign_with_a_name_given_twice_is_exit_2_and_writes_nothing(tmp_path, capsys):
    listing = {"kind": "List", "items": [_resource("adam"), _resource("adam")]}
    (tmp_path / "list.yaml").write_text(yaml.safe_dump(listing))
    assert main(["report", str(tmp_path / "list.yaml"), "-o", str(tmp_path / "r")]) == 2
    one_line_error(capsys, "metadata.name: 'adam' is given twice (items[0] and items[1])")
    assert not (tmp_path / "r").exists()


def test_a_sweep_named_like_the_campaigns_files_gets_a_directory_of_its_own(tmp_path):
    listing = {"kind": "List", "items": [_resource("campaign.md"), local_manifest("b")]}
    (tmp_path / "list.yaml").write_text(yaml.safe_dump(listing))
    assert main(["report", str(tmp_path / "list.yaml"), "-o", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "campaign.md").is_file()
    assert (tmp_path / "r" / "campaign.md-2" / "summary.md").is_file()


def test_a_campaign_label_cannot_choose_where_the_report_goes(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    pending = local_manifest("b")
    pending["metadata"]["labels"] = {CAMPAIGN_LABEL: "../../up"}
    listing = {"kind": "List", "items": [_resource("a", "../../up"), pending]}
    (work / "list.yaml").write_text(yaml.safe_dump(listing))
    assert main(["report", "list.yaml"]) == 0
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("campaign.md")] == [
        Path("work/report-up/campaign.md")]


@pytest.mark.parametrize(("change", "starts"), [
    (lambda r: r["status"]["criticalBatchSize"].update(plausible=[10**9]),
     "b: status.criticalBatchSize.plausible[0]: expected a batch size"),
    (lambda r: r["status"]["trials"][0].update(batchSize="big"),
     "b: status.trials[0].batchSize: expected a number"),
    (lambda r: r["metadata"].update(labels={CAMPAIGN_LABEL: "other"}),
     f"metadata.labels.{CAMPAIGN_LABEL}: sweep 'a' is in campaign 't'"),
])
def test_a_garbled_sweep_in_a_campaign_is_exit_2_naming_it_before_writing(tmp_path, capsys,
                                                                         change, starts):
    bad = _resource("b", "t")
    change(bad)
    listing = {"kind": "List", "items": [_resource("a", "t"), bad]}
    (tmp_path / "list.yaml").write_text(yaml.safe_dump(listing))
    assert main(["report", str(tmp_path / "list.yaml"), "-o", str(tmp_path / "r")]) == 2
    one_line_error(capsys, starts)
    assert not (tmp_path / "r").exists()
