"""The deployment docs' manifests and queries are real: they parse and validate."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from crd_tools import cel_errors, schema_errors

from .conftest import CHART, ROOT, documents, find_tool, run

DOCS = [ROOT / "docs" / f"{n}.md" for n in ("install", "gitops", "kueue", "monitoring",
                                             "upgrading")]
BUILT_IN = {"PersistentVolumeClaim", "ConfigMap", "Namespace"}


def yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(), flags=re.DOTALL)


def blocks_of_kind(kinds: set[str]) -> list[dict]:
    return [
        doc
        for path in DOCS
        for block in yaml_blocks(path)
        for doc in documents(block)
        if doc.get("kind") in kinds
    ]


def test_docs_exist_and_link_to_real_files() -> None:
    for path in DOCS:
        text = path.read_text()
        for target in re.findall(r"\]\(([^)#:]+)\)", text):
            assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


def test_yaml_blocks_parse() -> None:
    count = 0
    for path in DOCS:
        for block in yaml_blocks(path):
            assert documents(block), f"{path.name}: empty YAML block"
            count += 1
    assert count >= 4


def test_built_in_manifests_validate(tmp_path: Path) -> None:
    objects = blocks_of_kind(BUILT_IN)
    assert objects
    validator = find_tool("kubernetes-validate")
    proc = subprocess.run(
        [validator, "--strict", "-"], input=yaml.safe_dump_all(objects),
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sweeps_in_docs_validate_against_the_crd() -> None:
    sweeps = blocks_of_kind({"CriticalBatchSweep"})
    assert sweeps
    for sweep in sweeps:
        assert schema_errors(sweep) == []
        assert cel_errors(sweep) == []


def test_kueue_queues_fit_together() -> None:
    """The LocalQueue points at the ClusterQueue, which covers what trials request."""
    (flavor,) = blocks_of_kind({"ResourceFlavor"})
    (cluster_queue,) = blocks_of_kind({"ClusterQueue"})
    (local_queue,) = blocks_of_kind({"LocalQueue"})
    (sweep,) = blocks_of_kind({"CriticalBatchSweep"})
    assert local_queue["spec"]["clusterQueue"] == cluster_queue["metadata"]["name"]
    assert sweep["spec"]["queueName"] == local_queue["metadata"]["name"]
    assert sweep["metadata"]["namespace"] == local_queue["metadata"]["namespace"]
    (group,) = cluster_queue["spec"]["resourceGroups"]
    assert "nvidia.com/gpu" in group["coveredResources"]
    assert group["flavors"][0]["name"] == flavor["metadata"]["name"]


def test_prometheus_scrape_config_is_valid(tmp_path: Path) -> None:
    """promtool checks the scrape jobs and their relabelling.

    Debian's Prometheus is built without Kubernetes service discovery, so the check swaps each
    job's `kubernetes_sd_configs` for a file discovery after checking its shape.
    """
    promtool = find_tool("promtool")
    (block,) = [b for b in yaml_blocks(ROOT / "docs" / "monitoring.md") if "scrape_configs" in b]
    config = yaml.safe_load(block)
    assert {j["job_name"] for j in config["scrape_configs"]} == {
        "critbatch-trainers", "critbatch-operator"
    }
    for job in config["scrape_configs"]:
        (sd,) = job.pop("kubernetes_sd_configs")
        assert sd["role"] in {"pod", "endpoints"}
        job["file_sd_configs"] = [{"files": [str(tmp_path / "targets.json")]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    run([promtool, "check", "config", str(path)])


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every dashboard query parses (Grafana's variables replaced by plain values)."""
    promtool = find_tool("promtool")
    dashboard = json.loads((CHART / "dashboards" / "critbatch.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    rules = []
    for i, expr in enumerate(exprs):
        expr = expr.replace("$__range", "1h").replace("$namespace", ".*")
        rules.append({"record": f"critbatch:dashboard_query_{i}", "expr": expr.replace(
            "$sweep", ".*")})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = run([promtool, "check", "rules", str(path)])
    assert f"SUCCESS: {len(rules)} rules found" in out


@pytest.mark.parametrize("doc", ["install", "upgrading"])
def test_helm_commands_name_the_chart_in_this_repository(doc: str) -> None:
    text = (ROOT / "docs" / f"{doc}.md").read_text()
    for line in re.findall(r"helm (?:install|upgrade) .*", text):
        assert "charts/critbatch" in line, line
