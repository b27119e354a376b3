"""Context-parallel jobs on the service: N idle workers of one machine form one process group for one job.

The scheduler hosts the group's rendezvous (`Rendezvous`: a TCPStore, as torchrun's agent hosts one) and tells
each member its rank; each worker joins (`joined`), runs the job through the library as a process of
`skyreels ... --gpus N` does (`sk.run(job, parallel=...)`: rank 0 checks, encodes, decodes and writes, the others
read only the transformer's weights and follow), and leaves the group when the job ends (`Parallel.close()`).
The store outlives the ranks, so one leaving first never pulls it from under the others; the scheduler closes it
when every member is back (`GroupJob`).

Each worker sees one GPU (its own), so every member is local rank 0 of one local process: NCCL on CUDA, gloo on
the CPU, as `init_parallel` chooses.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# How long the others may take to leave after rank 0 has ended the job (a follower blocked in a collective
# whose peer left): then they are stopped and replaced.
GRACE_S = 30.0
# How long members wait for each other to join.
JOIN_TIMEOUT_S = 600.0


class Rendezvous:
    """Where one group's ranks meet: a TCPStore served by the scheduler's process, on a free port."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        from datetime import timedelta

        from torch.distributed import TCPStore

        self.host = host
        self._store = TCPStore(host, 0, None, True, timedelta(seconds=JOIN_TIMEOUT_S), wait_for_workers=False)
        self.port = self._store.port

    def member(self, rank: int, world: int) -> dict:
        """What a member needs to join: its rank, the group's size, the store's address."""
        return {"rank": rank, "world": world, "addr": self.host, "port": self.port}

    def close(self) -> None:
        self._store = None


@contextmanager
def joined(group: dict, device: str) -> Iterator:
    """Join the group `group` describes (`Rendezvous.member`) for one job; leave it afterwards, whatever happens.

    The library's `init_parallel` reads torchrun's variables: they are set for the join and taken away after, so
    the worker's next single-process job sees none."""
    from ..runtime.parallel import init_parallel

    names = {"RANK": group["rank"], "WORLD_SIZE": group["world"], "LOCAL_RANK": 0, "LOCAL_WORLD_SIZE": 1,
             "MASTER_ADDR": group["addr"], "MASTER_PORT": group["port"],
             "TORCHELASTIC_USE_AGENT_STORE": "True"}  # the store is the scheduler's: every rank is its client
    before = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(value) for name, value in names.items()})
    parallel = None
    try:
        parallel = init_parallel(device, timeout_s=JOIN_TIMEOUT_S)
        yield parallel
    finally:
        if parallel is not None:
            parallel.close()
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class GroupJob:
    """The scheduler's record of one job run by a group of workers."""

    job_id: str
    members: list                    # the workers, in rank order (rank 0 first)
    rendezvous: Rendezvous
    back: set = field(default_factory=set)      # names of the members that reported their end
    dead: list = field(default_factory=list)    # (worker, reason) of members that died holding the job
    outcome: dict | None = None      # rank 0's last report (done, failed, cancelled)
    ended_at: float | None = None    # when rank 0 ended or a member died: the others have GRACE_S to leave

    @property
    def main(self):
        return self.members[0]

    def member_ended(self, worker, report: dict | None, reason: str | None = None) -> None:
        """A member reported its end (`report`), or died (`reason`)."""
        self.back.add(worker.name)
        if reason is not None:
            self.dead.append((worker, reason))
        elif worker is self.main:
            self.outcome = report
        if self.ended_at is None and (worker is self.main or reason is not None):
            self.ended_at = time.monotonic()

    def complete(self) -> bool:
        """Every member is back (or dead)."""
        return len(self.back) == len(self.members)

    def stragglers(self) -> list:
        """Members still holding the job GRACE_S after it ended."""
        if self.ended_at is None or time.monotonic() - self.ended_at < GRACE_S:
            return []
        return [w for w in self.members if w.name not in self.back]

    def names(self) -> str:
        return "+".join(w.name for w in self.members)
