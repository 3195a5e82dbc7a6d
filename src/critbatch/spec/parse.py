"""`parse_sweep`: a CriticalBatchSweep manifest as a defaulted, validated `Sweep`.

The CRD's schema is the contract; `parse_sweep` applies the same defaults and checks the same
rules (so the local runner, which has no API server, rejects what the cluster would), plus the
checks a schema cannot make: batch sizes larger than a known dataset, optimizer settings the
trainer cannot take. Every error names the field, e.g. ``spec.batchSizes[2]: must be positive``.

A sweep either trains the built-in GAN (its model, optimizer and FID target) or runs the user's
own `spec.trainer.command`, which speaks the trial protocol (docs/trial-protocol.md) and may
target any metric it reports; the built-in trainer's fields are errors with a command.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from critbatch.protocol import DEFAULT_METRIC, METRIC_NAME
from critbatch.science import ScienceError
from critbatch.spec.fields import (
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    SpecError,
    bool_field,
    check_known,
    field_error,
    finite_float_field,
    int_field,
    is_integer,
    list_field,
    mapping_field,
    str_field,
)
from critbatch.spec.model import (
    API_VERSION,
    DEFAULT_CONFIDENCE,
    KIND,
    MAX_BATCH,
    EstimateTarget,
    Metrics,
    MetricsSource,
    Optimizer,
    Pruning,
    Reference,
    Strategy,
    StrategyType,
    Sweep,
    Target,
    Trainer,
)
from critbatch.spec.parse_trainer import parse_trainer
from critbatch.vocabulary import (
    MAX_TRIALS_PER_GROUP,
    OPTIMIZERS,
    Goal,
    OptimizerSide,
    cuda_graph_problem,
    optimizer_defaults,
)

_URL = re.compile(r"^https?://\S+$")
_SPEC_FIELDS = (
    "trainer", "optimizer", "batchSizes", "batchSizeRange", "seeds", "target",
    "parallelism", "trialsPerGPU", "pruning", "estimate", "reference", "metrics",
    "queueName", "strategy",
)


def parse_sweep(manifest: Mapping[str, Any]) -> Sweep:
    """A full CriticalBatchSweep manifest (as loaded from YAML) as a validated `Sweep`."""
    if not isinstance(manifest, Mapping):
        raise SpecError(f"manifest: must be a mapping, got {type(manifest).__name__}")
    name, namespace, generation, uid = _parse_metadata(manifest)
    if "spec" not in manifest:
        raise field_error("spec", "required")
    spec = mapping_field(manifest["spec"], "spec")
    check_known(spec, "spec", _SPEC_FIELDS)
    trainer = parse_trainer(spec.get("trainer") if "trainer" in spec else {})
    dataset = trainer.dataset.name
    if not trainer.custom:
        optimizer = _parse_optimizer(spec.get("optimizer"), trainer.model, dataset)
        if trainer.cuda_graph and (problem := cuda_graph_problem(optimizer.name)):
            raise field_error("spec.trainer.cudaGraph", problem)
    elif spec.get("optimizer") is not None:
        raise field_error("spec.optimizer", "applies only to the built-in trainer "
                                            "(spec.trainer.command is set)")
    else:
        optimizer = None
    target = _parse_target(spec.get("target"), custom=trainer.custom)
    batch_sizes = _parse_batch_sizes(spec)
    _check_batch_sizes(spec, batch_sizes, trainer)
    pruning = mapping_field(spec.get("pruning"), "spec.pruning", default={})
    check_known(pruning, "spec.pruning", ("sfoBound",))
    sfo_bound = bool_field(pruning, "sfoBound", "spec.pruning", default=True)
    per_gpu = int_field(spec, "trialsPerGPU", "spec", default=1, lo=1, hi=MAX_TRIALS_PER_GROUP)
    if per_gpu > 1 and trainer.gpus > 1:
        raise field_error("spec.trialsPerGPU", f"must be 1 when spec.trainer.gpus is "
                                               f"{trainer.gpus} (trials share one GPU)")
    for key, value in (("nodes", trainer.nodes), ("processes", trainer.processes or 1)):
        if per_gpu > 1 and value > 1:
            raise field_error("spec.trialsPerGPU", f"must be 1 when spec.trainer.{key} is "
                                                   f"{value} (trials that share a GPU run as "
                                                   "one process each)")
    if per_gpu > 1 and trainer.custom:
        raise field_error("spec.trialsPerGPU", "must be 1 with spec.trainer.command (a custom "
                                               "trainer runs one trial per pod)")
    queue = str_field(spec, "queueName", "spec", max_len=63)
    if queue and not DNS1123_SUBDOMAIN.match(queue):
        raise field_error("spec.queueName", f"must be a LocalQueue's name, got {queue!r}")
    seeds = int_field(spec, "seeds", "spec", default=1, lo=1, hi=32)
    return Sweep(
        name=name,
        namespace=namespace,
        generation=generation,
        uid=uid,
        trainer=trainer,
        optimizer=optimizer,
        batch_sizes=batch_sizes,
        seeds=seeds,
        target=target,
        parallelism=int_field(spec, "parallelism", "spec", default=4, lo=1, hi=256),
        pruning=Pruning(sfo_bound),
        estimate=_parse_estimate(spec.get("estimate"), None if trainer.custom else
                                 (trainer.model, dataset)),
        reference=_parse_reference(spec.get("reference")),
        metrics=_parse_metrics(spec.get("metrics")),
        queue_name=queue or None,
        trials_per_gpu=per_gpu,
        strategy=_parse_strategy(spec.get("strategy"), len(batch_sizes) * seeds),
    )


def _parse_metadata(manifest: Mapping[str, Any]) -> tuple[str, str, int, str | None]:
    api = manifest.get("apiVersion")
    if api != API_VERSION:
        raise field_error("apiVersion", f"must be {API_VERSION}, got {api!r}")
    if manifest.get("kind") != KIND:
        raise field_error("kind", f"must be {KIND}, got {manifest.get('kind')!r}")
    meta = mapping_field(manifest.get("metadata"), "metadata", default={})
    name = str_field(meta, "name", "metadata", required=True)
    if not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
        raise field_error("metadata.name", f"must be a DNS-1123 subdomain, got {name!r}")
    namespace = str_field(meta, "namespace", "metadata", default="default")
    if not DNS1123_LABEL.match(namespace) or len(namespace) > 63:
        raise field_error("metadata.namespace", f"must be a DNS-1123 label, got {namespace!r}")
    generation = int_field(meta, "generation", "metadata", default=1, lo=0)
    uid = meta.get("uid")
    return name, namespace, generation, uid if isinstance(uid, str) else None


def _parse_optimizer(raw: Any, model: str, dataset: str) -> Optimizer:
    """The optimizer with each unset value the trainer's own default for this model, optimizer
    and dataset, so the spec states exactly what the trial runs."""
    path = "spec.optimizer"
    o = mapping_field(raw, path, default={})
    check_known(o, path, ("name", "generator", "discriminator"))
    name = str_field(o, "name", path, default="adam", choices=OPTIMIZERS)
    sides = []
    for side, fallback in zip(("generator", "discriminator"),
                              optimizer_defaults(model, name, dataset), strict=True):
        sp = f"{path}.{side}"
        s = mapping_field(o.get(side), sp, default={})
        check_known(s, sp, ("learningRate", "beta1", "beta2", "eps"))
        lr = finite_float_field(s, "learningRate", sp, gt=0, le=1)
        beta1 = finite_float_field(s, "beta1", sp, ge=0, lt=1)
        beta2 = finite_float_field(s, "beta2", sp, ge=0, lt=1)
        eps = finite_float_field(s, "eps", sp, gt=0, le=1)
        sides.append(OptimizerSide(
            lr if lr is not None else fallback.learning_rate,
            beta1 if beta1 is not None else fallback.beta1,
            beta2 if beta2 is not None else fallback.beta2,
            eps if eps is not None else fallback.eps,
        ))
    return Optimizer(name=name, generator=sides[0], discriminator=sides[1])


def _parse_batch_sizes(spec: Mapping[str, Any]) -> tuple[int, ...]:
    has_list = spec.get("batchSizes") is not None
    has_range = spec.get("batchSizeRange") is not None
    if has_list == has_range:
        raise field_error("spec.batchSizes",
                          "set exactly one of spec.batchSizes and spec.batchSizeRange")
    if has_list:
        raw = spec["batchSizes"]
        if not isinstance(raw, list) or not raw:
            raise field_error("spec.batchSizes", "must be a non-empty list of integers")
        if len(raw) > 64:
            raise field_error("spec.batchSizes", f"at most 64 batch sizes, got {len(raw)}")
        seen: set[int] = set()
        for i, v in enumerate(raw):
            p = f"spec.batchSizes[{i}]"
            if not is_integer(v):
                raise field_error(p, f"must be an integer, got {v!r}")
            if v <= 0:
                raise field_error(p, f"must be positive, got {v}")
            if v > MAX_BATCH:
                raise field_error(p, f"must be <= {MAX_BATCH}, got {v}")
            if int(v) in seen:
                raise field_error(p, f"duplicate batch size {int(v)}")
            seen.add(int(v))
        return tuple(int(v) for v in raw)
    path = "spec.batchSizeRange"
    r = mapping_field(spec["batchSizeRange"], path)
    check_known(r, path, ("min", "max", "factor"))
    lo = int_field(r, "min", path, required=True, lo=1, hi=MAX_BATCH)
    hi = int_field(r, "max", path, required=True, lo=1, hi=MAX_BATCH)
    factor = int_field(r, "factor", path, default=2, lo=2, hi=16)
    if lo > hi:
        raise field_error(f"{path}.max", f"must be >= min ({lo}), got {hi}")
    out = []
    b = lo
    while b <= hi:
        out.append(b)
        b *= factor
    if len(out) > 64:
        raise field_error(path, f"at most 64 batch sizes, got {len(out)}")
    return tuple(out)


def _check_batch_sizes(spec: Mapping[str, Any], batch_sizes: tuple[int, ...],
                       trainer: Trainer) -> None:
    """What the trainer makes of each batch size: at most a known dataset's size, and split
    evenly over a data-parallel trial's worker processes, each of which trains on b / world."""
    size, world = trainer.dataset.known_size, trainer.world_size
    from_range = spec.get("batchSizes") is None
    for i, b in enumerate(batch_sizes):
        if size is not None and b > size:
            raise field_error("spec.batchSizeRange.max" if from_range else f"spec.batchSizes[{i}]",
                              f"batch size {b} exceeds the {trainer.dataset.name} dataset's "
                              f"{size} training examples")
    for i, b in enumerate(batch_sizes):
        if b % world:
            raise field_error("spec.batchSizeRange.min" if from_range else f"spec.batchSizes[{i}]",
                              f"{b} is not divisible by {world} worker processes "
                              "(spec.trainer.nodes x processes per node)")


def _parse_target(raw: Any, *, custom: bool) -> Target:
    """The target, `fidThreshold` read as the v1alpha1 name of `threshold` (FID only)."""
    path = "spec.target"
    t = mapping_field(raw, path)
    check_known(t, path, ("metric", "threshold", "fidThreshold", "goal", "evalEvery",
                          "evalSamples", "maxSteps"))
    metric = str_field(t, "metric", path, default=DEFAULT_METRIC, max_len=63)
    if not METRIC_NAME.fullmatch(metric):
        raise field_error(f"{path}.metric", "must be a name of letters, digits and _ . : - "
                                            f"that starts with a letter or _, got {metric!r}")
    goal = Goal(str_field(t, "goal", path, default=Goal.minimize, choices=tuple(Goal)))
    if not custom and metric != DEFAULT_METRIC:
        raise field_error(f"{path}.metric", f"the built-in trainer measures {DEFAULT_METRIC} "
                                            f"only, got {metric!r}; another metric needs a "
                                            "custom trainer (spec.trainer.command)")
    if not custom and goal is not Goal.minimize:
        raise field_error(f"{path}.goal", f"the built-in trainer minimizes {DEFAULT_METRIC}; "
                                          f"{goal} needs a custom trainer (spec.trainer.command)")
    threshold = finite_float_field(t, "threshold", path)
    if t.get("fidThreshold") is not None:
        if threshold is not None:
            raise field_error(f"{path}.fidThreshold", "the older name of spec.target.threshold: "
                                                      "keep threshold and remove fidThreshold")
        if metric != DEFAULT_METRIC:
            raise field_error(f"{path}.fidThreshold", f"only for metric {DEFAULT_METRIC}; set "
                                                      "spec.target.threshold")
        threshold = finite_float_field(t, "fidThreshold", path, gt=0)
    elif threshold is None:
        raise field_error(f"{path}.threshold", "required (spec.target.fidThreshold is its "
                                               "older name)")
    elif metric == DEFAULT_METRIC and threshold <= 0:
        raise field_error(f"{path}.threshold", f"must be > 0 for metric {DEFAULT_METRIC}, "
                                               f"got {threshold:g}")
    target = Target(
        threshold=threshold,
        max_steps=int_field(t, "maxSteps", path, required=True, lo=1),
        metric=metric,
        goal=goal,
        eval_every=int_field(t, "evalEvery", path, lo=1),
        eval_samples=int_field(t, "evalSamples", path, lo=2, hi=1_000_000),
    )
    if custom and target.eval_samples is not None:
        raise field_error(f"{path}.evalSamples", "applies only to the built-in trainer "
                                                 "(spec.trainer.command is set)")
    if target.eval_every is not None and target.eval_every > target.max_steps:
        raise field_error(f"{path}.evalEvery",
                          f"must not exceed spec.target.maxSteps ({target.max_steps}), "
                          f"got {target.eval_every}")
    return target


def _parse_strategy(raw: Any, trials: int) -> Strategy:
    path = "spec.strategy"
    s = mapping_field(raw, path, default={})
    check_known(s, path, ("type", "confidence", "maxTrials"))
    kind = StrategyType(str_field(s, "type", path, default=StrategyType.grid,
                                  choices=tuple(StrategyType)))
    confidence = finite_float_field(s, "confidence", path, gt=0.5, lt=1)
    max_trials = int_field(s, "maxTrials", path, lo=1, hi=4096)
    if max_trials is not None and kind is not StrategyType.adaptive:
        raise field_error(f"{path}.maxTrials", "only with type adaptive (a grid runs every trial)")
    return Strategy(
        type=kind,
        confidence=DEFAULT_CONFIDENCE[kind] if confidence is None else confidence,
        max_trials=None if max_trials is None else min(max_trials, trials),
    )


def _parse_estimate(raw: Any, builtin: tuple[str, str] | None) -> tuple[EstimateTarget, ...]:
    """The estimate targets; unset betas are the built-in trainer's (`builtin`: its model and
    dataset), and required with a custom trainer, which has no defaults to fall back on."""
    path = "spec.estimate"
    e = mapping_field(raw, path, default={})
    check_known(e, path, ("targets",))
    targets = list_field(e.get("targets"), f"{path}.targets")
    if len(targets) > 32:
        raise field_error(f"{path}.targets", f"at most 32 targets, got {len(targets)}")
    out = []
    for i, item in enumerate(targets):
        p = f"{path}.targets[{i}]"
        t = mapping_field(item, p)
        check_known(t, p, ("name", "optimizer", "learningRate", "beta1", "beta2", "datasetSize",
                           "generatorParams"))
        opt = str_field(t, "optimizer", p, required=True, choices=OPTIMIZERS)
        lr = finite_float_field(t, "learningRate", p, required=True, gt=0, le=1)
        betas = [finite_float_field(t, k, p, ge=0, lt=1) for k in ("beta1", "beta2")]
        if builtin is not None:
            g = optimizer_defaults(builtin[0], opt, builtin[1])[0]
            betas = [d if b is None else b for b, d in zip(betas, (g.beta1, g.beta2), strict=True)]
        for key, beta in zip(("beta1", "beta2"), betas, strict=True):
            if beta is None:
                raise field_error(f"{p}.{key}", "required with spec.trainer.command (there are "
                                                "no model defaults to fall back on)")
        target = EstimateTarget(
            optimizer=opt,
            learning_rate=lr,
            beta1=betas[0],
            beta2=betas[1],
            name=str_field(t, "name", p, max_len=63),
            dataset_size=int_field(t, "datasetSize", p, lo=1),
            generator_params=int_field(t, "generatorParams", p, lo=1),
        )
        try:
            target.setting()
        except ScienceError as exc:
            raise field_error(p, str(exc)) from None
        out.append(target)
    return tuple(out)


def _parse_reference(raw: Any) -> Reference | None:
    if raw is None:
        return None
    path = "spec.reference"
    r = mapping_field(raw, path)
    check_known(r, path, ("sweep", "noiseRatio", "generatorParams", "datasetSize"))
    ref = Reference(
        sweep=str_field(r, "sweep", path, max_len=253),
        noise_ratio=finite_float_field(r, "noiseRatio", path, gt=0),
        generator_params=int_field(r, "generatorParams", path, lo=1),
        dataset_size=int_field(r, "datasetSize", path, lo=1),
    )
    if (ref.sweep is None) == (ref.noise_ratio is None):
        raise field_error(path, "set exactly one of sweep and noiseRatio")
    if ref.sweep is not None and not DNS1123_SUBDOMAIN.match(ref.sweep):
        raise field_error(f"{path}.sweep", f"must be a sweep's name, got {ref.sweep!r}")
    return ref


def _parse_metrics(raw: Any) -> Metrics:
    path = "spec.metrics"
    m = mapping_field(raw, path, default={})
    check_known(m, path, ("source", "prometheusURL", "lingerSeconds"))
    url = str_field(m, "prometheusURL", path, max_len=2048)
    if url is not None and not _URL.match(url):
        raise field_error(f"{path}.prometheusURL", f"must be an http(s) URL, got {url!r}")
    return Metrics(
        source=MetricsSource(str_field(m, "source", path, default=MetricsSource.auto,
                                       choices=tuple(MetricsSource))),
        prometheus_url=url,
        linger_seconds=int_field(m, "lingerSeconds", path, default=30, lo=0, hi=3600),
    )
