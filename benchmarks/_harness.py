"""The workloads, run the same way against every system.

Throughputs are jobs per second over the measured interval; latencies are from just before
the enqueue call to the start of the job's code. Drains are timed from the first job start in
any worker process (so process start-up is not counted) to the moment the harness sees the
last job durably finished in the database (polled every few milliseconds by primary key).

Every workload starts from empty storage. A drain that would overrun its time budget (a slow
system on the large backlog, or on the strictly serial drain) is measured over the jobs it
finished within the budget, and the JSON says how many. In the full mode each throughput
workload runs twice and the better run is kept: the machine is shared, and interference only
ever slows a run down. Latencies are one job at a time, after a few warm-up jobs.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import psutil

from . import _profile
from ._db import settle
from ._jobs import hooks
from ._subject import ROOT, Subject

#: how often the harness looks at the database while a drain runs
POLL = 0.005
#: a drain that makes no progress for this long has failed
STALL_TIMEOUT = 120.0
WARMUP = 10
#: the pause between two latency samples: jobs arrive one at a time, not back to back
LATENCY_PACING = 0.002


@dataclass(frozen=True, slots=True)
class Sizes:
    single: int  # jobs enqueued one call each
    batch_total: int  # jobs enqueued through the batch API
    batch_size: int  # jobs per batch call
    drain: int  # jobs drained by one and by two worker processes
    backlog: int  # the large backlog
    serial: int  # jobs drained strictly serially
    latency: int  # samples per latency mode
    budget: float  # seconds a serial drain or a latency run may take at most
    backlog_budget: float  # seconds the large-backlog drain may take at most
    repeat: int  # runs of each throughput workload; the best is kept

    def scaled(self, factor: float) -> Sizes:
        def s(value: int, floor: int = 20) -> int:
            return max(floor, int(value * factor))

        return Sizes(
            single=s(self.single),
            batch_total=s(self.batch_total, 100),
            batch_size=min(self.batch_size, s(self.batch_total, 100)),
            drain=s(self.drain, 50),
            backlog=s(self.backlog, 100),
            serial=s(self.serial),
            latency=s(self.latency),
            budget=max(2.0, self.budget * min(1.0, factor * 4)),
            backlog_budget=max(4.0, self.backlog_budget * min(1.0, factor * 4)),
            repeat=self.repeat if factor >= 1 else 1,
        )


FULL = Sizes(
    single=2000, batch_total=20000, batch_size=500, drain=10000, backlog=100000, serial=2000,
    latency=500, budget=10.0, backlog_budget=30.0, repeat=2,
)  # fmt: skip
QUICK = Sizes(
    single=300, batch_total=5000, batch_size=500, drain=2000, backlog=20000, serial=300,
    latency=100, budget=4.0, backlog_budget=8.0, repeat=1,
)  # fmt: skip


def rate(jobs: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"jobs": jobs, "seconds": round(seconds, 4), "rate": jobs / seconds, **extra}


def percentiles(samples: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(samples)

    def rank(p: float) -> float:
        index = max(0, math.ceil(p / 100 * len(ordered)) - 1)
        return ordered[index] * 1000

    return {
        "samples": len(ordered),
        "p50_ms": round(rank(50), 3),
        "p95_ms": round(rank(95), 3),
        "p99_ms": round(rank(99), 3),
        "max_ms": round(ordered[-1] * 1000, 3),
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 3),
    }


# -- enqueue ---------------------------------------------------------------------------------


async def enqueue_single(subject: Subject, count: int) -> dict[str, Any]:
    await subject.reset()
    await settle()
    started = time.perf_counter()
    for n in range(count):
        await subject.enqueue_one(n)
    return rate(count, time.perf_counter() - started)


async def enqueue_batches(subject: Subject, total: int, batch: int) -> dict[str, Any]:
    await subject.reset()
    await settle()
    started = time.perf_counter()
    for first in range(0, total, batch):
        await subject.enqueue_batch(range(first, min(total, first + batch)))
    return rate(total, time.perf_counter() - started, batch_size=batch)


async def fill(subject: Subject, count: int, *, serial: bool = False) -> list[int]:
    """Queue ``count`` jobs through the batch API (untimed); returns their ids in order."""
    ids: list[int] = []
    for first in range(0, count, 1000):
        ids += await subject.enqueue_batch(range(first, min(count, first + 1000)), serial=serial)
    return ids


# -- worker processes ------------------------------------------------------------------------


class WorkerProcess:
    """A worker process and the lines it prints."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.ready = anyio.Event()
        self.first_start: float | None = None
        self.started = anyio.Event()
        send, receive = anyio.create_memory_object_stream[tuple[int, float]](math.inf)
        self.latencies_in, self.latencies = send, receive

    async def read(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.decode().strip()
                if line == "ready":
                    self.ready.set()
                elif line.startswith("F "):
                    self.first_start = float(line[2:])
                    self.started.set()
                elif line.startswith("L "):
                    _, n, seconds = line.split()
                    self.latencies_in.send_nowait((int(n), float(seconds)))

    @property
    def pid(self) -> int:
        return self.process.pid


@asynccontextmanager
async def worker_processes(
    subject: Subject,
    count: int,
    *,
    latency: bool = False,
    concurrency: int | None = None,
    serial: bool = False,
) -> AsyncIterator[list[WorkerProcess]]:
    command = subject.worker_command(latency=latency, concurrency=concurrency, serial=serial)
    workers: list[WorkerProcess] = []
    async with anyio.create_task_group() as tg:
        try:
            for _ in range(count):
                process = await anyio.open_process(
                    command, cwd=ROOT, env=subject.worker_env(), stderr=subprocess.DEVNULL
                )
                worker = WorkerProcess(process)
                workers.append(worker)
                tg.start_soon(worker.read)
            yield workers
        finally:
            with anyio.CancelScope(shield=True):
                for worker in workers:
                    if worker.process.returncode is None:
                        worker.process.terminate()
                for worker in workers:
                    with anyio.move_on_after(30):
                        await worker.process.wait()
                    if worker.process.returncode is None:
                        worker.process.kill()
                        await worker.process.wait()
            tg.cancel_scope.cancel()


class RssSampler:
    """The peak resident memory of some processes, sampled every 50 ms."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.processes = [psutil.Process(pid) for pid in pids]
        self.peak = 0

    async def run(self) -> None:
        while True:
            for process in self.processes:
                with suppress(psutil.Error):
                    self.peak = max(self.peak, process.memory_info().rss)
            await anyio.sleep(0.05)

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


#: the database servers' process names: their CPU time is the database's share of a drain
DATABASE_PROCESSES = frozenset({"postgres", "mariadbd", "mysqld"})


class CpuMeter:
    """CPU seconds (user + system) used between :meth:`start` and :meth:`stop` by the worker
    processes and by the database servers' processes, to tell which of them limits a drain
    (everything shares the machine's cores). A server process that started meanwhile (a new
    connection's backend) counts in full; one that ended meanwhile is not counted."""

    def __init__(self, worker_pids: Sequence[int]) -> None:
        self.workers = [psutil.Process(pid) for pid in worker_pids]
        self._before: dict[int, float] = {}
        self.worker_seconds = 0.0
        self.database_seconds = 0.0

    @staticmethod
    def _used(process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    def _snapshot(self) -> dict[int, float]:
        used = {}
        for process in (*self.workers, *self._servers()):
            with suppress(psutil.Error):
                used[process.pid] = self._used(process)
        return used

    @staticmethod
    def _servers() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["name"]) if p.info["name"] in DATABASE_PROCESSES]

    def start(self) -> None:
        self._before = self._snapshot()

    def stop(self) -> None:
        after = self._snapshot()
        worker_pids = {p.pid for p in self.workers}

        def spent(pid: int) -> float:
            return after[pid] - self._before.get(pid, 0.0)

        self.worker_seconds = sum(spent(pid) for pid in after if pid in worker_pids)
        self.database_seconds = sum(spent(pid) for pid in after if pid not in worker_pids)

    def per_job_us(self, jobs: int) -> dict[str, float]:
        if not jobs:
            return {}
        return {
            "worker_cpu_us_per_job": round(self.worker_seconds / jobs * 1e6, 1),
            "database_cpu_us_per_job": round(self.database_seconds / jobs * 1e6, 1),
        }


# -- drains ----------------------------------------------------------------------------------


async def drain(
    subject: Subject,
    count: int,
    *,
    workers: int = 1,
    serial: bool = False,
    concurrency: int | None = None,
    budget: float = math.inf,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Queue ``count`` jobs, then time ``workers`` worker processes draining them (or as many
    as they finish within ``budget`` seconds: the rate is over the jobs done by then). With
    ``profile`` (a path without suffix), the first worker is sampled while the drain is timed
    (see _profile)."""
    await subject.reset()
    ids = await fill(subject, count, serial=serial)
    last = ids[-1]
    await settle()
    async with worker_processes(subject, workers, concurrency=concurrency, serial=serial) as procs:
        sampler = RssSampler([w.pid for w in procs])
        async with anyio.create_task_group() as tg:
            tg.start_soon(sampler.run)
            with anyio.fail_after(STALL_TIMEOUT):
                await _first_started(procs)
            t0 = min(w.first_start for w in procs if w.first_start is not None)
            cpu = CpuMeter([w.pid for w in procs])
            cpu.start()
            async with _profile.sampling(procs[0].pid, profile) if profile else nullcontext():
                finished, done = await _wait_drained(subject, last, count, budget)
            cpu.stop()
            tg.cancel_scope.cancel()
    # CPU is metered from just after the first start: the per-job figures leave out the
    # first few jobs' share, which is negligible over a drain.
    result = rate(
        done, finished - t0, workers=workers, rss_peak_mb=sampler.peak_mb, **cpu.per_job_us(done)
    )
    if done < count:
        result["queued"] = count
    if concurrency is not None:
        result["concurrency"] = concurrency
    if done == count:
        result.update(await subject.verify(count))
    return result


async def _first_started(procs: Sequence[WorkerProcess]) -> None:
    async with anyio.create_task_group() as tg:
        for worker in procs:

            async def wait(worker: WorkerProcess = worker) -> None:
                await worker.started.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(wait)
            tg.start_soon(_fail_on_exit, worker)


async def _fail_on_exit(worker: WorkerProcess) -> None:
    code = await worker.process.wait()
    raise RuntimeError(f"worker process {worker.pid} exited with {code} before any job started")


async def _wait_drained(
    subject: Subject, last: int, count: int, budget: float = math.inf
) -> tuple[float, int]:
    """Poll until ``count`` jobs are finished (the job ``last`` first, by primary key), or
    until ``budget`` seconds have passed; returns the monotonic time seen and the jobs done.
    The count of finished jobs is also taken every second, to notice a stalled drain."""
    started = time.monotonic()
    deadline = started + STALL_TIMEOUT
    progress, counted = -1, started
    while True:
        now = time.monotonic()
        if await subject.job_done(last):
            done = await subject.done_count()
            if done >= count:
                return now, count
        if now - counted >= 1.0 or now - started >= budget:
            done, counted = await subject.done_count(), now
            if now - started >= budget and done > 0:
                return now, done
            if done != progress:
                progress, deadline = done, now + STALL_TIMEOUT
        if now > deadline:
            raise TimeoutError(f"{subject.key}: drain stalled at {progress} of {count}")
        await anyio.sleep(POLL)


# -- latency ---------------------------------------------------------------------------------


async def latency_same_process(
    subject: Subject, samples: int, budget: float = math.inf
) -> dict[str, Any]:
    """Enqueue from the process that also runs the jobs, one job at a time (``samples`` of
    them, or as many as ``budget`` seconds allow)."""
    await subject.reset()
    started: dict[int, float] = {}
    events: dict[int, anyio.Event] = {}

    def on_start(n: int, t: float, now: float) -> None:
        started[n] = now - t
        event = events.get(n)
        if event is not None:
            event.set()

    hooks.reset()
    hooks.on_start = on_start
    latencies: list[float] = []
    await settle()
    try:
        async with subject.in_process():
            stop = time.monotonic() + budget
            for n in range(WARMUP + samples):
                if n > WARMUP and time.monotonic() > stop:
                    break
                events[n] = anyio.Event()
                await subject.enqueue_one(n, time.monotonic())
                with anyio.fail_after(30):
                    await events[n].wait()
                if n >= WARMUP:
                    latencies.append(started[n])
                await anyio.sleep(LATENCY_PACING)
    finally:
        hooks.reset()
    return percentiles(latencies)


async def latency_cross_process(
    subject: Subject, samples: int, budget: float = math.inf
) -> dict[str, Any]:
    """Enqueue from this process, run in a worker process, one job at a time (``samples`` of
    them, or as many as ``budget`` seconds allow: a system that polls takes long)."""
    await subject.reset()
    await settle()
    latencies: list[float] = []
    async with worker_processes(subject, 1, latency=True) as procs:
        worker = procs[0]
        with anyio.fail_after(60):
            await worker.ready.wait()
        await anyio.sleep(0.3)  # the worker's LISTEN / first poll is set up after "ready"
        stop = time.monotonic() + budget
        for n in range(WARMUP + samples):
            if n > WARMUP and time.monotonic() > stop:
                break
            await subject.enqueue_one(n, time.monotonic())
            with anyio.fail_after(30):
                got, seconds = await worker.latencies.receive()
            if got != n:
                raise RuntimeError(f"{subject.key}: expected job {n} to start, got {got}")
            if n >= WARMUP:
                latencies.append(seconds)
            await anyio.sleep(LATENCY_PACING)
    return percentiles(latencies)
