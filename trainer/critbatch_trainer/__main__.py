"""critbatch-trainer: run one trial and print its result as JSON (docs/contracts.md).

It speaks the trial protocol (critbatch.protocol): the CRITBATCH_* variables are the defaults of
its flags. With --trials it runs a group of trials as processes instead
(critbatch_trainer.group). Started by PyTorch's launcher, it is one worker of a data-parallel
trial (critbatch_trainer.distributed), and only rank 0 serves metrics and reports.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from typing import Any

from critbatch_trainer.settings import PROG
from critbatch_trainer.termination import write_termination_log


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    from critbatch_trainer import group, numerics
    from critbatch_trainer.config import ConfigError, parse_args

    args = sys.argv[1:] if argv is None else list(argv)
    try:
        split = group.split_trials(args)
        if split is not None:
            return group.run(*split)
        cfg = parse_args(args)
        if cfg.reproducible_cpu:
            numerics.pin_environment()
    except ConfigError as e:
        return _error(str(e))

    from critbatch_trainer.distributed import PeerLost, World  # imports torch: after pinning

    try:
        world = World.from_env()
    except ValueError as e:  # the launcher's variables
        return _error(str(e))

    import torch

    from critbatch_trainer.checkpoint import WriteError
    from critbatch_trainer.extractors import ExtractorError
    from critbatch_trainer.loop import Terminated, Trial
    from critbatch_trainer.metrics import NullMetrics, TrainerMetrics

    if cfg.threads:
        threads = max(1, cfg.threads // world.local_size)  # the trial's threads, shared
        torch.set_num_threads(threads)
        # Fails once parallel work has run in this process; the intra-op count is what matters.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(threads)
    state: dict[str, Any] = {"trial": None, "signal": None}

    def on_signal(signum: int, _frame: object) -> None:
        state["signal"] = signum
        if state["trial"] is not None:
            state["trial"].stop_requested = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    metrics = (TrainerMetrics(cfg.sweep, cfg.batch_size, cfg.seed) if world.leader
               else NullMetrics())
    log = None if world.leader else (lambda _message: None)
    try:
        if cfg.metrics_port and isinstance(metrics, TrainerMetrics):
            try:
                metrics.serve(cfg.metrics_port, cfg.metrics_host)
            except OSError as e:
                return _error(f"metrics-port: cannot listen on {cfg.metrics_host}:"
                              f"{cfg.metrics_port}: {e.strerror}")
        try:
            trial = Trial.create(cfg, metrics, log, world)
            trial.restore()
            state["trial"] = trial
            trial.stop_requested = state["signal"] is not None
            result = trial.run()
        except (ConfigError, ExtractorError) as e:
            return _error(str(e))
        except WriteError as e:  # e.g. disk full: not the configuration, may pass
            _error(str(e))
            return 1
        except Terminated:
            where = f"; checkpoint in {cfg.checkpoint_dir}" if cfg.checkpoint_dir else ""
            if world.leader:
                print(f"{PROG}: stopped by signal at step {trial.progress.step}{where}",
                      file=sys.stderr, flush=True)
            return 128 + int(state["signal"] or signal.SIGTERM)
        except PeerLost as e:  # the launcher's report names the worker that failed first
            _error(f"rank {world.rank}: lost the trial's other workers: {e}")
            return 1
        if not world.leader:
            return 0
        line = json.dumps(result, separators=(",", ":"))  # compact: 8 share 4 KiB
        write_termination_log(cfg.termination_log, line)
        print(f"{PROG}: {trial.timings.line()}", file=sys.stderr, flush=True)
        print(line, flush=True)
        deadline = time.monotonic() + cfg.linger
        while cfg.metrics_port and state["signal"] is None and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return 0
    finally:
        world.close()
        metrics.close()
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
