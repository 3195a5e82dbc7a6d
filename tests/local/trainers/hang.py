"""Breaks the end: never finishes (and ignores SIGTERM)."""

import signal
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    time.sleep(1)
