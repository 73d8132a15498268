"""procrastinate, configured as its documentation shows for async code: ``App`` on a
``PsycopgConnector``, an ``async`` task, ``defer_async`` / ``batch_defer_async``, a worker with
LISTEN/NOTIFY on (the default). Its worker concurrency defaults to 1; its docs advise raising it
for I/O-bound async tasks, so the one-process drain runs with 1 and with 16. Serial jobs share a
``lock`` (procrastinate runs jobs with the same lock one at a time, in order).

Its tables live in the schema ``procr`` of the ``bench`` database (through ``search_path``)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.metadata import version
from typing import Any
from urllib.parse import quote

import anyio

from ._db import PgProbe, pg_dsn, recreate_pg_schema
from ._jobs import ENTRYPOINT, SERIAL_WORKER, hooks
from ._subject import Subject

SCHEMA = "procr"
#: the concurrency of every procrastinate worker except the c1 drain
CONCURRENCY = 16


def conninfo() -> str:
    return f"{pg_dsn()}?options={quote(f'-c search_path={SCHEMA}')}"


def make_app() -> tuple[Any, Any]:
    """The app and its one task."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo()))

    @app.task(name=ENTRYPOINT)
    async def noop(n: int, t: float = 0.0) -> None:
        hooks.start(n, t)

    return app, noop


class ProcrastinateSubject(Subject):
    key = "procrastinate"
    label = f"procrastinate {version('procrastinate')}"
    peer = True
    # ~0.5k jobs/s on this kind of machine: draining 10k would take most of the time budget.
    drain_fraction = 0.2
    drain_concurrency = (1, CONCURRENCY)

    def __init__(self) -> None:
        self._app: Any = None
        self._task: Any = None
        self._opened: Any = None
        self._probe: PgProbe | None = None

    async def close(self) -> None:
        if self._app is not None:
            await self._app.close_async()
            self._app = None
        if self._probe is not None:
            await self._probe.close()
            self._probe = None

    async def reset(self) -> None:
        await self.close()
        await recreate_pg_schema(SCHEMA)
        self._app, self._task = make_app()
        await self._app.open_async()
        await self._app.schema_manager.apply_schema_async()
        self._probe = await PgProbe.connect(schema=SCHEMA)

    @property
    def probe(self) -> PgProbe:
        assert self._probe is not None
        return self._probe

    def _deferrer(self, serial: bool) -> Any:
        return self._task.configure(lock=SERIAL_WORKER) if serial else self._task

    async def enqueue_one(self, n: int, t: float = 0.0, *, serial: bool = False) -> int:
        return int(await self._deferrer(serial).defer_async(n=n, t=t))

    async def enqueue_batch(self, ns: Sequence[int], *, serial: bool = False) -> list[int]:
        ids = await self._deferrer(serial).batch_defer_async(*({"n": n} for n in ns))
        return [int(i) for i in ids]

    def worker_args(self, *, latency: bool, concurrency: int | None, serial: bool) -> list[str]:
        # Serial jobs share a lock, so only one runs at a time: concurrency 1 (with 16, the
        # idle slots wait for the 5 s poll once the lock is released).
        concurrency = 1 if serial else concurrency or CONCURRENCY
        args = ["procrastinate", pg_dsn(), "--concurrency", str(concurrency)]
        return args + (["--latency"] if latency else [])

    async def job_done(self, job_id: int) -> bool:
        sql = "SELECT status::text FROM procrastinate_jobs WHERE id = ?"
        return bool(await self.probe.fetchval(sql, job_id) == "succeeded")

    async def done_count(self) -> int:
        sql = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
        return int(await self.probe.fetchval(sql))

    async def verify(self, expected: int) -> dict[str, Any]:
        left = int(
            await self.probe.fetchval(
                "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
            )
        )
        return {"left_in_queue": left, "succeeded": await self.done_count()}

    @asynccontextmanager
    async def _in_process(self) -> AsyncIterator[None]:
        app = self._app
        async with anyio.create_task_group() as tg:

            async def work() -> None:
                await app.run_worker_async(install_signal_handlers=False)

            tg.start_soon(work)
            await anyio.sleep(0.5)  # let it LISTEN before the first defer
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    def in_process(self) -> AbstractAsyncContextManager[None]:
        return self._in_process()


async def serve(*, latency: bool, concurrency: int) -> None:
    """The worker process: ``app.run_worker_async(concurrency=...)`` until SIGTERM."""
    from ._ours import install_print_hooks

    install_print_hooks(latency)
    app, _task = make_app()
    async with app.open_async(), anyio.create_task_group() as tg:

        async def work() -> None:
            await app.run_worker_async(concurrency=concurrency, install_signal_handlers=False)

        tg.start_soon(work)
        print("ready", flush=True)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        # procrastinate stops gracefully when its worker task is cancelled
        tg.cancel_scope.cancel()
