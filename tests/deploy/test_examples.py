"""The example sweeps: the paper's three settings and the small local ones, as documented.

That every example validates against the CRD (schema and CEL rules) and parses is tested with
the CRD's own tests (tests/core/test_crd.py); this file checks what the examples are meant to hold.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from critbatch.science import estimate_targets, snap_to_grid
from critbatch.spec import Sweep, parse_sweep

from .conftest import ROOT

EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))


def sweeps() -> list[tuple[str, dict]]:
    found = []
    for path in EXAMPLES:
        for i, doc in enumerate(d for d in yaml.safe_load_all(path.read_text()) if d):
            found.append((f"{path.relative_to(ROOT)}#{i}", doc))
    return found


SWEEPS = sweeps()


def test_examples_exist() -> None:
    names = {p.relative_to(ROOT / "examples").as_posix() for p in EXAMPLES}
    assert {"digits-local.yaml", "digits.yaml", "faces.yaml"} <= names
    assert {f"paper/{n}.yaml" for n in ("dcgan-lsun-bedroom", "wgan-gp-celeba",
                                        "biggan-imagenet")} <= names


def paper_sweeps() -> dict[str, dict]:
    return {
        doc["metadata"]["name"]: doc["spec"]
        for where, doc in SWEEPS
        if where.startswith("examples/paper/")
    }


# docs/science.md: (alpha_G, alpha_D) per setting and optimizer, and the thresholds.
PAPER = {
    "dcgan-lsun-bedroom": (70, {"adam": (1e-4, 3e-4), "adabelief": (3e-4, 3e-5),
                                "rmsprop": (1e-4, 3e-5)}),
    "wgan-gp-celeba": (50, {"adam": (1e-4, 3e-4), "adabelief": (5e-4, 3e-5),
                            "rmsprop": (3e-4, 1e-4)}),
    "biggan-imagenet": (None, {"adam": (1e-4, 4e-4)}),
}


@pytest.mark.parametrize("setting", sorted(PAPER))
def test_paper_settings_use_the_papers_learning_rates(setting: str) -> None:
    threshold, rates = PAPER[setting]
    found = {n: s for n, s in paper_sweeps().items() if n.startswith(setting + "-")}
    assert set(found) == {f"{setting}-{opt}" for opt in rates}
    for name, spec in found.items():
        opt = spec["optimizer"]
        assert name == f"{setting}-{opt['name']}"
        got = (opt["generator"]["learningRate"], opt["discriminator"]["learningRate"])
        assert got == pytest.approx(rates[opt["name"]])
        if threshold is not None:
            assert spec["target"]["threshold"] == threshold
        # Real data from a claim, Inception weights from a file on a claim.
        assert spec["trainer"]["dataset"]["pvc"]
        assert spec["trainer"]["inception"]["file"]


def test_local_example_needs_no_gpu_and_no_cluster() -> None:
    (spec,) = [d["spec"] for w, d in SWEEPS if w.startswith("examples/digits-local.yaml")]
    assert spec["trainer"]["dataset"]["name"] == "digits"
    assert spec["trainer"]["device"] == "cpu"
    assert spec["trainer"]["gpus"] == 0
    assert "pvc" not in spec["trainer"]["dataset"] and "inception" not in spec["trainer"]


def test_example_files_are_named_for_what_they_hold() -> None:
    for path in EXAMPLES:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert docs, path
        if len(docs) == 1 and path.parent.name == "examples":
            assert docs[0]["metadata"]["name"] == Path(path).stem


# The paper's measured b* for Adam (its Table 3). The other optimizers' b* is what Proposition
# 3.4 predicts from each sweep's reference, which the sweep must be able to confirm or refute.
PAPER_ADAM_B_STAR = {"dcgan-lsun-bedroom": 32, "wgan-gp-celeba": 2, "biggan-imagenet": 256}


def parsed_paper_sweeps() -> dict[str, Sweep]:
    return {name: parse_sweep(doc) for name, doc in
            ((d["metadata"]["name"], d) for w, d in SWEEPS if w.startswith("examples/paper/"))}


def expected_b_stars(name: str, sweeps: dict[str, Sweep]) -> list[float]:
    """The paper's measured b* for Adam, and the prediction from the sweep's reference."""
    sweep = sweeps[name]
    setting = name.rsplit("-", 1)[0]
    out = [PAPER_ADAM_B_STAR[setting]] if sweep.optimizer.name == "adam" else []
    if sweep.reference is not None:
        ref = sweeps[sweep.reference.sweep]
        # Θ cancels: the reference's networks are the same (WGAN-GP's are DCGAN's).
        _, (est,) = estimate_targets(
            ref.optimizer.setting(), PAPER_ADAM_B_STAR[ref.name.rsplit("-", 1)[0]], 1,
            ref.trainer.dataset.size, [(sweep.optimizer.setting(), 1, sweep.trainer.dataset.size)])
        out.append(est.batch_size)
    return out


def test_every_paper_grid_brackets_the_b_star_it_should_find() -> None:
    sweeps = parsed_paper_sweeps()
    for name, sweep in sweeps.items():
        expected = expected_b_stars(name, sweeps)
        assert expected, name
        for b_star in expected:
            # A grid point on each side: an argmin at the edge of the grid is no argmin.
            assert min(sweep.batch_sizes) < b_star < max(sweep.batch_sizes), (name, b_star)


def test_wgan_gp_predictions_from_dcgan_agree_with_the_papers_adam_b_star() -> None:
    sweeps = parsed_paper_sweeps()
    (predicted,) = expected_b_stars("wgan-gp-celeba-adam", sweeps)[1:]
    assert snap_to_grid(predicted) == PAPER_ADAM_B_STAR["wgan-gp-celeba"]


def test_biggan_adabelief_estimate_is_table_3s_with_the_assumed_learning_rate() -> None:
    """Table 3's BigGAN AdaBelief estimate 2^9 follows from Adam's 2^8 only at alpha_G = 4e-4."""
    sweep = parsed_paper_sweeps()["biggan-imagenet-adam"]
    (target,) = sweep.estimate
    assert (target.optimizer, target.learning_rate) == ("adabelief", 4e-4)
    _, (est,) = estimate_targets(sweep.optimizer.setting(), 256, 70_400_000, 1_281_167,
                                 [(target.setting(), None, None)])
    assert est.grid_batch_size == 2**9


def test_paper_sweeps_run_several_seeds_on_the_one_gpu_a_trial_uses() -> None:
    for name, sweep in parsed_paper_sweeps().items():
        assert sweep.seeds >= 2, name  # N(b) differs by 10-30 % between seeds
        assert sweep.trainer.gpus == 1, name  # a trial trains on one device


def test_paper_sweeps_name_the_papers_networks() -> None:
    """Not the trainer's defaults: BigGAN's default width is 32, not the paper's 96."""
    for name, sweep in parsed_paper_sweeps().items():
        t = sweep.trainer
        if t.model == "biggan":
            assert (t.image_size, t.width, t.z_dim, t.ema_start) == (128, 96, 120, 20000), name
        else:
            assert (t.image_size, t.width, t.z_dim) == (64, 64, 100), name


# ---------------------------------------------------------------------------------------------
# Campaigns: the sweeps of one experiment, labelled critbatch.dev/campaign
# ---------------------------------------------------------------------------------------------

CAMPAIGN_LABEL = "critbatch.dev/campaign"
# One campaign per model family, as the paper measures one noise ratio per network: WGAN-GP
# trains DCGAN's networks and takes DCGAN's Adam sweep as its reference (docs/science.md).
PAPER_CAMPAIGNS = {
    "paper-dcgan": ("dcgan-lsun-bedroom", "wgan-gp-celeba"),
    "paper-biggan": ("biggan-imagenet",),
}


def paper_manifests() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for w, d in SWEEPS if w.startswith("examples/paper/")}


def test_every_paper_sweep_belongs_to_its_model_familys_campaign() -> None:
    setting_of = {s: c for c, settings in PAPER_CAMPAIGNS.items() for s in settings}
    manifests = paper_manifests()
    assert manifests
    for name, doc in manifests.items():
        labels = doc["metadata"]["labels"]
        assert labels[CAMPAIGN_LABEL] == setting_of[labels["critbatch.dev/setting"]], name
        assert name.startswith(labels["critbatch.dev/setting"] + "-"), name


def test_paper_references_point_inside_the_campaign_at_its_one_adam_reference() -> None:
    manifests = paper_manifests()
    for campaign in PAPER_CAMPAIGNS:
        members = {n: d for n, d in manifests.items()
                   if d["metadata"]["labels"][CAMPAIGN_LABEL] == campaign}
        roots = [n for n, d in members.items() if "reference" not in d["spec"]]
        assert len(roots) == 1, (campaign, roots)
        (root,) = roots
        assert members[root]["spec"]["optimizer"]["name"] == "adam", campaign
        for name, doc in members.items():
            if name != root:
                assert doc["spec"]["reference"]["sweep"] == root, name


def test_the_dcgan_campaigns_reference_is_the_dcgan_adam_sweep() -> None:
    manifests = paper_manifests()
    wgan = [d for n, d in manifests.items() if n.startswith("wgan-gp-celeba-")]
    assert len(wgan) == 3
    for doc in wgan:
        assert doc["spec"]["reference"]["sweep"] == "dcgan-lsun-bedroom-adam"


def campaign_examples() -> dict[str, list[tuple[Path, dict]]]:
    """The sweeps under examples/campaign/, by directory (one campaign each)."""
    found: dict[str, list[tuple[Path, dict]]] = {}
    for path in EXAMPLES:
        rel = path.relative_to(ROOT / "examples")
        if rel.parts[0] == "campaign":
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "CriticalBatchSweep":
                    found.setdefault(rel.parts[1], []).append((path, doc))
    return found


def test_campaign_examples_name_each_sweep_for_its_campaign_and_file() -> None:
    campaigns = campaign_examples()
    assert "digits" in campaigns
    for campaign, members in campaigns.items():
        names = set()
        for path, doc in members:
            assert doc["metadata"]["name"] == f"{campaign}-{path.stem}", path
            names.add(doc["metadata"]["name"])
        for path, doc in members:
            ref = doc["spec"].get("reference")
            if ref is not None:
                assert ref["sweep"] in names, path
