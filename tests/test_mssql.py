"""The SQL Server dialect without a server: every statement of sql/mssql parses as T-SQL, DSNs
become ODBC connection strings, parameters become ODBC markers, driver errors are classified.

The contract suite runs on a real server with ``--dialects mssql`` and ``ASYNCJOBS_MSSQL_DSN``
(see tests/db_mssql.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlglot
from sqlglot import exp

from asyncjobs._sql import convert_params, load_queries, split_statements
from asyncjobs.dialects._dsn import create_dialect, parse_dsn
from asyncjobs.dialects.mssql import (
    MssqlConnection,
    MssqlDialect,
    create,
    native_errors,
    odbc_connection_string,
    to_db_time,
)
from asyncjobs.exceptions import ConfigurationError, InvalidDsnError

QUERIES = load_queries("mssql")
#: what the store fills templates with (validated identifiers only)
TEMPLATES = {"month": "202611", "start": "20261101", "end": "20261201"}
#: Statements sqlglot cannot parse although they are valid T-SQL, with the reason. Empty: every
#: construct in sql/mssql is one sqlglot understands. (It rejects an INSERT with OUTPUT ... INTO
#: a column list, or with a second OUTPUT clause, so the SQL avoids both.)
UNPARSABLE: dict[str, str] = {}


def statements() -> list[tuple[str, int, str]]:
    """(query, index, statement with ? markers) for every statement of every named query."""
    found = []
    for name, query in sorted(QUERIES.items()):
        rendered = query.render(**{k: TEMPLATES[k] for k in query.templates})
        for index, sql in enumerate(split_statements(rendered)):
            found.append((name, index, convert_params(query, "qmark", sql)[0]))
    return found


@pytest.mark.parametrize(
    ("name", "index", "sql"), [pytest.param(*s, id=f"{s[0]}[{s[1]}]") for s in statements()]
)
def test_every_statement_parses_as_tsql(name: str, index: int, sql: str) -> None:
    if f"{name}[{index}]" in UNPARSABLE:
        pytest.xfail(UNPARSABLE[f"{name}[{index}]"])
    parsed = sqlglot.parse(sql, read="tsql", error_level=sqlglot.ErrorLevel.RAISE)
    assert len(parsed) == 1, f"{name}[{index}] is not one statement"
    tree = parsed[0]
    assert tree is not None
    # sqlglot falls back to an opaque Command for syntax it does not know: that is not a parse.
    commands = [node for node in tree.walk() if isinstance(node, exp.Command)]
    assert not commands, f"{name}[{index}]: sqlglot did not understand {commands[0].sql()!r}"
    assert "{" not in sql.replace("N'{", "").replace("'{", ""), "an unfilled template"


def test_the_parse_check_rejects_broken_tsql() -> None:
    for broken in ("SELECT FROM WHERE", "UPDATE SET x = 1", "DELETE FROM t WHERE id = = ?"):
        with pytest.raises(sqlglot.errors.ParseError):
            sqlglot.parse(broken, read="tsql", error_level=sqlglot.ErrorLevel.RAISE)


def test_every_query_is_checked() -> None:
    checked = {name for name, _, _ in statements()}
    assert checked == set(QUERIES)
    assert "complete_and_claim_jobs" in checked


def test_claims_lock_with_readpast_and_return_with_output() -> None:
    claim = QUERIES["complete_and_claim_jobs"].sql
    assert claim.count("WITH (UPDLOCK, READPAST, ROWLOCK") == 4
    assert "OUTPUT inserted.id INTO @done" in claim
    assert "OPENJSON(:outcomes)" in claim
    for name in ("cancel_queued", "request_cancel", "cancel_dependents", "fail_orphans"):
        assert "OUTPUT inserted." in QUERIES[name].sql, name


# -- DSN -> ODBC connection string ---------------------------------------------------------------


def test_dsn_becomes_an_odbc_connection_string() -> None:
    dsn = parse_dsn(
        "mssql://user:pw@host:1433/db?driver=ODBC+Driver+18+for+SQL+Server"
        "&TrustServerCertificate=yes"
    )
    assert odbc_connection_string(dsn) == (
        "DRIVER={ODBC Driver 18 for SQL Server};SERVER=host,1433;DATABASE=db;UID=user;PWD=pw;"
        "TrustServerCertificate=yes"
    )


def test_dsn_defaults_and_quoting() -> None:
    # No port, no driver: the default driver; a password with ; } = is braced and escaped.
    dsn = parse_dsn("mssql://sa:p%3Bw%7Dd%3D@sql.example/jobs")
    assert odbc_connection_string(dsn) == (
        "DRIVER={ODBC Driver 18 for SQL Server};SERVER=sql.example;DATABASE=jobs;UID=sa;"
        "PWD={p;w}}d=}"
    )
    # No credentials (e.g. Authentication=ActiveDirectoryMsi given as an option): none written.
    dsn = parse_dsn("mssql://db.example:1433/jobs?Authentication=ActiveDirectoryMsi")
    assert odbc_connection_string(dsn) == (
        "DRIVER={ODBC Driver 18 for SQL Server};SERVER=db.example,1433;DATABASE=jobs;"
        "Authentication=ActiveDirectoryMsi"
    )


def test_dialect_settings_come_from_the_dsn_and_stay_out_of_the_odbc_string() -> None:
    dialect = create(parse_dsn("mssql://u:p@h/db?max_size=4&deadlock_retries=2&Encrypt=no"))
    assert isinstance(dialect, MssqlDialect)
    assert dialect.deadlock_retries == 2
    assert dialect._max_size == 4
    assert dialect.connection_string.endswith(";Encrypt=no")
    assert "max_size" not in dialect.connection_string
    assert dialect.capabilities.monthly_archive_tables


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("mssql://u:p@host", "needs a database"),
        ("mssql://u:p@/db", "needs a host"),
        ("mssql://u:p@host/db?max_size=many", "max_size='many' is not a number"),
        ("mssql://u:p@host/db?server=other", "conflicts with the DSN's host"),
        ("mssql://u:p@host/db?PWD=x", "conflicts with the DSN's host"),
        ("mssql://u:p@host/db?bad%3Bkey=1", "invalid ODBC keyword"),
        ("mssql://u:p@host/db?Encrypt%0A=1", "invalid ODBC keyword"),
        ("mssql://u:p@host/db?driver=%20", "driver is empty"),
        ("mssql://u:p@host:notaport/db", "invalid DSN"),
    ],
)
def test_bad_dsns_raise_typed_errors(dsn: str, message: str) -> None:
    with pytest.raises(InvalidDsnError, match=message):
        create(parse_dsn(dsn))


def test_bad_settings_raise_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="unknown SQL Server settings"):
        create(parse_dsn("mssql://u:p@h/db"), pool_size=3)
    with pytest.raises(ConfigurationError, match="must not exceed max_size"):
        create(parse_dsn("mssql://u:p@h/db"), min_size=5, max_size=2)
    with pytest.raises(ConfigurationError, match="change_poll_interval must be at least"):
        create(parse_dsn("mssql://u:p@h/db"), change_poll_interval=timedelta(0))


def test_a_change_watch_stands_in_for_notifications() -> None:
    """Another process's enqueue wakes a worker through a watch of new job ids (live: the
    wake-up contract tests); its reads skip rows an uncommitted enqueue holds, not wait."""
    dialect = create(parse_dsn("mssql://u:p@h/db"), change_poll_interval=timedelta(milliseconds=20))
    assert isinstance(dialect, MssqlDialect)
    assert dialect.capabilities.notifications
    assert dialect.change_poll_interval == timedelta(milliseconds=20)
    for name in ("newest_job_id", "visible_job_ids"):
        sql = QUERIES[name].sql
        tables = sql.count("background_job") + sql.count("job_requeues")
        assert tables == sql.count("WITH (READPAST)"), name


# -- parameters ----------------------------------------------------------------------------------


@pytest.fixture
def dialect() -> MssqlDialect:
    return create(parse_dsn("mssql://u:p@h/db"))


def test_single_statement_parameters_become_markers(dialect: MssqlDialect) -> None:
    assert dialect.batch("get_summary", {}) == (
        "SELECT * FROM job_summary WHERE id = ?",
        ("id",),
        False,
    )
    sql, names, multi = dialect.batch("set_outcome", {})
    assert not multi
    assert ":" not in sql.replace("::", "")
    assert sql.count("?") == len(names)
    assert names.count("logs") == 2 and names.count("now") == 2
    assert names[-3:] == ("id", "node", "attempts")


def test_templates_and_batches(dialect: MssqlDialect) -> None:
    sql, names, multi = dialect.batch("archive_completed", {"month": "202611"})
    assert "INSERT INTO completed_job_202611 (" in sql
    assert names == ("ids",) and not multi
    sql, names, multi = dialect.batch("complete_and_claim_jobs", {"month": "202611"})
    assert multi
    # Scalars are declared once at the top of the batch, so each is sent once.
    assert names == ("now", "node", "limit", "named_only", "skip_named", "outcomes")
    assert sql.startswith("DECLARE @now datetime2(6) = ?;\n")
    assert "INSERT INTO completed_job_202611 (" in sql
    # A string literal holding a colon is not a parameter.
    sql, names, _ = dialect.batch("fail_orphans", {})
    assert '"traceback":null' in sql and names == ("now", "now")


def test_datetimes_in_json_are_naive_utc_iso() -> None:
    moment = datetime(2026, 11, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=2)))
    assert to_db_time(moment) == "2026-11-03T02:05:06.000007"
    assert to_db_time(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00.000000"


# -- driver errors -------------------------------------------------------------------------------


def _pyodbc_error(kind: str, *args: Any) -> Exception:
    """An exception as pyodbc raises it, without the driver (classified by module and args)."""
    cls = type(kind, (Exception,), {"__module__": "pyodbc"})
    return cls(*args)


def test_error_numbers_are_read_from_pyodbc_messages(dialect: MssqlDialect) -> None:
    prefix = "[Microsoft][ODBC Driver 18 for SQL Server][SQL Server]"
    duplicate = _pyodbc_error(
        "IntegrityError",
        "23000",
        f"[23000] {prefix}Cannot insert duplicate key row in object 'dbo.job_summary' with "
        "unique index 'ux_job_summary_ref_id'. The duplicate key value is (1205). (2601) "
        f"(SQLExecDirectW); [01000] {prefix}The statement has been terminated. (3621)",
    )
    assert native_errors(duplicate) == [2601, 3621]
    assert dialect.is_unique_violation(duplicate)
    deadlock = _pyodbc_error(
        "OperationalError",
        "40001",
        f"[40001] {prefix}Transaction (Process ID 57) was deadlocked on lock resources with "
        "another process and has been chosen as the deadlock victim. Rerun the transaction. "
        "(1205) (SQLExecDirectW)",
    )
    assert native_errors(deadlock) == [1205]
    assert not dialect.is_unique_violation(deadlock)
    assert not dialect.is_unique_violation(ValueError("(2627) (SQLExecDirectW)"))


def test_disconnects(dialect: MssqlDialect) -> None:
    link = _pyodbc_error(
        "OperationalError",
        "08S01",
        "[08S01] [Microsoft][ODBC Driver 18 for SQL Server]Communication link failure (0) "
        "(SQLExecDirectW)",
    )
    assert dialect.is_disconnect(link)
    assert dialect.is_disconnect(
        _pyodbc_error("ProgrammingError", "Attempt to use a closed connection.")
    )
    assert dialect.is_disconnect(ConnectionResetError())
    # The host unreachable: every new connection times out logging in
    login = _pyodbc_error(
        "OperationalError",
        "HYT00",
        "[HYT00] [Microsoft][ODBC Driver 18 for SQL Server]Login timeout expired (0) "
        "(SQLDriverConnect)",
    )
    assert dialect.is_disconnect(login)
    syntax = _pyodbc_error(
        "ProgrammingError", "42000", "[42000] [SQL Server]Incorrect syntax. (102) (SQLExecDirectW)"
    )
    assert not dialect.is_disconnect(syntax)


def test_log_offsets_count_as_nvarchar_does(dialect: MssqlDialect) -> None:
    # update_progress appends past an offset measured by DATALENGTH / 2: UTF-16 code units,
    # two for a character outside the Basic Multilingual Plane.
    assert dialect.text_length("line\n") == 5
    assert dialect.text_length("é😀\n") == 4
    assert create_dialect("sqlite:///x.db").text_length("é😀\n") == 3


class _RecordingConnection:
    """Stands in for an aioodbc connection: records each batch sent, answers with no rows.
    (What the server does with a batch is not tested here: no server runs; what is sent is.)"""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def cursor(self) -> _RecordingConnection:
        return self

    async def execute(self, sql: str, *values: object) -> None:
        self.sent.append(sql)

    description = None
    rowcount = 1

    async def nextset(self) -> bool:
        return False

    async def close(self) -> None:
        return None


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_batch_in_the_applications_transaction_is_all_or_nothing(
    dialect: MssqlDialect,
) -> None:
    """The application's session may run with XACT_ABORT OFF, where a failed statement (a
    duplicate ref id) ends only itself: a batch of several statements goes to it under a
    savepoint that undoes them all, the error raised again. A single statement, and batches on
    the dialect's own sessions (XACT_ABORT ON), go as they are."""
    adopted = _RecordingConnection()
    conn = MssqlConnection(dialect, adopted, in_transaction=True, own=False)
    params = {"id": 1, "node": "n", "attempts": 1, "now": datetime.now(UTC)}
    await conn.fetch("insert_job", dict.fromkeys(dialect.batch("insert_job", {})[1], None))
    await conn.execute("mark_executed", {**params, "response": None, "response_body": None})
    batch, _, multi = dialect.batch("insert_job", {})
    assert multi and adopted.sent[0] == (
        f"SAVE TRANSACTION asyncjobs_batch;\nBEGIN TRY\n{batch};\nEND TRY\nBEGIN CATCH\n"
        "IF XACT_STATE() = 1 ROLLBACK TRANSACTION asyncjobs_batch;\nTHROW;\nEND CATCH;"
    )
    assert adopted.sent[1] == dialect.batch("mark_executed", {})[0]
    own = _RecordingConnection()
    await MssqlConnection(dialect, own, in_transaction=True, own=True).fetch(
        "insert_job", dict.fromkeys(dialect.batch("insert_job", {})[1], None)
    )
    assert own.sent == [batch]
