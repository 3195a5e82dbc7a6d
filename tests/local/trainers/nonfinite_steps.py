"""Breaks the result: its steps are NaN (Python's json writes it, the protocol refuses it)."""

import json
import os
from pathlib import Path

result = {"batch_size": int(os.environ["CRITBATCH_BATCH_SIZE"]),
          "seed": int(os.environ["CRITBATCH_SEED"]), "reached": False, "steps": float("nan")}
line = json.dumps(result)
Path(os.environ["CRITBATCH_RESULT_FILE"]).write_text(line)
print(line)
