"""Database dialects: one small class per driver, the SQL itself lives in ``sql/<dialect>/``."""

from __future__ import annotations

from ._base import Capabilities, Connection, Dialect, Row
from ._dsn import Dsn, create_dialect, parse_dsn

__all__ = ["Capabilities", "Connection", "Dialect", "Dsn", "Row", "create_dialect", "parse_dsn"]
