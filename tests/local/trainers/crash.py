"""Breaks the exit code: crashes with a traceback (exit 1) before any result."""

raise RuntimeError("out of memory in step 3")
