"""What every subsystem's tests share."""

from __future__ import annotations

import signal

# A shell starts its background jobs with Ctrl-C ignored, and a child keeps an ignored signal
# across exec: the tests that press Ctrl-C on a `critbatch run` or a trainer need it to arrive.
signal.signal(signal.SIGINT, signal.default_int_handler)
