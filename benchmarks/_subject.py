"""What the harness needs from each system under test (asyncjobs on a dialect, or a peer)."""

from __future__ import annotations

import abc
import os
import sys
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class Subject(abc.ABC):
    """One system on one database. ``reset()`` gives it fresh, empty storage; the harness
    enqueues through it, starts its worker processes and watches its tables through it."""

    #: short name used in the JSON and on the command line (``sqlite``, ``pgqueuer`` ...)
    key: str
    #: what the table and chart call it
    label: str
    #: a peer we compare against (not asyncjobs)
    peer: bool = False
    #: a slow system drains this fraction of each drain size (its rate is what is compared);
    #: the JSON records the number of jobs each figure is over
    drain_fraction: float = 1.0
    #: worker concurrency settings to try in the one-process drain (``None``: the default)
    drain_concurrency: Sequence[int | None] = (None,)

    async def open(self) -> None:  # noqa: B027 - optional
        """Connect what stays connected for the whole run."""

    async def close(self) -> None:  # noqa: B027 - optional
        """Release everything ``open`` and ``reset`` made."""

    async def park(self) -> None:  # noqa: B027 - optional
        """Between workloads: release what ``reset`` opened (the next ``reset`` opens it again),
        so that subjects taking turns never hold task groups open across each other's runs."""

    @abc.abstractmethod
    async def reset(self) -> None:
        """Drop and recreate this system's storage; afterwards the queue is empty."""

    @abc.abstractmethod
    async def enqueue_one(self, n: int, t: float = 0.0, *, serial: bool = False) -> int:
        """Enqueue one job with one call (its own transaction); returns its id."""

    @abc.abstractmethod
    async def enqueue_batch(self, ns: Sequence[int], *, serial: bool = False) -> list[int]:
        """Enqueue many jobs with the system's batch API (one call); returns ids in order."""

    @abc.abstractmethod
    def worker_args(self, *, latency: bool, concurrency: int | None, serial: bool) -> list[str]:
        """Arguments of ``python -m benchmarks.worker`` for a worker process of this system
        (``serial``: for the strictly serial drain)."""

    @abc.abstractmethod
    async def job_done(self, job_id: int) -> bool:
        """Whether a job is durably finished (a cheap primary-key probe)."""

    @abc.abstractmethod
    async def done_count(self) -> int:
        """How many jobs are durably finished."""

    @abc.abstractmethod
    async def verify(self, expected: int) -> dict[str, Any]:
        """After a full drain: what is left in the queue, what was archived."""

    @abc.abstractmethod
    def in_process(self) -> AbstractAsyncContextManager[None]:
        """Run this system's worker inside the harness process (same-process latency)."""

    def worker_command(
        self, *, latency: bool = False, concurrency: int | None = None, serial: bool = False
    ) -> list[str]:
        args = self.worker_args(latency=latency, concurrency=concurrency, serial=serial)
        return [sys.executable, "-m", "benchmarks.worker", *args]

    @staticmethod
    def worker_env() -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(ROOT)}
