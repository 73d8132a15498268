"""asyncjobs on SQLite, PostgreSQL or MariaDB, with its default settings."""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from asyncjobs import BackgroundJobs, JobOptions

from ._db import (
    MysqlProbe,
    PgProbe,
    Probe,
    SqliteProbe,
    mysql_dsn,
    pg_dsn,
    recreate_mysql_database,
    recreate_pg_schema,
)
from ._jobs import SERIAL_WORKER, NoopCommand, Tick, hooks
from ._subject import Subject

SCHEMA = "aj"
LABELS = {
    "sqlite": "asyncjobs SQLite",
    "postgres": "asyncjobs PostgreSQL",
    "mysql": "asyncjobs MariaDB",
}
_SERIAL = JobOptions(worker=SERIAL_WORKER)


class AsyncJobsSubject(Subject):
    """asyncjobs as a user runs it: ``BackgroundJobs(dsn, commands=[...])``, defaults."""

    def __init__(self, dialect: str, workdir: Path) -> None:
        self.key = dialect
        self.label = LABELS[dialect]
        self.workdir = workdir
        self.dsn = ""
        self._files = 0
        self._jobs: BackgroundJobs | None = None
        self._probe: Probe | None = None

    async def _release(self) -> None:
        if self._jobs is not None:
            jobs, self._jobs = self._jobs, None
            await jobs.__aexit__(None, None, None)
        if self._probe is not None:
            probe, self._probe = self._probe, None
            await probe.close()

    async def close(self) -> None:
        await self._release()

    async def park(self) -> None:
        await self._release()

    async def reset(self) -> None:
        await self._release()
        if self.key == "sqlite":
            self._files += 1
            path = self.workdir / f"asyncjobs-{self._files}.db"
            self.dsn = f"sqlite:///{path}"
        elif self.key == "postgres":
            await recreate_pg_schema(SCHEMA)
            self.dsn = f"{pg_dsn()}?schema={SCHEMA}"
        else:
            await recreate_mysql_database()
            self.dsn = mysql_dsn()
        jobs = BackgroundJobs(self.dsn, commands=[NoopCommand], execute=False)
        await jobs.__aenter__()  # migrates
        self._jobs = jobs
        if self.key == "sqlite":
            self._probe = SqliteProbe(self.dsn.removeprefix("sqlite:///"))
        elif self.key == "postgres":
            self._probe = await PgProbe.connect(schema=SCHEMA)
        else:
            self._probe = await MysqlProbe.connect()

    @property
    def jobs(self) -> BackgroundJobs:
        assert self._jobs is not None, "reset() first"
        return self._jobs

    @property
    def probe(self) -> Probe:
        assert self._probe is not None, "reset() first"
        return self._probe

    async def enqueue_one(self, n: int, t: float = 0.0, *, serial: bool = False) -> int:
        ref = await self.jobs.enqueue_command(NoopCommand, Tick(n, t), _SERIAL if serial else None)
        return ref.id

    async def enqueue_batch(self, ns: Sequence[int], *, serial: bool = False) -> list[int]:
        options = _SERIAL if serial else None
        refs = await self.jobs.enqueue_many([(NoopCommand, Tick(n), options) for n in ns])
        return [ref.id for ref in refs]

    def worker_args(self, *, latency: bool, concurrency: int | None, serial: bool) -> list[str]:
        args = ["asyncjobs", self.dsn]
        if latency:
            args.append("--latency")
        if concurrency is not None:
            args += ["--concurrency", str(concurrency)]
        return args

    async def job_done(self, job_id: int) -> bool:
        state = await self.probe.fetchval("SELECT state FROM job_summary WHERE id = ?", job_id)
        return bool(state == "Completed")

    async def done_count(self) -> int:
        sql = "SELECT count(*) FROM job_summary WHERE state = 'Completed'"
        return int(await self.probe.fetchval(sql))

    async def verify(self, expected: int) -> dict[str, Any]:
        left = int(await self.probe.fetchval("SELECT count(*) FROM background_job"))
        if self.key == "sqlite":
            months = await self.probe.fetchval("SELECT group_concat(month) FROM archive_month")
            archived = 0
            for month in str(months or "").split(","):
                if month:
                    sql = f"SELECT count(*) FROM completed_job_{int(month)}"
                    archived += int(await self.probe.fetchval(sql))
        else:
            archived = int(await self.probe.fetchval("SELECT count(*) FROM completed_job"))
        return {"left_in_queue": left, "archived": archived, "all_archived": archived == expected}

    @asynccontextmanager
    async def _in_process(self) -> AsyncIterator[None]:
        """Swap the enqueue-only instance for one that executes: a job enqueued by a process
        that executes jobs starts in that process."""
        producer = self.jobs
        async with BackgroundJobs(self.dsn, commands=[NoopCommand]) as jobs:
            self._jobs = jobs
            try:
                yield
            finally:
                self._jobs = producer

    def in_process(self) -> AbstractAsyncContextManager[None]:
        return self._in_process()


async def serve(dsn: str, *, latency: bool, concurrency: int | None) -> None:
    """The worker process: ``BackgroundJobs(dsn, commands=[NoopCommand])`` until SIGTERM."""
    settings: dict[str, Any] = {}
    if concurrency is not None:
        settings["max_concurrency"] = concurrency
    jobs = BackgroundJobs(dsn, commands=[NoopCommand], **settings)
    install_print_hooks(latency)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with jobs:
            print("ready", flush=True)
            async for _ in signals:
                break


def install_print_hooks(latency: bool) -> None:
    """Worker processes tell the harness on stdout: ``F <time>`` at the first job start, and
    with ``latency`` ``L <n> <seconds>`` for every job."""

    def first(now: float) -> None:
        sys.stdout.write(f"F {now!r}\n")
        sys.stdout.flush()

    def each(n: int, t: float, now: float) -> None:
        sys.stdout.write(f"L {n} {now - t!r}\n")
        sys.stdout.flush()

    hooks.reset()
    hooks.on_first = first
    if latency:
        hooks.on_start = each
