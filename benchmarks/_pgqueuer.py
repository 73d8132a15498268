"""pgqueuer, configured as its documentation shows: one asyncpg connection per process
(``AsyncpgDriver``), a ``QueueManager`` with one entrypoint run by ``pgqueuer.run`` with the
default ``batch_size=10``, and ``concurrency_limit=1`` on the entrypoint for serial jobs.

Its tables live in the schema ``pgq`` of the ``bench`` database (through ``search_path``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.metadata import version
from typing import Any

import anyio

from ._db import PgProbe, pg_dsn, recreate_pg_schema
from ._jobs import ENTRYPOINT, SERIAL_ENTRYPOINT, decode_tick, encode_tick, hooks
from ._subject import Subject

SCHEMA = "pgq"
#: pgqueuer's default (``pgq run`` and ``QueueManager.run``); the serial drain uses 1
BATCH_SIZE = 10


async def _connect() -> Any:
    import asyncpg

    return await asyncpg.connect(pg_dsn(), server_settings={"search_path": SCHEMA})


def _queue_manager(conn: Any) -> Any:
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.models import Job

    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint(ENTRYPOINT)
    async def noop(job: Job) -> None:
        n, t = decode_tick(job.payload)
        hooks.start(n, t)

    @qm.entrypoint(SERIAL_ENTRYPOINT, concurrency_limit=1)
    async def noop_serial(job: Job) -> None:
        n, t = decode_tick(job.payload)
        hooks.start(n, t)

    return qm


class PgQueuerSubject(Subject):
    key = "pgqueuer"
    label = f"pgqueuer {version('pgqueuer')}"
    peer = True

    def __init__(self) -> None:
        self._conn: Any = None
        self._queries: Any = None
        self._probe: PgProbe | None = None
        self._enqueued = 0

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        if self._probe is not None:
            await self._probe.close()
            self._probe = None

    async def reset(self) -> None:
        from pgqueuer import AsyncpgDriver, Queries

        await self.close()
        await recreate_pg_schema(SCHEMA)
        self._conn = await _connect()
        self._queries = Queries(AsyncpgDriver(self._conn))
        await self._queries.install()
        self._probe = await PgProbe.connect(schema=SCHEMA)
        self._enqueued = 0

    @property
    def probe(self) -> PgProbe:
        assert self._probe is not None
        return self._probe

    async def enqueue_one(self, n: int, t: float = 0.0, *, serial: bool = False) -> int:
        entrypoint = SERIAL_ENTRYPOINT if serial else ENTRYPOINT
        ids = await self._queries.enqueue(entrypoint, encode_tick(n, t))
        self._enqueued += 1
        return int(ids[0])

    async def enqueue_batch(self, ns: Sequence[int], *, serial: bool = False) -> list[int]:
        entrypoint = SERIAL_ENTRYPOINT if serial else ENTRYPOINT
        ids = await self._queries.enqueue(
            [entrypoint] * len(ns), [encode_tick(n) for n in ns], [0] * len(ns)
        )
        self._enqueued += len(ns)
        return [int(i) for i in ids]

    def worker_args(self, *, latency: bool, concurrency: int | None, serial: bool) -> list[str]:
        args = ["pgqueuer", pg_dsn(), *(["--latency"] if latency else [])]
        # One job at a time either way; batch_size=1 also flushes each job's completion at
        # once, which is what lets the next serial job start (10 would wait for a timer).
        return args + (["--batch-size", "1"] if serial else [])

    async def job_done(self, job_id: int) -> bool:
        # A finished job leaves the queue table (for pgqueuer_log) when its status is flushed.
        found = await self.probe.fetchval("SELECT 1 FROM pgqueuer WHERE id = ?", job_id)
        return found is None

    async def done_count(self) -> int:
        left = int(await self.probe.fetchval("SELECT count(*) FROM pgqueuer"))
        return self._enqueued - left

    async def verify(self, expected: int) -> dict[str, Any]:
        left = int(await self.probe.fetchval("SELECT count(*) FROM pgqueuer"))
        logged = int(
            await self.probe.fetchval(
                "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
            )
        )
        return {"left_in_queue": left, "logged_successful": logged}

    @asynccontextmanager
    async def _in_process(self) -> AsyncIterator[None]:
        conn = await _connect()
        qm = _queue_manager(conn)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: qm.run(batch_size=BATCH_SIZE))
                await anyio.sleep(0.5)  # let it LISTEN before the first enqueue
                try:
                    yield
                finally:
                    qm.shutdown.set()
        finally:
            await conn.close()

    def in_process(self) -> AbstractAsyncContextManager[None]:
        return self._in_process()


def serve(dsn: str, *, latency: bool, batch_size: int = BATCH_SIZE) -> None:
    """The worker process, started the way ``pgq run`` starts one: on uvloop (a dependency of
    pgqueuer on Linux), SIGTERM stops it."""
    import pgqueuer

    from ._ours import install_print_hooks

    install_print_hooks(latency)

    @asynccontextmanager
    async def factory() -> AsyncIterator[Any]:
        conn = await _connect()
        try:
            qm = _queue_manager(conn)
            print("ready", flush=True)
            yield qm
        finally:
            await conn.close()

    try:
        import uvloop
    except ImportError:  # pragma: no cover - pgqueuer depends on it except on Windows
        asyncio.run(pgqueuer.run(factory, batch_size=batch_size))
    else:
        uvloop.run(pgqueuer.run(factory, batch_size=batch_size))
