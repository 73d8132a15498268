"""Pooled connections the server dropped while they sat idle, unseen by the pool (a restart
behind a load balancer, a failover): the next query on each fails. A query is sent again on
another connection only when it cannot run twice; on both servers, through a proxy that cuts
its links that way (tests/proxy.py)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest

from asyncjobs import AsyncCommand, BackgroundJobs, JobState, update_status
from asyncjobs.dialects import Dialect, create_dialect
from tests.commands import EVENTS, Add, AddCommand, Sleep, SleepCommand
from tests.proxy import Proxy, proxy

pytestmark = [pytest.mark.anyio, pytest.mark.dialects("postgres", "mysql")]
Factory = Callable[..., BackgroundJobs]
NOW = datetime.now(UTC)
NODE = {"node": "n1", "host": "h", "pid": 1, "now": NOW, "lease_seconds": 0.0}


@asynccontextmanager
async def through_a_proxy(dsn: str) -> AsyncIterator[tuple[str, Proxy]]:
    """``dsn`` made to reach its server through a proxy, and the proxy."""
    parts = urlsplit(dsn)
    assert parts.hostname is not None and parts.port is not None
    async with proxy(parts.hostname, parts.port) as link:
        netloc = parts.netloc.replace(f":{parts.port}", f":{link.port}")
        yield parts._replace(netloc=netloc).geturl(), link


#: a node that notices soon that the database stopped answering, and stops soon
QUICK_TO_NOTICE: dict[str, Any] = {
    "lease_duration": timedelta(seconds=2),
    "poll_interval": timedelta(milliseconds=100),
    "shutdown_grace": timedelta(milliseconds=200),
}


@asynccontextmanager
async def a_node_through_a_proxy(
    make_jobs: Factory, dsn: str, command: type[Any], **settings: Any
) -> AsyncIterator[tuple[BackgroundJobs, Proxy]]:
    """A runtime (not entered yet) running ``command``, whose every connection goes through a
    proxy, and the proxy; the database's schema is made first, directly."""
    async with make_jobs(commands=[command], execute=False):
        pass
    async with through_a_proxy(dsn) as (url, link):
        yield BackgroundJobs(url, commands=[command], **settings), link


@asynccontextmanager
async def proxied(dsn: str, size: int) -> AsyncIterator[tuple[Dialect, Proxy]]:
    """A dialect whose pool holds ``size`` idle connections, all through a proxy, and the
    proxy; the database's schema is made first."""
    async with through_a_proxy(dsn) as (url, link):
        # (PostgreSQL's pool holds two at least: the second is never opened here)
        dialect = create_dialect(url, min_size=1, max_size=max(size, 2))
        await dialect.open()
        try:
            all_out = anyio.Event()
            out = 0

            async def hold() -> None:
                nonlocal out
                async with dialect.transaction() as tx:
                    await tx.fetch("newest_job_id")
                    out += 1
                    if out == size:
                        all_out.set()
                    await all_out.wait()

            async with anyio.create_task_group() as tg:
                for _ in range(size):
                    tg.start_soon(hold)
            assert link.opened == size
            yield dialect, link
        finally:
            await dialect.close()


async def nodes(dsn: str) -> list[Any]:
    dialect = create_dialect(dsn)
    await dialect.open()
    try:
        async with dialect.connection() as conn:
            return [row["id"] for row in await conn.fetch("admin_nodes")]
    finally:
        await dialect.close()


async def test_a_read_is_sent_again_past_every_dropped_connection(
    make_jobs: Factory, dsn: str
) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        ref = await jobs.enqueue_command(AddCommand, Add(1, 2))
    async with proxied(dsn, size=3) as (dialect, link):
        assert await link.cut() == 3
        async with dialect.connection() as conn:
            rows = await conn.fetch("get_summary", {"id": ref.id})
        assert [row["ref_id"] for row in rows] == [ref.ref_id]
        assert link.refused == 3  # every dead one was tried, then a new one


async def test_a_transaction_runs_once_past_every_dropped_connection(
    make_jobs: Factory, dsn: str
) -> None:
    """Nothing of a transaction commits on a connection that drops before its commit, so its
    first query (MySQL) or its BEGIN (PostgreSQL) may go to the next connection."""
    async with make_jobs(commands=[AddCommand], execute=False):
        pass
    async with proxied(dsn, size=3) as (dialect, link):
        await link.cut()
        async with dialect.transaction() as tx:
            assert await tx.execute("renew_node", NODE) == 1
            assert await tx.execute("delete_node", {"node": "n0"}) == 0
        assert link.refused == 3
    assert await nodes(dsn) == ["n1"]


async def test_an_autocommitting_write_on_a_dropped_connection_is_not_sent_again(
    make_jobs: Factory, dsn: str
) -> None:
    """It may have committed before the connection broke: the caller decides (an enqueue
    reads its ref ids back); the dead connection does not go back to the pool."""
    async with make_jobs(commands=[AddCommand], execute=False):
        pass
    async with proxied(dsn, size=1) as (dialect, link):
        await link.cut()
        with pytest.raises(Exception) as failed:  # noqa: PT011 - each driver's own error
            async with dialect.connection() as conn:
                await conn.execute("renew_node", NODE)
        assert dialect.is_disconnect(failed.value) and link.refused == 1
        assert await nodes(dsn) == []
        async with dialect.connection() as conn:
            assert await conn.execute("renew_node", NODE) == 1
        # On a new connection: the dead one is not handed out again. (At least one: the pool
        # may open another as well: one run in about twenty opened three.)
        assert link.opened >= 2
    assert await nodes(dsn) == ["n1"]


# Without the bounds the shutdown waits forever on shielded calls: only a thread ends the test.
@pytest.mark.timeout(150, method="thread")
async def test_a_database_that_stops_answering_does_not_hold_the_shutdown(
    make_jobs: Factory, dsn: str
) -> None:
    """A frozen host, or a network that drops everything: connections stay open and nothing
    comes back. The shutdown still ends (each shielded wait for the database is bounded), and
    leaves the jobs it could not record leased to its node, which another process takes over
    once the node's lease lapses: nothing is lost."""
    async with a_node_through_a_proxy(
        make_jobs,
        dsn,
        SleepCommand,
        shutdown_grace=timedelta(milliseconds=500),
        lease_duration=timedelta(seconds=2),
        poll_interval=timedelta(milliseconds=50),
    ) as (jobs, link):
        async with jobs:
            refs = await jobs.enqueue_many([(SleepCommand, Sleep(0.2)) for _ in range(20)])
            with anyio.fail_after(10):
                while jobs.statistics()["claimed"] < 20:
                    await anyio.sleep(0.01)
            link.freeze()
            await anyio.sleep(0.5)  # the jobs end; their outcomes get no answer
        link.thaw()
    async with make_jobs(commands=[SleepCommand], lease_duration=timedelta(seconds=1)) as jobs:
        with anyio.fail_after(30):
            results = [await jobs.wait_for_job(ref.id) for ref in refs]
    assert [result.state for result in results] == [JobState.COMPLETED] * 20


# Without the bounds the node waits forever on calls that get no answer: a thread ends it.
@pytest.mark.timeout(120, method="thread")
async def test_a_node_whose_queries_in_flight_never_get_an_answer_gets_going_again(
    make_jobs: Factory, dsn: str
) -> None:
    """The database's host vanishes with queries in flight (a failover that moves its address):
    their connections never get an answer, nor a reset, while new connections work. The
    node's claim and lease renewal give up on them in time, and it runs jobs again."""
    async with (
        a_node_through_a_proxy(
            make_jobs,
            dsn,
            SleepCommand,
            **QUICK_TO_NOTICE,
            notifications=False,
        ) as (node, link),
        node,
    ):
        link.lose_open_links()
        await anyio.sleep(1.0)  # the next poll's claim and renewal go out on them
        async with make_jobs(commands=[SleepCommand], execute=False) as producer:
            ref = await producer.enqueue_command(SleepCommand, Sleep(0, "after"))
        with anyio.fail_after(40):  # the bound is 10 s
            result = await node.wait_for_job(ref.id)
    assert result.state is JobState.COMPLETED


class HoldsCommand(AsyncCommand[Sleep]):
    """Sleeps, and tells when it is stopped."""

    async def run(self, request: Sleep) -> None:
        EVENTS.append(("start", request.label, time.monotonic()))
        try:
            await anyio.sleep(request.seconds)
        except anyio.get_cancelled_exc_class():
            EVENTS.append(("stopped", request.label, time.monotonic()))
            raise
        EVENTS.append(("end", request.label, time.monotonic()))


async def test_a_process_cut_off_from_the_database_stops_its_jobs_before_they_run_elsewhere(
    make_jobs: Factory, dsn: str
) -> None:
    """The database goes out of reach of one process alone (its network, say) while its job
    runs. Its lease runs out and another process takes the job back and runs it; the cut-off
    process stopped its own run before that, rather than running the job beside the other
    until it could reach the database again."""
    EVENTS.clear()
    lease = timedelta(seconds=1)
    async with (
        a_node_through_a_proxy(
            make_jobs,
            dsn,
            HoldsCommand,
            lease_duration=lease,
            poll_interval=timedelta(milliseconds=50),
            shutdown_grace=timedelta(milliseconds=200),
        ) as (cut_off, link),
        cut_off,
    ):
        ref = await cut_off.enqueue_command(HoldsCommand, Sleep(4, label="held"))
        with anyio.fail_after(10):
            while not EVENTS:
                await anyio.sleep(0.01)
        link.freeze()
        async with make_jobs(commands=[HoldsCommand], lease_duration=lease) as other:
            with anyio.fail_after(20):
                result = await other.wait_for_job(ref.id)
        link.thaw()
    assert result.state is JobState.COMPLETED and result.summary.attempts == 2
    # The first run stopped before the second started, which ran through.
    assert [event for event, _, _ in EVENTS] == ["start", "stopped", "start", "end"]


# Without the bound the shielded COMMIT waits forever: only a thread ends the test.
@pytest.mark.timeout(60, method="thread")
async def test_a_commit_that_gets_no_answer_ends_and_says_so(make_jobs: Factory, dsn: str) -> None:
    """Shielded (a COMMIT cut off half-way would leave the outcome unknown and the connection
    unusable), it still ends: the connection is closed and the caller hears that the
    transaction may have committed, as when a reply is lost."""
    async with make_jobs(commands=[AddCommand], execute=False):
        pass
    async with proxied(dsn, size=1) as (dialect, link):

        async def write_then_lose_the_server() -> None:
            async with dialect.transaction() as tx:
                await tx.execute("renew_node", NODE)
                link.freeze()

        with pytest.raises(TimeoutError, match=r"COMMIT got no answer.*may have committed"):
            await write_then_lose_the_server()
        link.thaw()
        async with dialect.connection() as conn:  # the pool goes on, with a new connection
            assert await conn.execute("delete_node", {"node": "n0"}) == 0


class ReportsCommand(AsyncCommand[Sleep]):
    """Reports its progress every few milliseconds, then ends."""

    async def run(self, request: Sleep) -> None:
        deadline = time.monotonic() + request.seconds
        while time.monotonic() < deadline:
            update_status(progress=0.5, status=request.label)
            await anyio.sleep(0.01)


@pytest.mark.timeout(120, method="thread")
async def test_a_progress_write_that_gets_no_answer_does_not_hold_up_outcomes(
    make_jobs: Factory, dsn: str
) -> None:
    """The progress writer holds the finisher back while it writes (see _progress_loop): a write
    that never gets an answer, its connection's host gone, gives up in time, and the outcomes
    of jobs that ended meanwhile are recorded."""
    async with (
        a_node_through_a_proxy(
            make_jobs,
            dsn,
            ReportsCommand,
            **QUICK_TO_NOTICE,
        ) as (node, link),
        node,
    ):
        refs = [await node.enqueue_command(ReportsCommand, Sleep(3, "busy")) for _ in range(3)]
        await anyio.sleep(1.2)  # progress writes go out every 0.5 s
        link.lose_open_links()
        async with make_jobs(commands=[ReportsCommand], execute=False) as reader:
            with anyio.fail_after(40):  # the bound is 10 s
                results = [await reader.wait_for_job(ref.id) for ref in refs]
    assert [result.state for result in results] == [JobState.COMPLETED] * 3
