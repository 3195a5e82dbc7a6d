"""parse_sweep and trainer_args: defaults, validation with messages that name the field, argv,
and the spec's agreement with the vocabulary, the CRD and the trainer."""

from __future__ import annotations

import pytest
from crd_tools import openapi_schema
from sweeps import BASE, MINIMAL, sweep_manifest

from critbatch.errors import InputError
from critbatch.spec import (
    MetricsSource,
    SpecError,
    StrategyType,
    parse_sweep,
    resume_checkpoint_every,
)
from critbatch.trainer_args import trainer_args
from critbatch.vocabulary import (
    DATASETS,
    DEVICES,
    EMBEDDED_DATASETS,
    MAX_TRIALS_PER_GROUP,
    MODELS,
    OPTIMIZERS,
    TrialKey,
    optimizer_defaults,
)


def test_minimal_sweep_gets_the_crd_defaults_and_the_trainers_optimizer():
    s = parse_sweep(sweep_manifest(base=MINIMAL))
    assert (s.name, s.namespace, s.generation) == ("m", "default", 1)
    assert s.seeds == 1 and s.parallelism == 4 and s.pruning.sfo_bound
    assert s.trainer.model == "dcgan" and s.trainer.dataset.name == "digits"
    assert s.trainer.gpus == 1 and s.trainer.backoff_limit == 2
    assert s.metrics.source == "auto" and s.metrics.linger_seconds == 30
    assert s.metrics.source is MetricsSource.auto
    assert s.queue_name is None and s.reference is None and s.estimate == ()
    g, d = s.optimizer.generator, s.optimizer.discriminator
    # The digits demo's DCGAN with Adam: the trainer's 1e-3 for both, not the paper's rates.
    assert (s.optimizer.name, g.learning_rate, d.learning_rate) == ("adam", 1e-3, 1e-3)
    assert (g.beta1, g.beta2, g.eps) == (0.5, 0.999, 1e-8)
    assert s.target.eval_every is None  # the trainer's default for the dataset
    assert (s.target.metric, s.target.goal, s.target.threshold) == ("fid", "minimize", 70.0)
    assert not s.trainer.custom and s.trainer.command == ()


def test_dcgan_with_adam_off_the_digits_demo_gets_the_papers_rates():
    s = parse_sweep(sweep_manifest(base=MINIMAL, trainer={"dataset": {"name": "faces"}}))
    g, d = s.optimizer.generator, s.optimizer.discriminator
    assert (g.learning_rate, d.learning_rate) == (1e-4, 3e-4)
    assert (g.beta1, g.beta2, g.eps) == (0.5, 0.999, 1e-8)


@pytest.mark.parametrize("dataset", EMBEDDED_DATASETS)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_unset_optimizer_values_are_the_vocabularys_defaults_for_the_dataset(
        model, optimizer, dataset):
    s = parse_sweep(_sweep_of(model, dataset, optimizer))
    assert (s.optimizer.generator, s.optimizer.discriminator) == optimizer_defaults(
        model, optimizer, dataset)


def _sweep_of(model: str, dataset: str, optimizer: str = "adam") -> dict:
    """The base sweep with this model, embedded dataset and optimizer, nothing else set."""
    return sweep_manifest(optimizer={"name": optimizer}, batchSizes=[2, 4],
                          trainer={"model": model, "dataset": {"name": dataset},
                                   **({"imageSize": 32} if model == "biggan" else {})})

def test_trials_are_ordered_by_batch_size_then_seed():
    s = parse_sweep(sweep_manifest(batchSizes=[16, 2, 4], seeds=2))
    assert s.trials() == [TrialKey(2, 0), TrialKey(2, 1), TrialKey(4, 0), TrialKey(4, 1),
                          TrialKey(16, 0), TrialKey(16, 1)]


def test_the_fast_paths_are_asked_for_by_name():
    plain = _flags(trainer_args(parse_sweep(sweep_manifest()), TrialKey(2, 0), metrics_port=0,
                                checkpoint_dir=None))
    assert "--cuda-graph" not in plain and "--bf16" not in plain
    fast = parse_sweep(sweep_manifest(trainer={"cudaGraph": True, "bf16": True}))
    args = trainer_args(fast, TrialKey(2, 0), metrics_port=0, checkpoint_dir=None)
    assert args[-2:] == ["--cuda-graph", "--bf16"]
    micro = parse_sweep(sweep_manifest(trainer={"model": "biggan", "microBatch": 64}))
    args = trainer_args(micro, TrialKey(2, 0), metrics_port=0, checkpoint_dir=None)
    assert args[-2:] == ["--micro-batch", "64"] and "--micro-batch" not in plain
    lean = parse_sweep(sweep_manifest(trainer={"model": "biggan", "recomputeActivations": True}))
    args = trainer_args(lean, TrialKey(2, 0), metrics_port=0, checkpoint_dir=None)
    assert args[-1] == "--recompute-activations" and "--recompute-activations" not in plain
    fused = parse_sweep(sweep_manifest(trainer={"model": "biggan", "fusedAttention": True}))
    args = trainer_args(fused, TrialKey(2, 0), metrics_port=0, checkpoint_dir=None)
    assert args[-1] == "--fused-attention" and "--fused-attention" not in plain


def test_reproducible_cpu_numerics_are_asked_for_by_name():
    plain = trainer_args(parse_sweep(sweep_manifest()), TrialKey(2, 0), metrics_port=0,
                         checkpoint_dir=None)
    assert "--reproducible-cpu" not in plain
    pinned = parse_sweep(sweep_manifest(trainer={"reproducibleCPU": True}))
    assert pinned.trainer.reproducible_cpu is True
    keys = [TrialKey(2, 0), TrialKey(4, 0)]
    assert trainer_args(pinned, keys, metrics_port=0, checkpoint_dir=None)[-1] == (
        "--reproducible-cpu")


def test_the_network_is_the_trainers_default_unless_the_spec_sets_it():
    plain = _flags(trainer_args(parse_sweep(sweep_manifest()), TrialKey(2, 0), metrics_port=0,
                                checkpoint_dir=None))
    assert not {"--width", "--z-dim", "--ema-start"} & set(plain)
    s = parse_sweep(sweep_manifest(trainer={"model": "biggan", "imageSize": 128, "width": 96,
                                            "zDim": 120, "emaStart": 20000}))
    assert (s.trainer.width, s.trainer.z_dim, s.trainer.ema_start) == (96, 120, 20000)
    f = _flags(trainer_args(s, TrialKey(2, 0), metrics_port=0, checkpoint_dir=None))
    assert (f["--width"], f["--z-dim"], f["--ema-start"]) == ("96", "120", "20000")
    # z splits into one chunk per generator block plus one: 4 at 32x32 (faces), 5 at 64x64.
    assert parse_sweep(sweep_manifest(trainer={"model": "biggan", "dataset": {"name": "faces"},
                                               "zDim": 128})).trainer.z_dim == 128
    assert parse_sweep(sweep_manifest(trainer={"model": "biggan", "imageSize": 64,
                                               "zDim": 100})).trainer.z_dim == 100


def test_a_pods_trials_run_as_one_trainer_group():
    s = parse_sweep(sweep_manifest(batchSizes=[2, 4, 8], seeds=1, trialsPerGPU=2))
    assert s.trials_per_gpu == 2 and parse_sweep(sweep_manifest()).trials_per_gpu == 1
    pod = (TrialKey(2, 0), TrialKey(4, 0))
    f = _flags(trainer_args(s, pod, metrics_port=9100, checkpoint_dir="/ck"))
    assert f["--trials"] == "2:0,4:0" and "--batch-size" not in f and "--seed" not in f
    one = _flags(trainer_args(s, (TrialKey(8, 0),), metrics_port=9100, checkpoint_dir="/ck"))
    assert (one["--batch-size"], one["--seed"]) == ("8", "0") and "--trials" not in one


def test_a_range_expands_to_powers_of_its_factor():
    body = sweep_manifest(batchSizeRange={"min": 8, "max": 256, "factor": 2})
    del body["spec"]["batchSizes"]
    assert parse_sweep(body).batch_sizes == (8, 16, 32, 64, 128, 256)
    body["spec"]["batchSizeRange"] = {"min": 3, "max": 100, "factor": 3}
    assert parse_sweep(body).batch_sizes == (3, 9, 27, 81)


@pytest.mark.parametrize(("model", "opt", "g", "d", "betas"), [
    ("dcgan", "adabelief", 3e-4, 3e-5, (0.5, 0.999, 1e-16)),
    ("wgan-gp", "rmsprop", 3e-4, 1e-4, (0.0, 0.99, 1e-8)),
    ("biggan", "adam", 1e-4, 4e-4, (0.0, 0.999, 1e-6)),
])
def test_optimizer_defaults_follow_the_papers_table(model, opt, g, d, betas):
    gen, disc = optimizer_defaults(model, opt)
    assert (gen.learning_rate, disc.learning_rate) == (g, d)
    assert (gen.beta1, gen.beta2, gen.eps) == betas


def test_explicit_optimizer_values_override_defaults_side_by_side():
    s = parse_sweep(sweep_manifest(optimizer={"name": "adam", "generator": {"learningRate": 2e-4},
                                        "discriminator": {"beta1": 0.0}}))
    assert s.optimizer.generator.learning_rate == 2e-4
    assert s.optimizer.discriminator.learning_rate == 1e-3  # the digits demo's default
    assert s.optimizer.discriminator.beta1 == 0.0 and s.optimizer.generator.beta1 == 0.5
    setting = s.optimizer.setting()
    assert (setting.optimizer, setting.lr, setting.beta1) == ("adam", 2e-4, 0.5)


# ---------------------------------------------------------------------------------------------
# The spec, the vocabulary and the CRD agree by construction
# ---------------------------------------------------------------------------------------------


def _with_dataset(name: str) -> dict:
    """The base sweep on dataset `name`, with the path and Inception weights a real one needs."""
    if name in EMBEDDED_DATASETS:
        return sweep_manifest(trainer={"dataset": {"name": name}})
    return sweep_manifest(trainer={"dataset": {"name": name, "path": "/data"},
                                   "inception": {"file": "/weights/inception.pth"}})


def _accepted(values: tuple[str, ...], body_of, field: str, *, outsider: str) -> None:
    for value in values:
        parse_sweep(body_of(value))
    with pytest.raises(SpecError, match=rf"^{field}: must be one of {', '.join(values)}, "):
        parse_sweep(body_of(outsider))


def test_the_parser_accepts_exactly_the_vocabularys_models_datasets_devices_optimizers():
    _accepted(MODELS, lambda m: sweep_manifest(trainer={"model": m}), r"spec\.trainer\.model",
              outsider="stylegan")
    _accepted(DATASETS, _with_dataset, r"spec\.trainer\.dataset\.name", outsider="cifar10")
    _accepted(DEVICES, lambda d: sweep_manifest(trainer={"device": d}), r"spec\.trainer\.device",
              outsider="tpu")
    _accepted(OPTIMIZERS, lambda o: sweep_manifest(optimizer={"name": o}), r"spec\.optimizer\.name",
              outsider="sgd")
    _accepted(tuple(MetricsSource), lambda v: sweep_manifest(metrics={"source": v}),
              r"spec\.metrics\.source", outsider="pushgateway")
    parse_sweep(sweep_manifest(trialsPerGPU=MAX_TRIALS_PER_GROUP))
    with pytest.raises(SpecError, match=r"^spec\.trialsPerGPU: must be <= "):
        parse_sweep(sweep_manifest(trialsPerGPU=MAX_TRIALS_PER_GROUP + 1))


def test_the_crds_enums_are_the_vocabularys():
    spec = openapi_schema()["properties"]["spec"]["properties"]
    trainer = spec["trainer"]["properties"]
    target = spec["estimate"]["properties"]["targets"]["items"]["properties"]
    assert trainer["model"]["enum"] == list(MODELS)
    assert trainer["dataset"]["properties"]["name"]["enum"] == list(DATASETS)
    assert trainer["device"]["enum"] == list(DEVICES)
    assert spec["optimizer"]["properties"]["name"]["enum"] == list(OPTIMIZERS)
    assert target["optimizer"]["enum"] == list(OPTIMIZERS)
    assert spec["metrics"]["properties"]["source"]["enum"] == list(MetricsSource)
    assert spec["strategy"]["properties"]["type"]["enum"] == list(StrategyType)
    assert spec["trialsPerGPU"]["maximum"] == MAX_TRIALS_PER_GROUP


@pytest.mark.parametrize("dataset", EMBEDDED_DATASETS)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_sweep_without_optimizer_values_runs_what_the_trainer_would_on_its_own(
        model, optimizer, dataset):
    """The spec passes every optimizer value; the trainer, given none, must pick the same."""
    config = pytest.importorskip("critbatch_trainer.config")
    parse = getattr(config, "parse_args", None) or getattr(config, "parse", None)
    if parse is None:
        pytest.skip("the trainer exposes no argv parser")
    s = parse_sweep(_sweep_of(model, dataset, optimizer))
    args = trainer_args(s, TrialKey(2, 0), metrics_port=0, checkpoint_dir=None)
    flags = _flags(args)
    own = [a for k, v in flags.items() if not k.startswith(("--lr-", "--beta", "--eps-"))
           for a in (k, v)]
    cfg = parse(own)
    cfg = cfg[0] if isinstance(cfg, tuple) else cfg
    g, d = s.optimizer.generator, s.optimizer.discriminator
    assert (cfg.lr_g, cfg.beta1_g, cfg.beta2_g, cfg.eps_g) == (
        g.learning_rate, g.beta1, g.beta2, g.eps)
    assert (cfg.lr_d, cfg.beta1_d, cfg.beta2_d, cfg.eps_d) == (
        d.learning_rate, d.beta1, d.beta2, d.eps)


# Bad input: each is rejected with a message starting with the offending field's path.
INVALID = [
    ("spec.batchSizes[1]", sweep_manifest(batchSizes=[2, -4])),
    ("spec.batchSizes[2]", sweep_manifest(batchSizes=[2, 4, 2])),
    ("spec.batchSizes[1]", sweep_manifest(batchSizes=[2, 4096])),  # digits has 1797 examples
    ("spec.batchSizes[0]", sweep_manifest(batchSizes=[1.5])),
    ("spec.batchSizes[1]", sweep_manifest(batchSizes=[2, float("inf")])),
    ("spec.batchSizes[0]", sweep_manifest(batchSizes=[float("nan")])),
    ("spec.seeds", sweep_manifest(seeds=float("inf"))),
    ("spec.target.maxSteps", sweep_manifest(target={"threshold": 50, "maxSteps": float("nan")})),
    ("spec.batchSizes", sweep_manifest(batchSizes=[])),
    ("spec.batchSizes", sweep_manifest(batchSizeRange={"min": 2, "max": 8})),
    ("spec.batchSizeRange.max", {**sweep_manifest(), "spec": {
        **{k: v for k, v in BASE["spec"].items() if k != "batchSizes"},
        "batchSizeRange": {"min": 2, "max": 4096}}}),
    ("spec.target.fidThreshold", sweep_manifest(target={"fidThreshold": 0, "maxSteps": 10})),
    ("spec.target.threshold", sweep_manifest(target={"threshold": 0, "maxSteps": 10})),
    ("spec.target.threshold", sweep_manifest(target={"threshold": float("inf"), "maxSteps": 10})),
    ("spec.target.threshold", sweep_manifest(target={"threshold": "50", "maxSteps": 10})),
    ("spec.target.threshold", sweep_manifest(target={"maxSteps": 10})),
    ("spec.target.fidThreshold", sweep_manifest(target={"threshold": 5, "fidThreshold": 5,
                                                        "maxSteps": 10})),
    ("spec.target.metric", sweep_manifest(target={"metric": "loss", "threshold": 5,
                                                  "maxSteps": 10})),
    ("spec.target.goal", sweep_manifest(target={"goal": "maximize", "threshold": 5,
                                                "maxSteps": 10})),
    ("spec.target.maxSteps", sweep_manifest(target={"threshold": 5})),
    ("spec.target.evalEvery", sweep_manifest(target={"threshold": 5, "maxSteps": 10,
                                               "evalEvery": 11})),
    ("spec.trainer.model", sweep_manifest(trainer={"model": "stylegan"})),
    ("spec.trainer.image", sweep_manifest(trainer={"image": ""})),
    ("spec.trainer.imageSize", sweep_manifest(trainer={"model": "biggan", "imageSize": 256})),
    ("spec.trainer.imageSize", sweep_manifest(trainer={"imageSize": 48})),
    ("spec.trainer.dataset", sweep_manifest(trainer={"dataset": {"name": "celeba"}})),
    ("spec.trainer.inception",
     sweep_manifest(trainer={"dataset": {"name": "lsun", "pvc": "lsun"}})),
    ("spec.trainer.inception.file",
     sweep_manifest(trainer={"dataset": {"name": "lsun", "pvc": "lsun"},
                             "inception": {"file": "pt_inception.pth"}})),
    ("spec.trainer.inception.file",
     sweep_manifest(trainer={"dataset": {"name": "lsun", "pvc": "lsun"},
                             "inception": {"pvc": "w", "file": "../x.pth"}})),
    ("spec.batchSizes[3]", sweep_manifest(trainer={"dataset": {"name": "faces", "size": 12}})),
    ("spec.optimizer.name", sweep_manifest(optimizer={"name": "sgd"})),
    ("spec.optimizer.generator.beta2", sweep_manifest(optimizer={"generator": {"beta2": 1.0}})),
    ("spec.optimizer.discriminator.learningRate",
     sweep_manifest(optimizer={"discriminator": {"learningRate": -1}})),
    ("spec.optimizer.generator.momentum",
     sweep_manifest(optimizer={"generator": {"momentum": 0.9}})),
    ("spec.parallelism", sweep_manifest(parallelism=0)),
    ("spec.trialsPerGPU", sweep_manifest(trialsPerGPU=9)),
    ("spec.trainer.cudaGraph",
     sweep_manifest(trainer={"cudaGraph": True}, optimizer={"name": "adabelief"})),
    ("spec.trainer.microBatch", sweep_manifest(trainer={"microBatch": 8})),
    ("spec.trainer.microBatch", sweep_manifest(trainer={"model": "wgan-gp", "microBatch": 0})),
    ("spec.trainer.recomputeActivations", sweep_manifest(trainer={"recomputeActivations": True})),
    ("spec.trainer.recomputeActivations",
     sweep_manifest(trainer={"model": "biggan", "recomputeActivations": 1})),
    ("spec.trainer.fusedAttention", sweep_manifest(trainer={"fusedAttention": True})),
    ("spec.trainer.fusedAttention",
     sweep_manifest(trainer={"model": "biggan", "fusedAttention": "yes"})),
    ("spec.trainer.bf16", sweep_manifest(trainer={"bf16": "yes"})),
    ("spec.trainer.reproducibleCPU", sweep_manifest(trainer={"reproducibleCPU": "yes"})),
    ("spec.trainer.width", sweep_manifest(trainer={"width": 0})),
    ("spec.trainer.zDim", sweep_manifest(trainer={"zDim": 2048})),
    ("spec.trainer.zDim",
     sweep_manifest(trainer={"model": "biggan", "imageSize": 128, "zDim": 100})),
    ("spec.trainer.zDim",
     sweep_manifest(trainer={"model": "biggan", "dataset": {"name": "faces"}, "zDim": 30})),
    ("spec.trainer.emaStart", sweep_manifest(trainer={"emaStart": 20000})),
    ("spec.trainer.emaStart", sweep_manifest(trainer={"model": "biggan", "emaStart": -1})),
    ("spec.trialsPerGPU", sweep_manifest(trialsPerGPU=2, trainer={"gpus": 2})),
    ("spec.seeds", sweep_manifest(seeds="two")),
    ("spec.reference", sweep_manifest(reference={"sweep": "a", "noiseRatio": 3.0})),
    ("spec.reference", sweep_manifest(reference={})),
    ("spec.metrics.prometheusURL", sweep_manifest(metrics={"prometheusURL": "ftp://x"})),
    ("spec.estimate.targets[0].learningRate",
     sweep_manifest(estimate={"targets": [{"optimizer": "rmsprop"}]})),
    ("spec.estimate.targets[1].optimizer",
     sweep_manifest(estimate={"targets": [{"optimizer": "adam", "learningRate": 1e-4},
                                    {"optimizer": "lion", "learningRate": 1e-4}]})),
    ("spec.queueName", sweep_manifest(queueName="Not_A_Queue")),
    ("spec.pruning.sfoBound", sweep_manifest(pruning={"sfoBound": "yes"})),
    ("spec.trainer.podTemplate.volumeMounts[0].mountPath",
     sweep_manifest(trainer={"podTemplate": {"volumeMounts": [{"name": "x"}]}})),
    ("spec.trainer.podTemplate.volumeMounts[0].mountPath",
     sweep_manifest(trainer={"podTemplate": {"volumeMounts": [{"name": "x",
                                                               "mountPath": "/tmp/"}]}})),
    ("spec.trainer.podTemplate.volumes[1].name",
     sweep_manifest(trainer={"podTemplate": {"volumes": [
         {"name": "x", "emptyDir": {}}, {"name": "scratch", "emptyDir": {}}]}})),
    ("spec.trainer.checkpoints.pvc",
     sweep_manifest(trainer={"checkpoints": {"pvc": "Checkpoints_1"}})),
    ("spec.trainer.checkpoints.pvc", sweep_manifest(trainer={"checkpoints": {"pvc": "ckpt..a"}})),
    ("spec.trainer.checkpoints.pvc", sweep_manifest(trainer={"checkpoints": {"pvc": "c" * 254}})),
    ("spec.trainer.checkpoints.pvc", sweep_manifest(trainer={"checkpoints": {}})),
    ("spec.trainer.checkpoints.every",
     sweep_manifest(trainer={"checkpoints": {"pvc": "ckpt", "every": 5}})),
    ("spec.trainer.resources.limits.nvidia.com/gpu",
     sweep_manifest(trainer={"resources": {"limits": {"nvidia.com/gpu": True}}})),
    ("metadata.name", {**sweep_manifest(), "metadata": {"name": "Bad_Name"}}),
    ("apiVersion", {**sweep_manifest(), "apiVersion": "critbatch.dev/v1"}),
    ("kind", {**sweep_manifest(), "kind": "Sweep"}),
    ("spec", {k: v for k, v in sweep_manifest().items() if k != "spec"}),
]


@pytest.mark.parametrize(("field", "body"), INVALID, ids=[f"{i}-{f}" for i, (f, _) in
                                                          enumerate(INVALID)])
def test_invalid_specs_are_rejected_with_the_field_named(field, body):
    with pytest.raises(SpecError) as exc:
        parse_sweep(body)
    assert isinstance(exc.value, InputError)
    assert str(exc.value).startswith(field + ":"), str(exc.value)


def test_non_mapping_input_is_an_error_not_a_crash():
    with pytest.raises(SpecError, match="manifest: must be a mapping"):
        parse_sweep(["not", "a", "mapping"])
    body = sweep_manifest()
    body["spec"]["trainer"] = "image:1"
    with pytest.raises(SpecError, match=r"spec\.trainer: must be a mapping"):
        parse_sweep(body)


def test_a_dataset_size_allows_what_the_builtin_would_not():
    body = sweep_manifest(trainer={"dataset": {"name": "imagefolder", "path": "/data/x",
                                               "size": 5000},
                                   "inception": {"file": "/weights/inception.pth"}})
    body["spec"]["batchSizes"] = [2048, 4096]
    s = parse_sweep(body)
    assert s.trainer.dataset.known_size == 5000 and s.batch_sizes == (2048, 4096)


def test_persistent_checkpoints_name_a_claim_and_default_to_none():
    assert parse_sweep(sweep_manifest()).trainer.checkpoints is None
    s = parse_sweep(sweep_manifest(trainer={"checkpoints": {"pvc": "sweep-checkpoints.fast"}}))
    assert s.trainer.checkpoints.pvc == "sweep-checkpoints.fast"
    assert s.trainer.checkpoint_every == 0  # the period stays checkpointEvery's


def test_a_resumable_trial_checkpoints_at_least_once_per_evaluation():
    assert resume_checkpoint_every(parse_sweep(sweep_manifest())) == 10  # evalEvery
    assert resume_checkpoint_every(parse_sweep(sweep_manifest(trainer={"checkpointEvery": 7}))) == 7
    body = sweep_manifest(target={"threshold": 50, "maxSteps": 4000})
    assert resume_checkpoint_every(parse_sweep(body)) == 20  # the trainer's interval on digits
    body["spec"]["trainer"] = {"dataset": {"name": "faces"}}
    assert resume_checkpoint_every(parse_sweep(body)) == 100  # ... and elsewhere


# ---------------------------------------------------------------------------------------------
# trainer_args
# ---------------------------------------------------------------------------------------------


def _flags(args: list[str]) -> dict[str, str]:
    assert all(a.startswith("--") for a in args[::2]), args
    return dict(zip(args[::2], args[1::2], strict=True))


def test_trainer_args_are_a_flat_flag_value_list_with_every_resolved_setting():
    s = parse_sweep(sweep_manifest(optimizer={"name": "rmsprop"}))
    args = trainer_args(s, TrialKey(8, 1), metrics_port=9100, checkpoint_dir="/ck",
                        termination_log="/dev/termination-log")
    f = _flags(args)
    assert f["--sweep"] == "demo" and f["--batch-size"] == "8" and f["--seed"] == "1"
    assert f["--optimizer"] == "rmsprop"
    assert float(f["--lr-g"]) == 1e-4 and float(f["--lr-d"]) == 3e-5
    assert float(f["--beta2-g"]) == 0.99 and float(f["--beta1-g"]) == 0.0
    assert float(f["--fid-threshold"]) == 50 and f["--max-steps"] == "4000"
    assert f["--eval-every"] == "10" and "--eval-samples" not in f
    assert f["--metrics-port"] == "9100" and f["--linger"] == "30"
    assert f["--checkpoint-dir"] == "/ck" and f["--termination-log"] == "/dev/termination-log"
    assert f["--dataset"] == "digits" and "--data-path" not in f
    assert f["--device"] == "auto"


def test_no_metrics_port_means_no_linger_and_overrides_win():
    body = sweep_manifest(trainer={"dataset": {"name": "lsun", "path": "/mnt/lsun"},
                                   "inception": {"file": "/w/inception.pth"},
                                   "checkpointEvery": 500})
    s = parse_sweep(body)
    f = _flags(trainer_args(s, TrialKey(2, 0), metrics_port=0, checkpoint_dir="/c"))
    assert "--linger" not in f and "--termination-log" not in f
    assert f["--data-path"] == "/mnt/lsun" and f["--extractor"] == "inception:/w/inception.pth"
    assert f["--checkpoint-every"] == "500"
    f = _flags(trainer_args(s, TrialKey(2, 0), metrics_port=9, checkpoint_dir=None,
                            data_path="/data", extractor="inception:/i/w.pth", linger=0))
    assert f["--data-path"] == "/data" and f["--extractor"] == "inception:/i/w.pth"
    assert "--linger" not in f and "--checkpoint-dir" not in f


def test_trainer_args_round_trip_through_the_trainers_parser():
    """The argv parses with the trainer's own config parser when the trainer is installed."""
    config = pytest.importorskip("critbatch_trainer.config")
    parse = getattr(config, "parse_args", None) or getattr(config, "parse", None)
    if parse is None:
        pytest.skip("the trainer exposes no argv parser")
    s = parse_sweep(sweep_manifest())
    cfg = parse(trainer_args(s, TrialKey(4, 1), metrics_port=9100, checkpoint_dir="/ck"))
    cfg = cfg[0] if isinstance(cfg, tuple) else cfg
    assert cfg.batch_size == 4 and cfg.seed == 1 and cfg.sweep == "demo"
    assert cfg.lr_g == 1e-3 and cfg.max_steps == 4000
    s = parse_sweep(sweep_manifest(trainer={"model": "biggan", "dataset": {"name": "faces"},
                                            "width": 8, "zDim": 64, "emaStart": 5}))
    cfg = parse(trainer_args(s, TrialKey(4, 1), metrics_port=0, checkpoint_dir=None))
    cfg = cfg[0] if isinstance(cfg, tuple) else cfg
    assert (cfg.width, cfg.z_dim, cfg.ema_start) == (8, 64, 5)
