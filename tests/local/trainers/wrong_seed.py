"""Breaks the trial's identity: reports a seed other than CRITBATCH_SEED."""

import json
import os
from pathlib import Path

result = {"batch_size": int(os.environ["CRITBATCH_BATCH_SIZE"]),
          "seed": int(os.environ["CRITBATCH_SEED"]) + 1, "reached": False,
          "steps": int(os.environ["CRITBATCH_MAX_STEPS"])}
line = json.dumps(result, separators=(",", ":"))
Path(os.environ["CRITBATCH_RESULT_FILE"]).write_text(line)
print(line)
