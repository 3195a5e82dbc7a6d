"""What a trial process is told: the built-in trainer's command line, as an argument list
(docs/contracts.md), and the trial protocol's environment, which every trainer gets."""

from __future__ import annotations

from collections.abc import Sequence

from critbatch.protocol import TrialSettings
from critbatch.spec import Sweep, evaluation_interval
from critbatch.vocabulary import TrialKey, trials_text


def _fmt(x: float) -> str:
    """Shortest text that reads back as the same float."""
    return repr(float(x))


def trainer_args(
    sweep: Sweep,
    key: TrialKey | Sequence[TrialKey],
    *,
    metrics_port: int,
    checkpoint_dir: str | None,
    termination_log: str | None = None,
    data_path: str | None = None,
    extractor: str | None = None,
    linger: int | None = None,
) -> list[str]:
    """The argv after the trainer executable for one trial, or for several sharing one process
    group (`--trials B:S,...`), as a list (docs/contracts.md).

    `data_path` and `extractor` override what the spec says (the Kubernetes backend mounts
    the dataset and Inception claims at its own paths); `linger` defaults to
    spec.metrics.lingerSeconds when metrics are served, else 0. A custom trainer takes no
    flags of critbatch's (its command is the user's): ValueError.
    """
    t, o, g = sweep.trainer, sweep.optimizer, sweep.target
    if t.custom or o is None:
        raise ValueError(f"sweep {sweep.name} runs its own command (spec.trainer.command), "
                         "which takes no built-in trainer flags; give it trial_env")
    args = ["--sweep", sweep.name, "--model", t.model, "--dataset", t.dataset.name]
    path = data_path if data_path is not None else t.dataset.path
    if path:
        args += ["--data-path", path]
    if t.image_size is not None:
        args += ["--image-size", str(t.image_size)]
    if t.channels is not None:
        args += ["--channels", str(t.channels)]
    for flag, value in (("--width", t.width), ("--z-dim", t.z_dim), ("--ema-start", t.ema_start)):
        if value is not None:
            args += [flag, str(value)]
    keys = [key] if isinstance(key, TrialKey) else list(key)
    if len(keys) == 1:
        args += ["--batch-size", str(keys[0].batch_size), "--seed", str(keys[0].seed)]
    else:
        args += ["--trials", trials_text(keys)]
    args += ["--optimizer", o.name]
    for flag, side in (("g", o.generator), ("d", o.discriminator)):
        args += [f"--lr-{flag}", _fmt(side.learning_rate), f"--beta1-{flag}", _fmt(side.beta1),
                 f"--beta2-{flag}", _fmt(side.beta2), f"--eps-{flag}", _fmt(side.eps)]
    args += ["--fid-threshold", _fmt(g.threshold), "--max-steps", str(g.max_steps)]
    if g.eval_every is not None:
        args += ["--eval-every", str(g.eval_every)]
    if g.eval_samples is not None:
        args += ["--eval-samples", str(g.eval_samples)]
    if extractor is None and t.inception is not None and not t.inception.pvc:
        extractor = f"inception:{t.inception.file}"
    if extractor:
        args += ["--extractor", extractor]
    if checkpoint_dir:
        args += ["--checkpoint-dir", checkpoint_dir]
        if t.checkpoint_every:
            args += ["--checkpoint-every", str(t.checkpoint_every)]
    args += ["--metrics-port", str(int(metrics_port))]
    if linger is None:
        linger = sweep.metrics.linger_seconds if metrics_port else 0
    if linger:
        args += ["--linger", str(int(linger))]
    if termination_log:
        args += ["--termination-log", termination_log]
    args += ["--device", t.device]
    args += ["--cuda-graph"] * t.cuda_graph + ["--bf16"] * t.bf16
    if t.micro_batch:
        args += ["--micro-batch", str(t.micro_batch)]
    args += ["--recompute-activations"] * t.recompute_activations
    args += ["--fused-attention"] * t.fused_attention
    args += ["--reproducible-cpu"] * t.reproducible_cpu
    return args


def trial_env(
    sweep: Sweep,
    key: TrialKey,
    *,
    metrics_port: int,
    result_file: str | None,
    checkpoint_dir: str | None,
    metrics_host: str | None = None,
    data_path: str | None = None,
) -> dict[str, str]:
    """The trial protocol's variables for one trial of `sweep` (docs/trial-protocol.md), for
    any trainer: the built-in one reads them as its flags' defaults, a custom one only them.
    The evaluation interval is the sweep's, so the trainer evaluates where the planner
    expects (a reached trial crossed the threshold within the last interval). `data_path`
    overrides spec.trainer.dataset.path (the Jobs backend mounts a claim at its own path)."""
    target = sweep.target
    host = {} if metrics_host is None else {"metrics_host": metrics_host}
    return TrialSettings(
        batch_size=key.batch_size,
        seed=key.seed,
        max_steps=target.max_steps,
        threshold=target.threshold,
        metric=target.metric,
        goal=target.goal,
        metrics_port=int(metrics_port),
        result_file=result_file,
        checkpoint_dir=checkpoint_dir,
        eval_every=evaluation_interval(sweep),
        data_path=data_path if data_path is not None else sweep.trainer.dataset.path,
        sweep=sweep.name,
        **host,
    ).env()
