"""MariaDB/MySQL fast paths: a named query's statements sent as one multi-statement packet (and
what happens when one of them fails), transactions begun with their first query, and
complete_and_claim_jobs, which completes jobs and claims the next ones in one round trip."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiomysql
import aiomysql.connection
import pytest

from asyncjobs import BackgroundJobs, JobOptions
from asyncjobs._sql import parse_queries
from asyncjobs.dialects import Row
from asyncjobs.dialects.mysql import MysqlDialect
from asyncjobs.exceptions import ConfigurationError
from asyncjobs.store import MIGRATIONS
from tests.commands import Add, AddCommand
from tests.db_mysql import connect, query

pytestmark = [pytest.mark.anyio, pytest.mark.dialects("mysql")]
Factory = Callable[..., BackgroundJobs]
NODE = "fast-node"

#: the schema_version rows of a fully migrated database
APPLIED = [(number,) for number in range(1, len(MIGRATIONS) + 1)]
#: a schema version no migration has taken yet
NEXT_VERSION = len(MIGRATIONS) + 1
NEXT_VERSION_ROW = {"version": NEXT_VERSION, "now": datetime(2026, 1, 1, tzinfo=UTC)}


def dialect_of(jobs: BackgroundJobs) -> MysqlDialect:
    assert isinstance(jobs.dialect, MysqlDialect)
    return jobs.dialect


def outcome(job_id: int, attempts: int = 1) -> dict[str, Any]:
    return {
        "id": job_id, "attempts": attempts, "duration_ms": 7, "response": "Add",
        "response_body": '{"total": 2}', "status": "done", "logs": None, "notified_date": None,
    }  # fmt: skip


async def complete_and_claim(
    jobs: BackgroundJobs, done: list[int], limit: int, node: str = NODE, named_only: int = 0
) -> list[Row]:
    params = {
        "outcomes": json.dumps([outcome(i) for i in done]), "node": node,
        "now": datetime.now(UTC), "limit": limit, "named_only": named_only, "skip_named": 0,
    }  # fmt: skip
    async with jobs.dialect.connection() as conn:
        return await conn.fetch("complete_and_claim_jobs", params)


def done_ids(rows: list[Row]) -> list[int]:
    text = rows[0]["done_ids"]
    assert text is None or isinstance(text, str)
    return sorted(json.loads(text)) if text else []


def claimed(rows: list[Row]) -> list[int]:
    return sorted(int(r["id"]) for r in rows if r["id"] is not None)


def add_query(dialect: MysqlDialect, name: str, sql: str) -> None:
    """A test-only named query (the dialect runs any query by name)."""
    dialect.queries.by_name[name] = parse_queries(f"-- name: {name}\n{sql}\n", "test")[name]


@pytest.fixture(params=["compound", "packet"])
def sending(request: pytest.FixtureRequest) -> str:
    """How a query's own transaction is sent: as one compound statement (MariaDB) or as a
    packet of statements between START TRANSACTION and COMMIT (MySQL, or MariaDB when told)."""
    return str(request.param)


async def send_as(dialect: MysqlDialect, sending: str) -> None:
    async with dialect.connection():
        pass  # the first connection tells what the server is
    if sending == "compound" and not dialect.compound_statements:
        pytest.skip("MySQL runs compound statements only in stored programs")
    dialect.compound_statements = sending == "compound"


# -- complete_and_claim_jobs ----------------------------------------------------------------


async def test_completes_and_claims_in_one_call(make_jobs: Factory, dsn: str) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        refs = await jobs.enqueue_many((AddCommand, Add(i, 1)) for i in range(4))
        first = await complete_and_claim(jobs, [], 2)
        assert claimed(first) == [refs[0].id, refs[1].id] and done_ids(first) == []
        assert all(r["state"] == "Started" and r["lease_owner"] == NODE for r in first)
        second = await complete_and_claim(jobs, [refs[0].id, refs[1].id], 5)
        assert done_ids(second) == [refs[0].id, refs[1].id]
        assert second[0]["dependents"] == 0
        assert claimed(second) == [refs[2].id, refs[3].id]
        assert {r["attempts"] for r in second} == {1}
        for ref in refs[:2]:
            result = await jobs.get_job(ref.id)
            assert result is not None and result.completed is not None
            assert result.summary.state == "Completed" and result.summary.duration_ms == 7
            assert result.completed.status == "done" and result.completed.progress == 1.0
        summaries = await query(
            dsn, "SELECT state, attempts, started_date IS NOT NULL FROM job_summary WHERE id = %s",
            refs[2].id,
        )  # fmt: skip
        assert summaries == [("Started", 1, 1)]
        assert await query(dsn, "SELECT COUNT(*) FROM background_job") == [(2,)]


async def test_a_named_workers_next_job_is_claimed_in_the_same_call(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        serial = JobOptions(worker="serial")
        refs = await jobs.enqueue_many((AddCommand, Add(i, 1), serial) for i in range(3))
        rows = await complete_and_claim(jobs, [], 10)
        assert claimed(rows) == [refs[0].id]  # one job of a worker at a time
        assert claimed(await complete_and_claim(jobs, [], 10)) == []  # it still runs
        rows = await complete_and_claim(jobs, [refs[0].id], 10)
        assert done_ids(rows) == [refs[0].id] and claimed(rows) == [refs[1].id]
        rows = await complete_and_claim(jobs, [refs[1].id], 10, named_only=1)
        assert claimed(rows) == [refs[2].id]


async def test_nothing_queued_gives_one_row_of_nulls(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        rows = await complete_and_claim(jobs, [], 10)
        assert len(rows) == 1
        assert rows[0]["done_ids"] is None and rows[0]["dependents"] == 0
        assert rows[0]["id"] is None and rows[0]["state"] is None
        ref = await jobs.enqueue_command(AddCommand, Add(1, 1))
        assert claimed(await complete_and_claim(jobs, [], 10)) == [ref.id]
        rows = await complete_and_claim(jobs, [ref.id], 0)  # a pure finish claims nothing
        assert rows == [{"done_ids": f"[{ref.id}]", "dependents": 0}]  # the report alone


async def test_a_pure_claim_or_finish_sends_only_its_part(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        query = dialect_of(jobs).prepared("complete_and_claim_jobs", {})
        values = {"outcomes": json.dumps([outcome(1)]), "limit": 5}
        both = query.for_values(values).packet
        claim = query.for_values({**values, "outcomes": "[]"}).packet
        finish = query.for_values({**values, "limit": 0}).packet
        claims = "INTO @asyncjobs_claimed"
        assert "INSERT INTO completed_job" in both and claims in both
        assert "INSERT INTO completed_job" not in claim and claims in claim
        assert "INSERT INTO completed_job" in finish and claims not in finish
        assert "b.*" in both and "b.*" in claim and "b.*" not in finish
        assert len(query.statements) > len(both.split(";\n")) > len(claim.split(";\n"))


async def test_a_pure_claim_does_not_report_an_earlier_calls_completions(
    make_jobs: Factory,
) -> None:
    """The completion's statements, left out of a pure claim, set the variables the report
    reads: they are reset first, or the report would repeat the last call's on the connection."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        ref = await jobs.enqueue_command(AddCommand, Add(1, 1))
        params = {"node": NODE, "now": datetime.now(UTC), "named_only": 0, "skip_named": 0}
        async with jobs.dialect.connection() as conn:
            rows = await conn.fetch(
                "complete_and_claim_jobs", {**params, "outcomes": "[]", "limit": 1}
            )
            assert claimed(rows) == [ref.id]
            finish = {**params, "outcomes": json.dumps([outcome(ref.id)]), "limit": 0}
            assert done_ids(await conn.fetch("complete_and_claim_jobs", finish)) == [ref.id]
            rows = await conn.fetch(
                "complete_and_claim_jobs", {**params, "outcomes": "[]", "limit": 1}
            )
            assert rows[0]["done_ids"] is None and claimed(rows) == []


async def test_a_guard_must_name_a_parameter_of_its_query(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        dialect = dialect_of(jobs)
        text = "-- name: guarded\n/* only if :missing */ SELECT :present;\nSELECT 1;\n"
        dialect.queries.by_name.update(parse_queries(text, "guarded.sql"))
        with pytest.raises(ConfigurationError, match="only if :missing"):
            dialect.prepared("guarded", {})


async def test_a_job_another_node_holds_is_not_completed(make_jobs: Factory, dsn: str) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        mine, theirs = await jobs.enqueue_many([(AddCommand, Add(1, 1)), (AddCommand, Add(2, 2))])
        assert claimed(await complete_and_claim(jobs, [], 1)) == [mine.id]
        assert claimed(await complete_and_claim(jobs, [], 1, node="other")) == [theirs.id]
        rows = await complete_and_claim(jobs, [mine.id, theirs.id], 10)
        assert done_ids(rows) == [mine.id] and claimed(rows) == []
        assert await query(dsn, "SELECT id, state, lease_owner FROM background_job") == [
            (theirs.id, "Started", "other")
        ]
        assert await query(dsn, "SELECT state FROM job_summary WHERE id = %s", theirs.id) == [
            ("Started",)
        ]


async def test_dependents_are_reported_and_claimed_next(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        parent = await jobs.enqueue_command(AddCommand, Add(1, 1))
        child = await jobs.enqueue_command(AddCommand, Add(2, 2), JobOptions(depends_on=parent.id))
        assert claimed(await complete_and_claim(jobs, [], 10)) == [parent.id]
        rows = await complete_and_claim(jobs, [parent.id], 10)
        assert done_ids(rows) == [parent.id] and rows[0]["dependents"] == 1
        # The claim of the same call already sees the parent completed.
        assert claimed(rows) == [child.id]


async def test_a_serial_workers_claim_reads_a_few_rows_however_long_its_queue(
    make_jobs: Factory, dsn: str
) -> None:
    """The named-worker claim finds the worker's head and its running jobs by index probes:
    with 1 500 jobs queued for one worker, no table access reads more than a couple of rows."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        serial = JobOptions(worker="serial")
        for first in range(0, 1500, 500):
            await jobs.enqueue_many(
                (AddCommand, Add(i, 1), serial) for i in range(first, first + 500)
            )
        assert claimed(await complete_and_claim(jobs, [], 10)) == [1]
        statements = dialect_of(jobs).statements("complete_and_claim_jobs", {})
        params = {
            "outcomes": json.dumps([outcome(1)]), "node": NODE,
            "now": datetime.now(UTC).replace(tzinfo=None), "limit": 10, "named_only": 0,
            "skip_named": 0,
        }  # fmt: skip
        conn = await connect(dsn, autocommit=False)
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT VERSION()")
                if "MariaDB" not in str((await cur.fetchone())[0]):
                    # Rows read per table come from MariaDB's ANALYZE <statement>; MySQL 8 has
                    # no such count (its plans are checked by the EXPLAIN test in test_mysql.py).
                    pytest.skip("per-table rows read are reported by MariaDB only")
                await conn.begin()
                reads: list[tuple[str, float]] = []
                for sql in statements:
                    if sql.startswith(("SELECT", "UPDATE", "DELETE", "INSERT")):
                        await cur.execute("ANALYZE " + sql, params)
                        names = [d[0] for d in cur.description]
                        for row in await cur.fetchall():
                            found = dict(zip(names, row, strict=True))
                            if found["r_rows"] is not None:
                                reads.append((str(found["table"]), float(found["r_rows"])))
                    else:
                        await cur.execute(sql, params)
                await conn.rollback()
        finally:
            conn.close()
    assert reads and max(rows for _, rows in reads) <= 2, reads


# -- one packet per query -------------------------------------------------------------------


@pytest.mark.parametrize("last", ["INSERT", "SELECT"])
async def test_a_failing_statement_rolls_back_the_whole_query(
    make_jobs: Factory, dsn: str, sending: str, last: str
) -> None:
    """Whichever way the statements go (a query ending with a SELECT is a compound statement
    on MariaDB), a failing one rolls back those before it and leaves the connection clean."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        dialect = dialect_of(jobs)
        await send_as(dialect, sending)
        add_query(
            dialect,
            "twice",
            "INSERT INTO job_worker (name) VALUES ('a');\n"
            "INSERT INTO job_worker (name) VALUES ('a');\n"
            + (
                "INSERT INTO job_worker (name) VALUES ('b');"
                if last == "INSERT"
                else "SELECT name FROM job_worker;"
            ),
        )
        compound = dialect.prepared("twice", {}).compound
        assert (compound is not None) == (last == "SELECT")
        for _ in range(3):  # the same pooled connection, reused cleanly each time
            async with dialect.connection() as conn:
                with pytest.raises(aiomysql.IntegrityError):
                    await conn.execute("twice")
                assert (await conn.fetch("get_schema_version"))[0]["version"] == len(MIGRATIONS)
        assert await query(dsn, "SELECT name FROM job_worker") == []
        assert dialect.statistics()["pool_size"] == 1  # never dropped: a server error
        # Inside a transaction the error leaves it to the caller, who rolls back.
        with pytest.raises(aiomysql.IntegrityError):
            async with dialect.transaction() as tx:
                await tx.execute("twice")
        assert await query(dsn, "SELECT name FROM job_worker") == []


async def test_rows_and_counts_are_those_of_the_last_statement(
    make_jobs: Factory, sending: str
) -> None:
    """In a transaction (a packet) and in a query's own transaction (a compound statement on
    MariaDB, which sends the rows of every SELECT without INTO)."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        dialect = dialect_of(jobs)
        await send_as(dialect, sending)
        add_query(
            dialect,
            "last",
            "SELECT 1 AS a UNION ALL SELECT 2;\n"
            "INSERT INTO job_worker (name) VALUES (CONCAT(:prefix, 'x')), (CONCAT(:prefix, 'y'));\n"
            "SELECT name, NOW(6) AS at FROM job_worker WHERE name LIKE CONCAT(:prefix, '%');",
        )
        add_query(dialect, "count", "SELECT 1 AS a;\nUPDATE job_worker SET name = name;")
        async with dialect.transaction() as tx:
            rows = await tx.fetch("last", {"prefix": "t"})
            assert sorted(r["name"] for r in rows) == ["tx", "ty"]
            assert all(r["at"].tzinfo is UTC for r in rows)
            assert await tx.execute("count") == 2
        async with dialect.connection() as conn:
            rows = await conn.fetch("last", {"prefix": "c"})
            assert sorted(r["name"] for r in rows) == ["cx", "cy"]
            assert all(r["at"].tzinfo is UTC for r in rows)
            assert await conn.execute("last", {"prefix": "e"}) == 2
            assert await conn.execute("count") == 6


async def test_a_closing_last_insert_id_is_answered_not_sent(
    make_jobs: Factory, dsn: str, sending: str
) -> None:
    """A query's closing ``SELECT LAST_INSERT_ID() AS id, :param AS name`` is answered by the
    dialect from the INSERTs' replies (or, in a compound statement, from the id alone), as the
    server would answer it: the first id of the last INSERT that made ids (a later INSERT into
    a table without auto-increment makes none), on the pool's connections (one packet or one
    compound statement) and on an application's (a round trip each)."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        dialect = dialect_of(jobs)
        await send_as(dialect, sending)
        await query(dsn, "CREATE TABLE made (id BIGINT AUTO_INCREMENT PRIMARY KEY, tag TEXT)")
        inserts = (
            "INSERT INTO made (tag) VALUES (:tag), (:tag);\n"
            "INSERT INTO job_worker (name) VALUES (:tag);\n"
        )
        add_query(dialect, "answered", inserts + "SELECT LAST_INSERT_ID() AS id, :tag AS tag;")
        add_query(dialect, "asked", inserts + "SELECT LAST_INSERT_ID() + 0 AS id, :tag AS tag;")
        assert "LAST_INSERT_ID() AS" not in dialect.prepared("answered", {}).wrapped
        assert "LAST_INSERT_ID() + 0" in dialect.prepared("asked", {}).wrapped

        async def first_id(tag: str) -> int:
            rows = await query(dsn, "SELECT MIN(id) FROM made WHERE tag = %s", tag)
            return int(rows[0][0])

        async with dialect.connection() as conn:
            assert await conn.fetch("asked", {"tag": "server"}) == [
                {"id": await first_id("server"), "tag": "server"}
            ]
            assert await conn.fetch("answered", {"tag": "pool"}) == [
                {"id": await first_id("pool"), "tag": "pool"}
            ]
        app = await connect(dsn, autocommit=False)
        try:
            await app.begin()
            async with dialect.adopt(app) as conn:
                rows = await conn.fetch("answered", {"tag": "app"})
            await app.commit()
        finally:
            app.close()
        assert rows == [{"id": await first_id("app"), "tag": "app"}]


async def test_a_group_is_written_out_per_row_with_its_values_escaped(
    make_jobs: Factory, dsn: str, sending: str
) -> None:
    """``/* each :rows */ (...)``: one multi-row INSERT, whose values arrive exactly as given
    (quotes, backslashes, percent signs, pyformat look-alikes, emoji, NULL, times), in one
    query with other parameters and with a second group of the same rows."""
    tricky = [
        "it's", "back\\slash", "100% %s %(tag)s %%", "🎉 ключ", "", None, "x" * 100_000,
        "/*each:1*/ ') --",  # the dialect's own placeholder for a group, and a quote
    ]  # fmt: skip
    moment = datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=UTC)
    rows = [{"tag": tag, "n": n, "at": moment} for n, tag in enumerate(tricky)]
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        dialect = dialect_of(jobs)
        await send_as(dialect, sending)
        await query(dsn, "CREATE TABLE made (n INT PRIMARY KEY, tag LONGTEXT, at DATETIME(6))")
        add_query(
            dialect,
            "fill",
            "INSERT INTO made (n, tag, at) VALUES /* each :rows */ (:n, :tag, :at);\n"
            "SELECT n, tag, at FROM made\n"
            "WHERE n IN (/* each :rows */ (:n)) AND n >= :base ORDER BY n;",
        )
        assert dialect.queries["fill"].params == ("rows", "base")  # a row's are not the query's
        async with dialect.connection() as conn:
            found = await conn.fetch("fill", {"rows": rows, "base": 1})
        assert found == [{"n": n, "tag": tag, "at": moment} for n, tag in enumerate(tricky)][1:]
        async with dialect.connection() as conn:
            with pytest.raises(ConfigurationError, match="'each :rows' needs at least one row"):
                await conn.fetch("fill", {"rows": [], "base": 0})


async def test_a_transaction_begins_with_its_first_query(
    make_jobs: Factory, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        dialect = dialect_of(jobs)
        async with dialect.transaction() as tx:  # the pooled connection is set up here
            await tx.fetch("newest_job_id")
        sent: list[object] = []
        real = aiomysql.connection.Connection._execute_command

        async def spy(self: Any, command: int, sql: object) -> None:
            sent.append(sql)
            await real(self, command, sql)

        monkeypatch.setattr(aiomysql.connection.Connection, "_execute_command", spy)
        async with dialect.transaction():
            pass
        assert sent == []  # nothing sent, nothing to commit
        async with dialect.transaction() as tx:
            await tx.fetch("newest_job_id")
        assert sent  # (the spy sees what is sent)
        monkeypatch.undo()

        async def fail_after_a_write() -> None:
            async with dialect.transaction() as tx:
                await tx.execute("set_schema_version", NEXT_VERSION_ROW)
                raise RuntimeError("the caller fails")

        with pytest.raises(RuntimeError):
            await fail_after_a_write()
        assert await query(dsn, "SELECT version FROM schema_version") == APPLIED
        async with dialect.transaction() as tx:
            await tx.execute("set_schema_version", NEXT_VERSION_ROW)
            # isolated until commit
            assert await query(dsn, "SELECT version FROM schema_version") == APPLIED
        assert await query(dsn, "SELECT version FROM schema_version") == [*APPLIED, (NEXT_VERSION,)]


async def test_executemany_sends_updates_together(make_jobs: Factory, dsn: str) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        refs = await jobs.enqueue_many((AddCommand, Add(i, 1)) for i in range(300))
        assert len((await jobs.store.claim("n1", 300)).jobs) == 300
        updates = [
            {"id": ref.id, "progress": 0.5, "status": f"s{ref.id}", "logs": "l%", "logs_at": 0,
             "now": datetime.now(UTC), "node": "n1"}
            for ref in refs
        ]  # fmt: skip
        await jobs.store.update_progress(updates)
        rows = await query(dsn, "SELECT id, status, logs FROM background_job ORDER BY id")
    assert rows == [(ref.id, f"s{ref.id}", "l%") for ref in refs]
