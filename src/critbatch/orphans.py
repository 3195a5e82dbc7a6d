"""Processes that must not outlive the one that started them: Linux's parent-death signal.

A local run's trials, a launcher's workers and a warm server's trials each ask the kernel for
a signal when their parent dies; nothing else would stop a process in a session of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def end_with_parent(sig: int) -> None:
    """Have the kernel send this process `sig` when its parent dies (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
