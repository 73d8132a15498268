"""Isolated PostgreSQL schemas for the contract suite: one fresh schema per test.

The server is ``ASYNCJOBS_TEST_POSTGRES`` (default: the local test server). If it cannot be
reached the test fails; it is never skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg

SERVER = os.environ.get("ASYNCJOBS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


async def isolated_dsn() -> AsyncIterator[str]:
    """Create a schema with a random name, yield a DSN that uses it, drop it afterwards."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(SERVER)  # raises when the server is away: fail, not skip
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    try:
        yield f"{SERVER}?schema={schema}"
    finally:
        conn = await asyncpg.connect(SERVER)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
