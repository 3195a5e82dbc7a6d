"""The campaign report (critbatch.campaign_report) and `critbatch report` on a campaign: a
directory of runs, a List on stdin, several YAML documents, and --selector against a fake
kubernetes client."""

from __future__ import annotations

import io
import json
import sys
import types

import pytest
import yaml
from local_helpers import local_manifest, one_line_error

from critbatch import campaign_report
from critbatch.campaign import CAMPAIGN_LABEL, campaign_rows
from critbatch.cli import main
from critbatch.errors import OutputError

RMS = {"name": "rmsprop", "learningRate": 0.0001, "beta1": 0.0, "beta2": 0.99}
ADAM = {"name": "adam", "learningRate": 0.001, "beta1": 0.5, "beta2": 0.999}


def _sweep(name: str, reference: str | None = None, campaign: str | None = "table3",
           **cbs) -> dict:
    body = local_manifest(name)
    if campaign is not None:
        body["metadata"]["labels"] = {CAMPAIGN_LABEL: campaign}
    if reference is not None:
        body["spec"]["reference"] = {"sweep": reference}
    if cbs:
        body["status"] = {
            "phase": "Succeeded", "trialsDone": 3, "trialsTotal": 3, "sfoSaved": 1200,
            "trials": [{"batchSize": b, "seed": 0, "phase": "Reached", "steps": n,
                        "sfo": b * n} for b, n in ((16, 2000), (32, 1350), (64, 1000))],
            "criticalBatchSize": {"confidence": 0.95, "optimizer": ADAM, **cbs},
        }
    return body


def _campaign() -> list[dict]:
    """Table 3 in small: Adam the reference; RMSProp's prediction missed, AdaBelief's held,
    one sweep still without an answer."""
    return [
        _sweep("rms", "adam", mostProbable=16, plausible=[16], resolved=True, predicted=9.5,
               predictedGrid=8, predictedInterval=[6.8, 11.2], fitted=15.5,
               interval=[12.1, 19.0], optimizer=RMS),
        _sweep("adam", mostProbable=32, plausible=[16, 32], resolved=False, measured=32,
               fitted=27.4, interval=[19.6, 35.2]),
        _sweep("adabelief", "adam", mostProbable=32, plausible=[32], resolved=True,
               predicted=30.2, predictedGrid=32, predictedInterval=[21.6, 35.7]),
        _sweep("waiting", "adam"),
    ]


def _small() -> list[dict]:
    """A reference with an answer, one prediction that missed, one sweep still waiting: what
    the command's tests need, at two single-sweep reports' cost."""
    return [s for s in _campaign() if s["metadata"]["name"] != "adabelief"]


def test_markdown_has_every_row_and_says_which_prediction_missed():
    md = campaign_report.campaign_markdown("table3", _campaign())
    assert md.startswith("# Campaign: table3\n")
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and "sweep" not in ln]
    assert [ln.split(" | ")[0] for ln in table] == ["| adam", "| adabelief", "| rms",
                                                    "| waiting"]
    assert ("| rms | Succeeded | rmsprop | 0.0001 | 0 | 0.99 | adam | 16 | {16} | yes | — "
            "| 15.5 [12.1, 19] | 9.5 [6.8, 11.2] (8) | missed | apart | 3/3 | 139200 | 1200 |"
            ) in table
    assert ("| adam | Succeeded | adam | 0.001 | 0.5 | 0.999 | — | 32 | {16, 32} | no | 32 "
            "| 27.4 [19.6, 35.2] | — | — | — | 3/3 | 139200 | 1200 |") in table
    assert "| adabelief |" in md and "| 30.2 [21.6, 35.7] (32) | held | — |" in md
    assert ("- **rms** (rmsprop, from adam): predicted 9.5 (grid 8), most probable 16, "
            "plausible {16}: **the prediction missed**. Against the fitted b\\* (the model "
            "N(b), stalls aside): predicted [6.8, 11.2], fitted 15.5 [12.1, 19]: **they do not "
            "overlap**.") in md
    assert ("- **adabelief** (adam, from adam): predicted 30.2 (grid 32), most probable 32, "
            "plausible {32}: the prediction held.\n") in md  # no fit to set it against
    assert ("2 b* predicted from a reference (Proposition 3.4): 1 held, 1 missed, 0 not yet "
            "checkable; against the fitted b*, 0 overlap, 1 apart.") in md
    assert "- **adam**: b* = 32, **not resolved** (plausible set at 95 %: {16, 32})." in md
    assert "- **rms**: b* = 16, resolved (plausible set at 95 %: {16})." in md
    assert "- **waiting**: no answer yet (Pending)." in md
    assert "4 sweeps: 1 Pending, 3 Succeeded." in md
    assert "SFO spent in all: 417600." in md
    assert md.rstrip().endswith("(campaign.png)")


def test_a_prediction_still_plausible_but_not_most_probable_says_so():
    sweeps = [_sweep("adam", mostProbable=8, plausible=[8], resolved=True),
              _sweep("rms", "adam", mostProbable=4, plausible=[4, 8], resolved=False,
                     predicted=9.487, predictedGrid=8, optimizer=RMS)]
    md = campaign_report.campaign_markdown("digits", sweeps, plot_name=None)
    assert "| 9.487 (8) | held, not most probable |" in md
    assert ("plausible {4, 8}: the prediction held only as plausible, **the most probable "
            "b\\* is 4**.") in md


def test_a_prediction_without_an_answer_yet_cannot_be_checked():
    sweeps = [_sweep("adam"), _sweep("rms", "adam", predicted=9.5, predictedGrid=8)]
    md = campaign_report.campaign_markdown("t", sweeps, plot_name=None)
    assert ("- **rms** (adam, from adam): predicted 9.5 (grid 8), no answer yet: the "
            "prediction cannot be checked yet.") in md
    assert "1 not yet checkable" in md and "campaign.png" not in md


def test_table_cells_keep_a_hostile_name_inside_its_cell():
    row, = campaign_rows([_sweep("a|b\x1b[31m", mostProbable=16, plausible=[16])])
    assert campaign_report.table_cells(row)[0] == "a\\|b?[31m"


def test_plot_shows_each_sweep_on_a_log2_axis_with_its_prediction():
    fig = campaign_report.campaign_plot("table3", _campaign())
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.yaxis.get_transform().base == 2
    assert [t.get_text() for t in ax.get_xticklabels()] == ["adam", "adabelief", "rms",
                                                          "waiting"]
    assert "table3" in fig._suptitle.get_text()
    points = {(round(x, 2), round(y, 2)) for c in ax.collections for x, y in c.get_offsets()}
    assert {(0, 32), (1, 32), (2, 16)} <= points  # the most probable b*
    assert {(1.12, 30.2), (2.12, 9.5)} <= points  # the predictions, beside them
    assert {(-0.12, 27.4), (1.88, 15.5)} <= points  # the fitted b*, on the other side
    bars = {(round(x, 2), round(low, 2), round(high, 2)) for c in ax.collections
            if type(c).__name__ == "LineCollection" for (x, low), (_, high) in c.get_segments()}
    assert bars == {(-0.12, 19.6, 35.2), (1.12, 21.6, 35.7), (1.88, 12.1, 19.0),
                    (2.12, 6.8, 11.2)}  # and their intervals
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "predicted (Prop. 3.4), missed" in legend and "plausible set, not resolved" in legend
    assert "b* fitted, 95 % interval" in legend


def test_a_prediction_far_off_the_grid_or_a_name_of_dollars_does_not_break_the_plot(tmp_path):
    sweeps = [_sweep("a$\\frac$", mostProbable=16, plausible=[16], predicted=1e305,
                     predictedGrid=64)]
    files = campaign_report.write_campaign_report(tmp_path, "$\\sqrt{", sweeps)
    assert files[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "1e+305 (64) | missed" in files[0].read_text()


def test_write_campaign_report_writes_three_files_replacing_links(tmp_path):
    victim = tmp_path / "victim.md"
    victim.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "campaign.md").symlink_to(victim)
    files = campaign_report.write_campaign_report(out, "table3", _campaign())
    assert [f.name for f in files] == ["campaign.md", "campaign.png", "campaign.svg"]
    assert victim.read_text() == "keep" and not files[0].is_symlink()
    assert files[0].read_text() == campaign_report.campaign_markdown("table3", _campaign())
    assert "<svg" in files[2].read_text()[:500]


def test_an_unwritable_place_is_an_output_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="cannot write the campaign report"):
        campaign_report.write_campaign_report(tmp_path / "file" / "out", "t", _campaign())


def _run_dirs(root, sweeps: list[dict]) -> None:
    """The layout `critbatch run DIR/` leaves: OUT/<sweep>/sweep.yaml and status.yaml."""
    for sweep in sweeps:
        run = root / sweep["metadata"]["name"]
        run.mkdir(parents=True)
        (run / "sweep.yaml").write_text(yaml.safe_dump(sweep))
        if "status" in sweep:
            (run / "status.yaml").write_text(yaml.safe_dump(sweep["status"]))


def test_report_on_a_directory_of_runs_writes_the_campaign_report_there(tmp_path, capsys):
    root = tmp_path / "runs" / "table3"
    _run_dirs(root, _campaign())
    assert main(["report", str(root)]) == 0
    out = capsys.readouterr().out
    assert "Campaign table3" in out and "missed" in out and "held" in out
    assert out.splitlines()[-1] == (f"campaign table3: {root}/campaign.md {root}/campaign.png "
                                    f"{root}/campaign.svg")
    assert "| rms | Succeeded | rmsprop |" in (root / "campaign.md").read_text()
    assert not list(root.rglob("summary.md"))  # the runs' own reports are theirs


def test_a_directory_of_unlabelled_runs_takes_the_directory_name(tmp_path, capsys):
    root = tmp_path / "lab-week"
    _run_dirs(root, [_sweep("a", campaign=None, mostProbable=16, plausible=[16]),
                     _sweep("b", "a", campaign=None)])
    (root / "notes").mkdir()  # not a run: ignored
    out = tmp_path / "elsewhere"
    assert main(["report", str(root), "-o", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["campaign"] == "lab-week"
    assert [r["sweep"] for r in printed["rows"]] == ["a", "b"]
    assert printed["rows"][0]["mostProbable"] == 16 and printed["rows"][1]["reference"] == "a"
    assert printed["files"] == [str(out / n) for n in ("campaign.md", "campaign.png",
                                                       "campaign.svg")]
    assert (out / "campaign.md").read_text().startswith("# Campaign: lab-week\n")


def test_a_directory_without_runs_is_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    one_line_error(capsys, f"DIR: {tmp_path}/empty is no run directory")


def test_report_of_a_list_on_stdin_is_each_sweeps_report_and_the_campaigns(tmp_path,
                                                                          monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    listing = {"apiVersion": "v1", "kind": "List", "items": _small()}
    monkeypatch.setattr(sys, "stdin", io.StringIO(yaml.safe_dump(listing)))
    assert main(["report", "-"]) == 0
    out = tmp_path / "report-table3"
    assert {p.parent.name for p in out.glob("*/summary.md")} == {"adam", "rms"}
    assert "**the prediction missed**" in (out / "campaign.md").read_text()
    printed = capsys.readouterr().out
    assert "rms: report-table3/rms/summary.md" in printed
    assert printed.splitlines()[-1].startswith("campaign table3: report-table3/campaign.md")


def test_several_yaml_documents_are_a_campaign_too(tmp_path):
    sweeps = [_sweep("adam"), _sweep("rms", "adam")]
    text = "---\n".join(yaml.safe_dump(s) for s in sweeps)
    (tmp_path / "all.yaml").write_text(text + "---\n")
    assert main(["report", str(tmp_path / "all.yaml"), "-o", str(tmp_path / "r")]) == 0
    assert "| rms | Pending |" in (tmp_path / "r" / "campaign.md").read_text()
    assert not list((tmp_path / "r").glob("*/summary.md"))  # no status, no sweep report


def test_a_campaign_with_a_cycle_is_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweeps = [_sweep("a", "b", mostProbable=16, plausible=[16]), _sweep("b", "a")]
    monkeypatch.setattr(sys, "stdin", io.StringIO(yaml.safe_dump({"kind": "List",
                                                                  "items": sweeps})))
    assert main(["report", "-"]) == 2
    one_line_error(capsys, "spec.reference.sweep: the sweeps reference each other in a cycle: "
                           "a -> b -> a")
    assert not list(tmp_path.iterdir())


class _ApiException(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class _ConfigException(Exception):
    pass


def _fake_kubernetes(monkeypatch, listing: dict | Exception) -> list[tuple]:
    """The kubernetes client's modules, with a CustomObjectsApi that answers `listing`; the
    calls it got."""
    calls: list[tuple] = []

    class CustomObjectsApi:
        def list_namespaced_custom_object(self, group, version, namespace, plural, **kw):
            calls.append((group, version, namespace, plural, kw))
            if isinstance(listing, Exception):
                raise listing
            return listing

    config = types.SimpleNamespace(
        ConfigException=_ConfigException,
        load_kube_config=lambda context=None: calls.append(("context", context)),
        list_kube_config_contexts=lambda: ([], {"context": {"namespace": "from-kubeconfig"}}),
        load_incluster_config=lambda: None)
    client = types.ModuleType("kubernetes.client")
    client.CustomObjectsApi = CustomObjectsApi
    rest = types.ModuleType("kubernetes.client.rest")
    rest.ApiException = _ApiException
    client.rest = rest
    kubernetes = types.ModuleType("kubernetes")
    kubernetes.client, kubernetes.config = client, config
    for name, module in (("kubernetes", kubernetes), ("kubernetes.client", client),
                         ("kubernetes.client.rest", rest), ("kubernetes.config", config)):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_selector_reads_the_campaign_from_the_cluster(tmp_path, monkeypatch, capsys):
    sweeps = [s for s in _small() if s["metadata"]["name"] != "rms"]
    calls = _fake_kubernetes(monkeypatch, {"kind": "CriticalBatchSweepList", "items": sweeps})
    selector = f"{CAMPAIGN_LABEL}=table3"
    assert main(["report", "--selector", selector, "-n", "lab", "--context", "gpu",
                 "-o", str(tmp_path / "r")]) == 0
    assert ("context", "gpu") in calls
    assert ("critbatch.dev", "v1alpha1", "lab", "criticalbatchsweeps",
            {"label_selector": selector}) in calls
    assert "| waiting | Pending |" in (tmp_path / "r" / "campaign.md").read_text()
    assert [p.parent.name for p in (tmp_path / "r").glob("*/summary.md")] == ["adam"]
    assert "campaign table3: " in capsys.readouterr().out


def test_selector_takes_the_kubeconfig_namespace_and_says_when_nothing_matches(
        monkeypatch, capsys):
    calls = _fake_kubernetes(monkeypatch, {"items": []})
    assert main(["report", "-l", f"{CAMPAIGN_LABEL}=none"]) == 2
    one_line_error(capsys, f"--selector: no CriticalBatchSweep in namespace from-kubeconfig "
                           f"matches {CAMPAIGN_LABEL}=none")
    assert calls[-1][2] == "from-kubeconfig"


def test_selector_refused_by_the_cluster_is_exit_2(monkeypatch, capsys):
    _fake_kubernetes(monkeypatch, _ApiException(403, "Forbidden"))
    assert main(["report", "-l", "x=y", "-n", "lab"]) == 2
    one_line_error(capsys, "--selector: lab/x=y: 403 Forbidden")


def test_selector_without_the_kubernetes_client_says_how(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kubernetes", None)
    assert main(["report", "--selector", "x=y"]) == 2
    err = one_line_error(capsys, "--selector: reading from the cluster needs")
    assert "kubectl get cbs -l x=y -o yaml" in err


def test_selector_matching_one_sweep_is_still_a_campaign(tmp_path, monkeypatch):
    _fake_kubernetes(monkeypatch, {"items": [_sweep("waiting")]})
    assert main(["report", "-l", "x=y", "-n", "lab", "-o", str(tmp_path / "r")]) == 0
    assert "| waiting | Pending |" in (tmp_path / "r" / "campaign.md").read_text()


def test_one_source_at_a_time(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--selector", "x=y"]) == 2
    one_line_error(capsys, "FILE: give one of FILE|DIR|-, --name and --selector")
