"""PyTorch's launcher (`torch.distributed.run`, alias `torchrun`) with exit codes that say why a
data-parallel trial ended.

The launcher exits 1 whatever ended its workers. A Job's failure policy and the local runner
must tell a bad configuration (the trainer's exit 2: a retry cannot help) and a stop by signal
(128 + the signal, the workers having checkpointed) from a crash; this entry point passes those
on and prints the launcher's report, which names the rank that failed first.

    python -m critbatch_trainer.launcher TORCHRUN-FLAGS... --no-python PROGRAM ARGS...
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

BAD_CONFIG_EXIT = 2


def exit_code(worker_codes: list[int]) -> int:
    """The trial's exit code from its failed workers' (a signal's is negative): a bad
    configuration if any worker said so, the same stop signal if all were stopped by one,
    else 1."""
    if BAD_CONFIG_EXIT in worker_codes:
        return BAD_CONFIG_EXIT
    if worker_codes and len(set(worker_codes)) == 1 and worker_codes[0] > 128:
        return worker_codes[0]
    return 1


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as e:
        print(e.format_msg(), file=sys.stderr, flush=True)
        return exit_code([f.exitcode for f in e.failures.values()])
    except SignalException as e:
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
