"""Named SQL queries loaded from ``sql/<dialect>/*.sql``.

A file holds queries, each under a header ``-- name: get_summary`` followed by comment lines that
describe it, then the SQL. Parameters are written ``:name`` in every dialect; each driver converts
them once, at load time. The only template allowed is ``{identifier}`` for a validated identifier
(e.g. a monthly archive table), filled by :meth:`Query.render`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .exceptions import ConfigurationError

_HEADER = re.compile(r"^--\s*name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$")
# `:name` but not PostgreSQL's `::cast`, and not inside a `{template}`.
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")
#: a group written out once per row of a list parameter, in the files' style or in pyformat
_EACH = re.compile(r"/\* each (?::(\w+)|%\((\w+)\)s) \*/\s*\(")
_TEMPLATE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_IDENTIFIER = re.compile(r"[A-Za-z0-9_]{1,63}\Z")  # a part of an identifier


def sql_root() -> Path:
    """Where the SQL files are: inside the installed package, or at the top of a checkout."""
    packaged = Path(__file__).parent / "sql"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).parent.parent / "sql"
    if checkout.is_dir():
        return checkout
    raise ConfigurationError(f"SQL files not found in {packaged} or {checkout}")


@dataclass(frozen=True, slots=True)
class Query:
    """One named query: its text, the parameters it names (in order) and where it came from."""

    name: str
    sql: str
    params: tuple[str, ...]
    templates: tuple[str, ...]
    source: str

    def statements(self) -> list[str]:
        """The query split into statements (used for DDL scripts)."""
        return split_statements(self.sql)

    def render(self, **identifiers: str) -> str:
        """Fill ``{identifier}`` templates with validated identifiers, never with values."""
        for key, value in identifiers.items():
            if not _IDENTIFIER.match(value):
                raise ConfigurationError(f"{value!r} is not a valid SQL identifier for {{{key}}}")
        try:
            return _TEMPLATE.sub(lambda m: identifiers[m.group(1)], self.sql)
        except KeyError as exc:
            raise ConfigurationError(f"query {self.name} needs template {exc.args[0]!r}") from None


@dataclass(slots=True)
class Queries(Mapping[str, Query]):
    """All queries of one dialect, by name."""

    dialect: str
    by_name: dict[str, Query] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Query:
        try:
            return self.by_name[name]
        except KeyError:
            raise ConfigurationError(f"dialect {self.dialect} has no query {name!r}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_name)

    def __len__(self) -> int:
        return len(self.by_name)


def parse_queries(text: str, source: str) -> dict[str, Query]:
    """Parse one file's text; fail loudly, with file and line, on a duplicate or empty query."""
    found: dict[str, Query] = {}
    name: str | None = None
    start = 0
    body: list[str] = []

    def close() -> None:
        if name is None:
            return
        sql = "\n".join(ln for ln in body if not ln.lstrip().startswith("--")).strip()
        if not sql:
            raise ConfigurationError(f"{source}:{start}: query {name!r} is empty")
        if name in found:
            raise ConfigurationError(f"{source}:{start}: query {name!r} is defined twice")
        # A row's parameters are not the query's: only the list's name is.
        outer = sql
        for _, group_start, group_end, _ in reversed(each_groups(sql)):
            outer = outer[:group_start] + outer[group_end:]
        params = tuple(dict.fromkeys(_PARAM.findall(_strip_strings(outer))))
        templates = tuple(dict.fromkeys(_TEMPLATE.findall(sql)))
        found[name] = Query(name, sql, params, templates, f"{source}:{start}")

    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line.strip())
        if header:
            close()
            name, start, body = header.group(1), number, []
        elif name is not None:
            body.append(line)
        elif line.strip() and not line.lstrip().startswith("--"):
            raise ConfigurationError(f"{source}:{number}: SQL before the first '-- name:' header")
    close()
    return found


def each_groups(sql: str) -> list[tuple[int, int, int, str]]:
    """The groups after ``/* each :name */`` (a dialect writes one out per row of the list
    parameter ``name``): where the marker starts, where the group starts and ends (its
    parentheses included), and ``name``."""
    groups = []
    for found in _EACH.finditer(sql):
        depth, quoted = 0, False
        for end in range(found.end() - 1, len(sql)):
            char = sql[end]
            if char == "'":  # a doubled quote inside a literal toggles twice
                quoted = not quoted
            elif not quoted:
                depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                name = found.group(1) or found.group(2)
                groups.append((found.start(), found.end() - 1, end + 1, name))
                break
        else:
            raise ConfigurationError(f"unclosed group after {found.group(0)!r}")
    return groups


def split_statements(sql: str) -> list[str]:
    """Split SQL into statements at lines that end with ``;``."""
    parts: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        current.append(line)
        if line.rstrip().endswith(";"):
            parts.append("\n".join(current))
            current = []
    parts.append("\n".join(current))
    return [text for part in parts if (text := part.strip().rstrip(";").strip())]


def _strip_strings(sql: str) -> str:
    """Blank out string literals so a colon inside one is not taken for a parameter."""
    return re.sub(r"'(?:[^']|'')*'", "''", sql)


def load_queries(dialect: str, root: Path | None = None) -> Queries:
    """Load every ``*.sql`` file of a dialect."""
    folder = (root or sql_root()) / dialect
    if not folder.is_dir():
        raise ConfigurationError(f"no SQL folder for dialect {dialect!r} at {folder}")
    queries = Queries(dialect)
    for path in sorted(folder.glob("*.sql")):
        for name, query in parse_queries(path.read_text(encoding="utf-8"), path.name).items():
            if name in queries.by_name:
                raise ConfigurationError(
                    f"{query.source}: query {name!r} is already defined at "
                    f"{queries.by_name[name].source}"
                )
            queries.by_name[name] = query
    return queries


def convert_params(query: Query, style: str, sql: str | None = None) -> tuple[str, tuple[str, ...]]:
    """Rewrite ``:name`` parameters into a driver's style.

    ``numeric`` gives ``$1`` (asyncpg), ``pyformat`` gives ``%(name)s`` (aiomysql), ``qmark``
    gives ``?`` (pyodbc), repeated as often as used; ``named`` leaves ``:name`` (sqlite3).
    Returns the SQL and the parameter names in the order the driver expects them.
    """
    text = query.sql if sql is None else sql
    if style == "named":
        return text, query.params
    order: list[str] = []

    def replace(match: re.Match[str]) -> str:
        pname = match.group(1)
        if style == "numeric":
            if pname not in order:
                order.append(pname)
            return f"${order.index(pname) + 1}"
        if style == "pyformat":
            return f"%({pname})s"
        order.append(pname)
        return "?"

    if style == "pyformat":
        text = text.replace("%", "%%")  # a literal % must be doubled for the driver
    converted = _replace_outside_strings(text, replace)
    if style == "pyformat":
        return converted, query.params
    return converted, tuple(order)


def _replace_outside_strings(sql: str, replace: Callable[[re.Match[str]], str]) -> str:
    pieces = re.split(r"('(?:[^']|'')*')", sql)
    out = []
    for index, piece in enumerate(pieces):
        if index % 2:  # a string literal
            out.append(piece)
        else:
            out.append(_PARAM.sub(replace, piece))
    return "".join(out)
