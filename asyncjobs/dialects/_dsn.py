"""DSN parsing and choosing the dialect for a DSN."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..exceptions import InvalidDsnError, MissingDriverError

if TYPE_CHECKING:
    from ._base import Dialect

# scheme -> (dialect name, driver module, pip extra)
_SCHEMES: dict[str, tuple[str, str, str]] = {
    "sqlite": ("sqlite", "sqlite3", ""),
    "postgresql": ("postgres", "asyncpg", "postgres"),
    "postgres": ("postgres", "asyncpg", "postgres"),
    "mysql": ("mysql", "aiomysql", "mysql"),
    "mariadb": ("mysql", "aiomysql", "mysql"),
    "mssql": ("mssql", "aioodbc", "mssql"),
}


@dataclass(frozen=True, slots=True)
class Dsn:
    """A parsed DSN. For SQLite ``database`` is the file path (or ``:memory:``)."""

    scheme: str
    dialect: str
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    database: str = ""
    options: dict[str, str] = field(default_factory=dict)
    raw: str = field(default="", repr=False)


#: the password of a URL's user part (scheme://user:password@host)
_PASSWORD = re.compile(r"^([^:/?#]+://[^:@/?#]*:)[^@/?#]*@")
#: a password given as a query option (PostgreSQL's ?password=)
_PASSWORD_OPTION = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """The DSN as errors and logs may show it: its password, if any, replaced by ``***``."""
    return _PASSWORD_OPTION.sub(r"\1***", _PASSWORD.sub(r"\1***@", dsn))


def parse_dsn(dsn: str) -> Dsn:
    """Parse ``sqlite:///path``, ``postgresql://``, ``mysql://`` or ``mssql://`` URLs."""
    if not isinstance(dsn, str) or "://" not in dsn:
        raise InvalidDsnError(
            f"invalid DSN {redact_dsn(dsn) if isinstance(dsn, str) else dsn!r}: expected a URL "
            "such as sqlite:///jobs.db or "
            "postgresql://user@host/db"
        )
    scheme = dsn.split("://", 1)[0].lower()
    base_scheme = scheme.split("+", 1)[0]
    if base_scheme not in _SCHEMES:
        known = ", ".join(sorted(_SCHEMES))
        raise InvalidDsnError(
            f"unknown DSN scheme {scheme!r} in {redact_dsn(dsn)!r}; known schemes: {known}"
        )
    dialect = _SCHEMES[base_scheme][0]
    if dialect == "sqlite":
        rest = dsn.split("://", 1)[1]
        path, _, query = rest.partition("?")
        if not path.startswith("/"):
            raise InvalidDsnError(
                f"invalid SQLite DSN {dsn!r}: write sqlite:///relative.db or sqlite:////abs/path.db"
            )
        try:  # percent-escapes, as in the other dialects' URLs ("%20" for a space, "%3F": "?")
            database = unquote(path[1:], errors="strict")
        except UnicodeDecodeError:
            raise InvalidDsnError(f"invalid SQLite DSN {dsn!r}: not UTF-8 once decoded") from None
        if not database:
            raise InvalidDsnError(f"invalid SQLite DSN {dsn!r}: no database file")
        return Dsn(scheme, dialect, database=database, options=dict(parse_qsl(query)), raw=dsn)
    try:
        parts = urlsplit(dsn)
        port = parts.port
    except ValueError as exc:
        raise InvalidDsnError(f"invalid DSN {redact_dsn(dsn)!r}: {exc}") from None
    return Dsn(
        scheme,
        dialect,
        host=parts.hostname,
        port=port,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        database=unquote(parts.path.lstrip("/")),
        options=dict(parse_qsl(parts.query)),
        raw=dsn,
    )


def require_driver(dsn: Dsn) -> Any:
    """Import the driver for a DSN, or say which pip extra installs it."""
    _, module, extra = _SCHEMES[dsn.scheme.split("+", 1)[0]]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDriverError(
            f"the {dsn.dialect} dialect needs the {module} driver: pip install 'asyncjobs[{extra}]'"
        ) from exc


def create_dialect(dsn: str, **settings: Any) -> Dialect:
    """The dialect object for a DSN (the driver is imported here, not before)."""
    parsed = parse_dsn(dsn)
    require_driver(parsed)
    module = importlib.import_module(f"asyncjobs.dialects.{parsed.dialect}")
    dialect: Dialect = module.create(parsed, **settings)
    return dialect
