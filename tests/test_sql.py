"""The SQL files: the loader's rules and the parity of query names across dialects."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncjobs._sql import Query, convert_params, each_groups, load_queries, parse_queries, sql_root
from asyncjobs.exceptions import ConfigurationError

DIALECTS = sorted(p.name for p in sql_root().iterdir() if p.is_dir() and any(p.glob("*.sql")))


def test_every_dialect_has_the_same_files_queries_and_parameters() -> None:
    assert {"sqlite", "postgres", "mysql"} <= set(DIALECTS)
    reference = load_queries("sqlite")
    reference_files = sorted(p.name for p in (sql_root() / "sqlite").glob("*.sql"))
    for dialect in DIALECTS:
        files = sorted(p.name for p in (sql_root() / dialect).glob("*.sql"))
        assert files == reference_files, dialect
        queries = load_queries(dialect)
        assert sorted(queries) == sorted(reference), dialect
        for name, query in queries.items():
            assert set(query.params) == set(reference[name].params), (dialect, name)


def test_duplicate_and_empty_queries_fail_with_file_and_line() -> None:
    with pytest.raises(ConfigurationError, match=r"x\.sql:4: query 'a' is defined twice"):
        parse_queries("-- name: a\nSELECT 1;\n\n-- name: a\nSELECT 2;\n", "x.sql")
    with pytest.raises(ConfigurationError, match=r"y\.sql:1: query 'b' is empty"):
        parse_queries("-- name: b\n-- only a comment\n", "y.sql")
    with pytest.raises(ConfigurationError, match=r"z\.sql:1: SQL before"):
        parse_queries("SELECT 1;\n-- name: c\nSELECT 2;\n", "z.sql")


def test_a_group_written_out_per_row_names_only_its_list_as_a_parameter() -> None:
    queries = parse_queries(
        "-- name: q\nINSERT INTO t VALUES /* each :rows */ (:a, f(:b, ')'));\nSELECT :c;\n",
        "q.sql",
    )
    assert queries["q"].params == ("rows", "c")
    groups = each_groups(queries["q"].sql)
    assert [queries["q"].sql[start:end] for _, start, end, _ in groups] == ["(:a, f(:b, ')'))"]
    with pytest.raises(ConfigurationError, match="unclosed group"):
        parse_queries("-- name: q\nINSERT INTO t VALUES /* each :rows */ (:a;\n", "q.sql")


def test_parameters_are_found_outside_strings_and_casts() -> None:
    queries = parse_queries(
        "-- name: q\n-- a comment :ignored\nSELECT :a, ':not_a_param', :b::jsonb, :a;\n", "q.sql"
    )
    query = queries["q"]
    assert query.params == ("a", "b")
    assert convert_params(query, "numeric")[0] == "SELECT $1, ':not_a_param', $2::jsonb, $1;"
    assert convert_params(query, "qmark") == (
        "SELECT ?, ':not_a_param', ?::jsonb, ?;",
        ("a", "b", "a"),
    )
    pyformat = parse_queries("-- name: p\nSELECT '%' || :a;\n", "p.sql")["p"]
    assert convert_params(pyformat, "pyformat")[0] == "SELECT '%%' || %(a)s;"


def test_templates_take_only_identifiers() -> None:
    query = Query("t", "SELECT * FROM t_{month}", (), ("month",), "t.sql:1")
    assert query.render(month="202611") == "SELECT * FROM t_202611"
    for bad in ("2026; DROP TABLE x", "a b", "", "x" * 64, "202611\n"):
        with pytest.raises(ConfigurationError, match="not a valid SQL identifier"):
            query.render(month=bad)


def test_statements_split_at_line_ends(tmp_path: Path) -> None:
    query = Query("s", "CREATE TABLE a (x int);\nCREATE INDEX i ON a (x);\n", (), (), "")
    assert query.statements() == ["CREATE TABLE a (x int)", "CREATE INDEX i ON a (x)"]
