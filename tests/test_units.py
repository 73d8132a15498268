"""Pure parts: DSNs, backoff, options, the public surface."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st

import asyncjobs
from asyncjobs import BackgroundJobs, JobOptions
from asyncjobs._ref_ids import new_ref_id
from asyncjobs._retry import retry_backoff
from asyncjobs.dialects import parse_dsn
from asyncjobs.dialects._base import BaselineRead, ChangeWatch, NewJobIds, WatchedIds
from asyncjobs.exceptions import (
    AsyncJobsError,
    ConfigurationError,
    InvalidDsnError,
    InvalidOptionsError,
    MissingDriverError,
)
from tests.commands import Add, AddCommand

SPEC_NAMES = {
    "BackgroundJobs", "JobOptions", "JobRef", "JobResult", "JobState", "BackgroundJob",
    "Schedule", "CronExpression", "AsyncCommand", "AsyncCommandWithResult", "SyncCommand",
    "SyncCommandWithResult", "current_job", "job_logger", "AsyncJobsError", "CronFormatError",
}  # fmt: skip


def test_public_names_include_the_spec_and_resolve() -> None:
    assert set(asyncjobs.__all__) >= SPEC_NAMES
    assert len(asyncjobs.__all__) == len(set(asyncjobs.__all__))
    for name in asyncjobs.__all__:
        assert getattr(asyncjobs, name) is not None
    # every error a user may catch, from the package itself
    errors = {name for name in dir(asyncjobs.exceptions) if name.endswith("Error")}
    assert errors <= set(asyncjobs.__all__)


@pytest.mark.parametrize(
    ("dsn", "dialect", "database", "host", "port", "user"),
    [
        ("sqlite:///jobs.db", "sqlite", "jobs.db", None, None, None),
        ("sqlite:////var/lib/jobs.db", "sqlite", "/var/lib/jobs.db", None, None, None),
        # percent-escapes are decoded, as in the other URLs
        ("sqlite:///my%20jobs%3F.db", "sqlite", "my jobs?.db", None, None, None),
        ("postgresql://u:p%40ss@db.local:5433/app", "postgres", "app", "db.local", 5433, "u"),
        ("postgres://db/app?schema=jobs", "postgres", "app", "db", None, None),
        ("mysql://root@127.0.0.1:3306/test", "mysql", "test", "127.0.0.1", 3306, "root"),
        ("mariadb://root@localhost/test", "mysql", "test", "localhost", None, "root"),
        ("mssql://sa:pw@sql/jobs", "mssql", "jobs", "sql", None, "sa"),
    ],
)
def test_dsn_parsing(
    dsn: str, dialect: str, database: str, host: str | None, port: int | None, user: str | None
) -> None:
    parsed = parse_dsn(dsn)
    assert (parsed.dialect, parsed.database, parsed.host, parsed.port, parsed.user) == (
        dialect, database, host, port, user,
    )  # fmt: skip
    if "p%40ss" in dsn:
        assert parsed.password == "p@ss" and "p@ss" not in repr(parsed)


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("oracle://x/y", "unknown DSN scheme 'oracle'"),
        ("jobs.db", "expected a URL"),
        ("sqlite://jobs.db", "write sqlite:///relative.db"),
        ("sqlite:///", "no database file"),
        ("sqlite:///%ff.db", "not UTF-8 once decoded"),
        ("postgresql://host:notaport/db", "invalid DSN"),
        # Errors end up in logs: never with a password
        ("postgresql://u:s3cret@host:notaport/db", r"'postgresql://u:\*\*\*@host:notaport/db'"),
        ("oracle://u:s3cret@x/y?password=s3cret", r"'oracle://u:\*\*\*@x/y\?password=\*\*\*'"),
    ],
)
def test_bad_dsn_is_a_clear_error(dsn: str, message: str) -> None:
    with pytest.raises(InvalidDsnError, match=message) as info:
        BackgroundJobs(dsn)
    assert "s3cret" not in str(info.value)


def test_missing_driver_names_the_pip_extra() -> None:
    with pytest.raises(MissingDriverError, match=r"pip install 'asyncjobs\[mssql\]'") as info:
        BackgroundJobs("mssql://sa:pw@localhost/jobs")
    assert isinstance(info.value, ImportError) and isinstance(info.value, AsyncJobsError)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("max_concurrency", 0),
        ("poll_interval", timedelta(0)),
        ("lease_duration", timedelta(seconds=-1)),
        ("lease_duration", timedelta(days=1, seconds=1)),
        ("retry_delay", timedelta(seconds=-1)),
        ("retention_months", 0),
        ("change_poll_interval", timedelta(0)),
    ],
)
def test_bad_settings_are_configuration_errors(setting: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        BackgroundJobs("sqlite:///x.db", **{setting: value})  # type: ignore[arg-type]


@given(attempt=st.integers(1, 60), base_ms=st.integers(1, 10_000), seed=st.integers())
def test_backoff_is_exponential_capped_and_jittered(attempt: int, base_ms: int, seed: int) -> None:
    base = timedelta(milliseconds=base_ms)
    cap = timedelta(minutes=5)
    delay = retry_backoff(attempt, base, cap, random.Random(seed))
    full = min(base * 2 ** min(attempt - 1, 30), cap)
    assert full / 2 <= delay <= full


def test_zero_base_retries_at_once() -> None:
    assert retry_backoff(5, timedelta(0), timedelta(minutes=1)) == timedelta(0)


def test_ref_ids_are_32_hex_digits_time_first_and_never_repeat() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_ref_id() for _ in range(3 * 256 + 7)]  # across refills of the buffer
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    assert all(len(ref) == 32 and int(ref, 16) >= 0 for ref in ids)
    # The first 12 digits are the creation time in ms, so later ids sort after earlier ones.
    stamps = [int(ref[:12], 16) for ref in ids]
    assert before <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= after
    # The rest is random: ids of one millisecond differ there, in no particular order.
    tails = [ref[12:] for ref in ids]
    assert len(set(tails)) == len(tails) and tails != sorted(tails)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_draws_ref_ids_of_its_own() -> None:
    new_ref_id()  # the buffer now holds ids the parent has not handed out yet
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write_end, new_ref_id().encode())
        os._exit(0)
    os.close(write_end)
    child_id = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    parent_ids = {new_ref_id() for _ in range(256)}
    assert len(child_id) == 32 and child_id not in parent_ids


@pytest.mark.anyio
async def test_a_watch_of_new_job_ids_wakes_for_others_jobs_and_closes_its_connection() -> None:
    """The watch MySQL and SQL Server share, over stand-in reads (no database: what is under
    test is the watch's logic; the dialects' reads run live in the wake-up contract tests):
    the first read is the baseline, a job another process inserted wakes, one this process
    inserted does not, a failed job requeued (under its old id) wakes, and a driver that
    closes asynchronously is closed when the watch ends."""
    ids: list[int] = [5]
    requeues = [0]
    closed: list[str] = []
    woken: list[str] = []

    async def connect() -> str:
        return "conn"

    async def newest(conn: str) -> WatchedIds:
        return WatchedIds(frozenset({max(ids)}), requeues[0])

    async def visible(conn: str, after: int, skipped: list[int]) -> WatchedIds:
        return WatchedIds(frozenset(i for i in ids if i > after or i in skipped), requeues[0])

    async def close(conn: str) -> None:
        await anyio.lowlevel.checkpoint()
        closed.append(conn)

    judge = NewJobIds()
    watch = judge.watching(
        "test", 0.005, woken.append, connect=connect, newest=newest, visible=visible, close=close
    )
    async with watch:
        with anyio.fail_after(5):
            while judge.highest is None:
                await anyio.sleep(0.005)
        judge.inserted_here([6])
        ids.append(6)  # this process's own job
        await anyio.sleep(0.1)
        assert woken == []
        ids.append(7)  # another process's job
        with anyio.fail_after(5):
            while not woken:
                await anyio.sleep(0.005)
        requeues[0] += 1  # job 5 failed and was requeued by another process
        with anyio.fail_after(5):
            while len(woken) < 2:
                await anyio.sleep(0.005)
        await anyio.sleep(0.05)
    assert woken == ["", ""] and closed == ["conn"] and judge.watches == 0


def test_new_job_ids_wait_for_an_insert_in_flight_to_name_its_own() -> None:
    """An insert of this process is visible from its commit, before its ids come back: while
    one is in flight, ids not known as ours are judged at a later read (a few at most), so our
    own job wakes nobody, and another process's still does."""
    judge = NewJobIds()
    judge.watches = 1

    def seen(job_id: int) -> WatchedIds:
        return WatchedIds(frozenset({job_id}), 0)

    assert judge(BaselineRead(WatchedIds(frozenset({10}), 0))) is False
    with judge.inserting():
        # committed, reply not back yet: 11 is ours, but not known as ours
        assert judge(seen(11)) is False and judge.highest == 10
        judge.inserted_here([11])
    assert judge(seen(11)) is False and judge.highest == 11
    # Another process's job, while an insert of ours never comes back: judged all the same.
    with judge.inserting():
        reads = [judge(seen(12)) for _ in range(5)]
    assert reads == [False, False, False, True, False] and judge.highest == 12
    # An id of ours seen skipped (another process's newer one committed first, and our insert
    # took longer than the reads it may put off) is ours once it is known.
    with judge.inserting():
        reads = [judge(seen(14)) for _ in range(4)]
        assert reads == [False, False, False, True] and sorted(judge.skipped) == [13]
        judge.inserted_here([13])
    assert judge(seen(13)) is False and judge.skipped == {} and judge.own == set()


def test_new_job_ids_hear_of_a_requeue_once_its_count_can_be_read() -> None:
    """A requeue under way holds the count (SQL Server reads past it): no news then, and news
    once it reads the new count; an unchanged count is no news."""
    judge = NewJobIds()
    judge.watches = 1
    assert judge(BaselineRead(WatchedIds(frozenset(), 3))) is False and judge.highest == 0
    assert judge(WatchedIds(frozenset(), None)) is False
    assert judge(WatchedIds(frozenset(), 4)) is True
    assert judge(WatchedIds(frozenset(), 4)) is False
    # Seen while an insert of ours is in flight (another process's id beside it): put off
    # with the ids, and news once judged.
    with judge.inserting():
        assert judge(WatchedIds(frozenset({1}), 5)) is False and judge.requeues == 4
        judge.inserted_here([1])
    assert judge(WatchedIds(frozenset({1}), 5)) is True and judge.requeues == 5
    # A first read that could not see the count (a requeue held it): the next one is news.
    judge = NewJobIds()
    assert judge(BaselineRead(WatchedIds(frozenset(), None))) is False
    assert judge(WatchedIds(frozenset(), 7)) is True


@pytest.mark.anyio
async def test_a_change_watch_outlives_a_connection_that_fails_to_close() -> None:
    """A read fails, and so does closing its connection (a driver's broken socket): the watch
    connects afresh and still wakes, never raising into the process's task group."""
    connections: list[int] = []
    woken: list[str] = []
    version = [1]

    async def connect() -> int:
        connections.append(len(connections))
        return connections[-1]

    async def read(conn: int) -> object:
        if conn == 0:
            raise ConnectionError("the server went away")
        return version[0]

    async def close(conn: int) -> None:
        raise OSError("already broken")

    async with ChangeWatch("test", 0.005, woken.append, connect=connect, read=read, close=close):
        with anyio.fail_after(10):
            while len(connections) < 2:
                await anyio.sleep(0.005)
            await anyio.sleep(0.05)  # the baseline read on the new connection
            version[0] = 2
            while not woken:
                await anyio.sleep(0.005)
    assert woken == [""]


@dataclass
class _Note:
    text: str


class _Text:
    """A meta value JSON cannot hold: it is stored as its text."""

    def __str__(self) -> str:
        return "a\x00b"


_NAME_OPTIONS = ("worker", "tag", "batch_id", "ref_id", "callback", "created_by", "user_id")


def _circular() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": 2**70}, "priority must be within"),
        ({"priority": True}, "priority must be an int"),
        ({"retry_limit": 2.5}, "retry_limit must be an int"),
        ({"retry_limit": "3"}, "retry_limit must be an int"),
        ({"parent_id": "1"}, "parent_id must be an int"),
        ({"depends_on": 0}, "depends_on must be within"),
        ({"depends_on": 2**63}, "depends_on must be within"),
        ({"run_after": "2030-01-01T00:00:00+00:00"}, "run_after must be a datetime"),
        ({"run_after": datetime(1, 1, 1, tzinfo=UTC)}, "within the years 1000-9998"),
        ({"run_after": datetime(999, 12, 31, tzinfo=UTC)}, "within the years 1000-9998"),
        ({"timeout": 5}, "timeout must be a timedelta"),
        ({"timeout": timedelta(days=400)}, "at most 366 days"),
        ({"args": ["a"]}, "args must be a mapping"),
        ({"meta": [1, 2]}, "meta must be a mapping"),
        ({"args": {"k": "\ud800"}}, "not valid Unicode"),
        ({"tag": "\ud800"}, "not valid Unicode"),
        ({"worker": "a\x00b"}, "NUL"),
        ({"meta": {"note": "a\x00b"}}, "meta must not contain NUL"),
        ({"meta": {"deep": [{"k\x00": 1}]}}, "meta must not contain NUL"),
        ({"meta": {"s": ["\udc80"]}}, "meta is not valid Unicode"),
        # what the JSON encoder writes, not only dicts, lists and tuples
        ({"meta": {"k": {"a\x00b"}}}, "meta must not contain NUL"),
        ({"meta": {"k": frozenset({"\x00"})}}, "meta must not contain NUL"),
        ({"meta": {"k": _Note("a\x00b")}}, "meta must not contain NUL"),
        ({"meta": {"k": _Text()}}, "meta must not contain NUL"),
        ({"meta": {"k": {"\udc80"}}}, "meta is not valid Unicode"),
        ({"meta": {"k": _circular()}}, "meta cannot be stored as JSON"),
        *(
            ({name: "x" * 256}, f"{name} must be at most 255 characters, got 256")
            for name in _NAME_OPTIONS
        ),
        # 228 characters, 256 UTF-16 units: SQL Server's nvarchar(255) would not hold it
        *(
            ({name: "x" * 200 + "\U0001f600" * 28}, f"{name} must be at most 255 characters, a")
            for name in _NAME_OPTIONS
        ),
        # MySQL would take "w " for "w"
        *(({name: "w "}, f"{name} must not end with a space") for name in _NAME_OPTIONS),
        ({"reply_to": 5}, "reply_to must be a non-empty string"),
        ({"reply_to": ""}, "reply_to must be a non-empty string"),
        ({"reply_to": "https://x.invalid/" + "x" * 8192}, "reply_to must be at most 8192"),
        # A ReplyTo that could never be sent is refused before the job is stored
        ({"reply_to": "not a url"}, "reply_to: ReplyTo contains whitespace"),
        ({"reply_to": "ftp://x.invalid/cb"}, "reply_to: ReplyTo URL has an unknown scheme"),
        ({"reply_to": "https://u:p@x.invalid/cb"}, "reply_to: ReplyTo URL contains credentials"),
        ({"reply_to": "$1TOKEN@https://x.invalid/cb"}, "no environment variable name"),
    ],
)
def test_bad_options_fail_where_they_are_made(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidOptionsError, match=message):
        JobOptions(**options)


@pytest.mark.parametrize(
    "reply_to",
    [
        "alice:Sup3rSecret@https://hooks.example/x\x00",
        "alice:Sup3rSecret@https://hooks.example/" + "x" * 8192,
        "$Sup3rSecret!@https://hooks.example/x",
    ],
)
def test_a_bad_reply_to_is_not_repeated_in_its_error(reply_to: str) -> None:
    """A ReplyTo may hold a password: the error (logged, shown in the admin) does not."""
    with pytest.raises(InvalidOptionsError, match="reply_to") as refused:
        JobOptions(reply_to=reply_to)
    assert "Sup3rSecret" not in str(refused.value)


def test_a_stored_task_whose_options_overflow_is_a_configuration_error() -> None:
    """One unreadable task row is a task this version cannot read, not an error that takes
    every task's listing down."""
    from asyncjobs.scheduler import row_to_task

    for options in ('{"timeout": 1e300}', '{"reply_to": "alice:Sup3rSecret@https://x\\u0000"}'):
        with pytest.raises(AsyncJobsError) as refused:
            row_to_task({"name": "t", "options": options})
        assert "Sup3rSecret" not in str(refused.value)


@pytest.mark.anyio
async def test_the_admin_cache_holds_a_bounded_number_of_rows() -> None:
    """Many large pages, each a different search, are served but not all kept; locks of
    keys no longer computed go."""
    from asyncjobs.web._api import TTLCache

    cache = TTLCache(max_entries=256, max_rows=1_000)

    async def page(rows: int) -> list[int]:
        return list(range(rows))

    for search in range(50):
        assert len(await cache.get(("q", search), 60, lambda: page(300))) == 300
    assert len(cache._entries) == 3 and cache._rows == 900
    assert len(await cache.get("huge", 60, lambda: page(5_000))) == 5_000
    assert "huge" not in cache._entries and cache._rows == 900
    assert await cache.get(("q", 49), 60, lambda: page(1)) == list(range(300))  # still kept
    assert not cache._locks
    cache.clear()
    assert not cache._entries and cache._rows == 0


#: the longest names every database holds, with 4-byte characters (MySQL's VARCHAR counts
#: characters, SQL Server's nvarchar UTF-16 units: two for each of these)
_LONGEST_NAMES = {
    name: name[0] * 145 + "\U0001f600" * 55
    for name in ("worker", "tag", "batch_id", "ref_id", "created_by", "user_id")
}


@pytest.mark.anyio
async def test_the_longest_names_and_any_meta_without_nul_are_stored(
    make_jobs: Callable[..., BackgroundJobs],
) -> None:
    # A backslash before "u0000" is no NUL; a set is stored as a list.
    meta = {"path": "C:\\u0000", "tags": {"a"}, "note": _Note("b")}
    # The longest reply_to, of 4-byte characters: MySQL's TEXT holds it
    reply_to = "https://example.invalid/" + "\U0001f600" * (8192 - 24)
    options = JobOptions(**_LONGEST_NAMES, reply_to=reply_to, meta=meta)
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        ref = await jobs.enqueue_command(AddCommand, Add(1, 2), options)
        found = await jobs.get_job(ref.id)
    assert found is not None and found.job is not None
    assert {name: getattr(found.job, name) for name in _LONGEST_NAMES} == _LONGEST_NAMES
    assert found.job.meta == {"path": "C:\\u0000", "tags": ["a"], "note": {"text": "b"}}
    assert found.job.reply_to == reply_to


def test_a_pydantic_request_that_does_not_serialize_is_a_serialization_error() -> None:
    import pydantic

    from asyncjobs._serialization import encode
    from asyncjobs.exceptions import SerializationError

    class Request(pydantic.BaseModel):
        value: Any

    with pytest.raises(SerializationError, match="cannot store a Request as JSON"):
        encode(Request(value=object()))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_concurrency": 2.5}, "max_concurrency must be an int"),
        ({"max_concurrency": 2**70}, "max_concurrency must be an int within 1..100000"),
        ({"max_concurrency": "5"}, "max_concurrency must be an int"),
        ({"max_sync_threads": 0}, "max_sync_threads must be an int"),
        ({"retention_months": 0}, "retention_months must be an int"),
        ({"poll_interval": 1}, "poll_interval must be a timedelta"),
        ({"poll_interval": timedelta(0)}, "poll_interval must be at least 0:00:00.001"),
        ({"poll_interval": timedelta(microseconds=1)}, "poll_interval must be at least"),
        ({"schedule_refresh": timedelta(seconds=-1)}, "schedule_refresh must be at least"),
        ({"shutdown_grace": timedelta(seconds=-1)}, "shutdown_grace must be at least 0:00:00"),
        ({"max_retry_delay": timedelta(seconds=-1)}, "max_retry_delay must be at least"),
        ({"max_retry_delay": timedelta.max}, "max_retry_delay must be at most 365 days"),
        ({"retry_delay": timedelta(days=366)}, "retry_delay must be at most 365 days"),
        ({"default_timeout": timedelta(0)}, "default_timeout must be at least"),
        ({"retry_delay": 1}, "retry_delay must be a timedelta"),
        ({"default_timeout": 60}, "default_timeout must be a timedelta"),
        ({"services": [object()]}, "services must map types"),
        ({"services": {"mailer": object()}}, "services must map types"),
        ({"reply_to_env": "TOKEN"}, "collection of variable names"),
        ({"reply_to_env": [1]}, "collection of variable names"),
        ({"max_concurency": 5}, r"unknown SQLite settings \['max_concurency'\]"),
        ({"execute": "no"}, "execute must be True or False"),
        ({"notifications": 0}, "notifications must be True or False"),
        ({"user_resolver": "users"}, "user_resolver must be a function"),
        ({"clock": 5}, r"clock must have now\(\) and sleep_until\(\)"),
        ({"dialect": "sqlite"}, "dialect must be a Dialect"),
        ({"busy_timeout": "x"}, "busy_timeout must be a number of seconds"),
        ({"busy_timeout": float("nan")}, "busy_timeout must be a number of seconds"),
        ({"change_poll_interval": 0.01}, "change_poll_interval must be a timedelta"),
    ],
)
def test_bad_settings_fail_where_they_are_made(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        BackgroundJobs("sqlite:///unused.db", **settings)


@pytest.mark.parametrize(
    ("dsn", "settings", "message"),
    [
        ("postgresql://u@h/db", {"min_size": "2"}, "min_size must be an int"),
        ("postgresql://u@h/db", {"max_size": 2.5}, "max_size must be an int"),
        (
            "postgresql://u@h/db",
            {"min_size": 3, "max_size": 2},
            "min_size \\(3\\) must not exceed max_size \\(2\\)",
        ),
        ("postgresql://u@h/db", {"schema": 5}, "schema 5 is not a valid PostgreSQL identifier"),
        ("mysql://u@h/db", {"min_size": "2"}, "min_size must be an int"),
        ("mysql://u@h/db", {"deadlock_retries": -1}, "deadlock_retries must be an int"),
        ("mysql://u@h/db", {"connect_timeout": "x"}, "connect_timeout must be a number"),
        ("mysql://u@h/db", {"pool_recycle": None}, "pool_recycle must be a number"),
        ("mysql://u@h/db", {"change_poll_interval": 0.01}, "change_poll_interval must be a"),
    ],
)
def test_bad_dialect_settings_fail_where_they_are_made(
    dsn: str, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        BackgroundJobs(dsn, **settings)


def test_dialect_settings_from_the_dsn_and_the_keywords_are_accepted() -> None:
    mysql: Any = BackgroundJobs("mysql://u@h/db?pool_recycle=-1&max_size=4", min_size=2).dialect
    assert (mysql.max_size, mysql._min_size, mysql._pool_recycle) == (4, 2, -1)
    postgres: Any = BackgroundJobs("postgresql://u@h/db?min_size=0&max_size=3", schema="jobs")
    assert (postgres.dialect._min_size, postgres.dialect._max_size) == (0, 3)
    assert postgres.dialect.schema == "jobs"
    sqlite: Any = BackgroundJobs(
        "sqlite:///unused.db", busy_timeout=5, change_poll_interval=timedelta(seconds=1)
    ).dialect
    assert sqlite._busy_timeout == 5


def test_a_request_with_a_lone_surrogate_is_a_serialization_error() -> None:
    from asyncjobs._serialization import encode
    from asyncjobs.exceptions import SerializationError

    with pytest.raises(SerializationError, match="cannot store a str as JSON"):
        encode("a\udc80b")
