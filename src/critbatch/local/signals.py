"""The signals that stop a local run like Ctrl-C, and the runner's handlers for them."""

from __future__ import annotations

import signal
from typing import Any

# The signals that stop a run like Ctrl-C: a `kill`, a closed terminal.
STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


def install_signals(handler: Any) -> dict[int, Any]:
    """Set `handler` (a callable, or the dict this returns) for STOP_SIGNALS; returns the
    handlers it replaced. A signal ignored (`nohup`, a background job) stays ignored."""
    previous = {}
    for sig in STOP_SIGNALS:
        new = handler.get(sig) if isinstance(handler, dict) else handler
        if new is None or (callable(handler) and signal.getsignal(sig) == signal.SIG_IGN):
            continue
        try:
            previous[sig] = signal.signal(sig, new)
        except ValueError:  # not the main thread (a test calling run() from a worker)
            previous[sig] = signal.getsignal(sig)
    return previous
