"""torchrun for `--gpus N`: torch's own launcher, quiet when a process fails.

A failing process has already said why on one line (a usage error, a dead peer); torchrun would add its
agent's log line and a traceback of its own. Here a failure ends with the failing process's exit code
(2 for a usage error) and nothing more. Started by runtime/launch.py as `python -m skyreels_cli.runtime.torchrun`
with torchrun's own arguments.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str]) -> int:
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run.run(run.parse_args(argv))
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1  # killed by a signal: 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
