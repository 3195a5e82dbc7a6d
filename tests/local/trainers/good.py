"""A minimal trainer that speaks the trial protocol by hand, with no critbatch code.

It "trains" a made-up metric that improves every step: 100 / (1 + step) when minimized,
step / (step + 10) when maximized. It stops once the target is met or the budget is spent,
writes its result to CRITBATCH_RESULT_FILE and prints it as its last line; on SIGTERM it writes a
checkpoint and exits 143 without a result. GOOD_STEP_SECONDS slows its steps down.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

env = os.environ
batch_size = int(env["CRITBATCH_BATCH_SIZE"])
seed = int(env["CRITBATCH_SEED"])
metric = env["CRITBATCH_TARGET_METRIC"]
threshold = float(env["CRITBATCH_TARGET_THRESHOLD"])
goal = env["CRITBATCH_TARGET_GOAL"]
max_steps = int(env["CRITBATCH_MAX_STEPS"])
eval_every = int(env.get("CRITBATCH_EVAL_EVERY") or 10)
result_file = env.get("CRITBATCH_RESULT_FILE")
checkpoint_dir = env.get("CRITBATCH_CHECKPOINT_DIR")
delay = float(env.get("GOOD_STEP_SECONDS", "0"))

stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))


def measure(step: int) -> float:
    return 100 / (1 + step) if goal == "minimize" else step / (step + 10)


def met(value: float) -> bool:
    return value <= threshold if goal == "minimize" else value >= threshold


step, value, reached = 0, measure(0), False
while step < max_steps and not reached:
    if stopping:
        if checkpoint_dir:
            Path(checkpoint_dir, "state.json").write_text(json.dumps({"step": step}))
        print(f"stopped at step {step}", file=sys.stderr)
        sys.exit(143)
    time.sleep(delay)
    step += 1
    if step % eval_every == 0 or step == max_steps:
        value = measure(step)
        reached = met(value)

result = {"batch_size": batch_size, "seed": seed, "reached": reached, "steps": step,
          "metric": metric, "value": value, "goal": goal, "threshold": threshold,
          "max_steps": max_steps, "params": 1000, "dataset_size": 5000,
          "optimizer": {"name": "adam", "learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999}}
line = json.dumps(result, separators=(",", ":"))
if result_file:
    Path(result_file).write_text(line)
print(line)
