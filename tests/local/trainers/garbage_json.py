"""Breaks the result: writes something that is not JSON where the result belongs."""

import os
from pathlib import Path

Path(os.environ["CRITBATCH_RESULT_FILE"]).write_text("{batch_size: 8, reached: yes}")
print("{batch_size: 8, reached: yes}")
