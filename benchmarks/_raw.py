"""What the drivers alone reach on the same servers in the same run: the ceiling any queue
library on them works under. A bare table ``raw_job(id, state, payload)``:

- ``insert_single``: one autocommitted INSERT per job;
- ``commit_paced``: the same INSERT paced like the latency samples (one every
  ``LATENCY_PACING``), its round trip in ms: the floor under an enqueue→start latency, which
  waits for one commit. A disk that flushes back-to-back commits fast may flush one that comes
  after a pause much slower;
- ``insert_batch``: 500 jobs per call (PostgreSQL: ``executemany``, ``unnest`` and ``COPY``;
  MariaDB: a multi-row INSERT);
- ``claim_finish_<k>``: a claim of k queued jobs (``FOR UPDATE SKIP LOCKED``, marked running,
  committed) then a finish that deletes them (committed): two commits per k jobs, no archive,
  no summary, nothing run.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ._db import MysqlProbe, PgProbe, recreate_mysql_database, recreate_pg_schema, settle
from ._harness import LATENCY_PACING, WARMUP, percentiles

SCHEMA = "raw"
#: MariaDB's database for the loop run beside a drain (see mysql_claim_finish_beside)
RAW_DATABASE = "bench_raw"
BATCH = 500
CLAIM_SIZES = (1, 10, 100)


def _rate(jobs: int, seconds: float) -> dict[str, Any]:
    return {"jobs": jobs, "seconds": round(seconds, 4), "rate": jobs / seconds}


async def _timed(jobs: int, work: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    await settle()
    started = time.perf_counter()
    await work()
    return _rate(jobs, time.perf_counter() - started)


async def _paced(samples: int, insert: Callable[[], Awaitable[object]]) -> dict[str, Any]:
    """Round trips of ``insert`` sent one at a time, ``LATENCY_PACING`` apart."""
    times = []
    await settle()
    for n in range(WARMUP + samples):
        started = time.perf_counter()
        await insert()
        if n >= WARMUP:
            times.append(time.perf_counter() - started)
        await anyio.sleep(LATENCY_PACING)
    return percentiles(times)


async def postgres(single: int, batch_total: int, drain: int, paced: int) -> dict[str, Any]:
    await recreate_pg_schema(SCHEMA)
    probe = await PgProbe.connect(schema=SCHEMA)
    conn = probe.conn
    results: dict[str, Any] = {}
    try:
        await conn.execute(
            "CREATE TABLE raw_job (id bigserial PRIMARY KEY, state smallint NOT NULL DEFAULT 0,"
            " payload text NOT NULL);"
            "CREATE INDEX raw_job_queued ON raw_job (id) WHERE state = 0"
        )
        payload = '{"n": 1}'

        async def single_inserts() -> None:
            for _ in range(single):
                await conn.execute("INSERT INTO raw_job (payload) VALUES ($1)", payload)

        results["insert_single"] = await _timed(single, single_inserts)
        results["commit_paced"] = await _paced(
            paced, lambda: conn.execute("INSERT INTO raw_job (payload) VALUES ($1)", payload)
        )
        rows = [(payload,)] * BATCH
        batches = max(1, batch_total // BATCH)

        async def executemany() -> None:
            for _ in range(batches):
                await conn.executemany("INSERT INTO raw_job (payload) VALUES ($1)", rows)

        async def unnest() -> None:
            for _ in range(batches):
                await conn.execute(
                    "INSERT INTO raw_job (payload) SELECT unnest($1::text[])", [payload] * BATCH
                )

        async def copy() -> None:
            for _ in range(batches):
                await conn.copy_records_to_table("raw_job", records=rows, columns=["payload"])

        for name, work in (("executemany", executemany), ("unnest", unnest), ("copy", copy)):
            results[f"insert_batch_{name}"] = await _timed(batches * BATCH, work)
        for size in CLAIM_SIZES:
            jobs = min(drain, 2000) if size == 1 else drain
            await conn.execute("TRUNCATE raw_job")
            await conn.execute(
                "INSERT INTO raw_job (payload) SELECT $1 FROM generate_series(1, $2)",
                payload,
                jobs,
            )
            await conn.execute("VACUUM ANALYZE raw_job")

            async def claim_finish(size: int = size) -> None:
                while True:
                    claimed = await conn.fetch(
                        "UPDATE raw_job SET state = 1 WHERE id IN (SELECT id FROM raw_job"
                        " WHERE state = 0 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)"
                        " RETURNING id, payload",
                        size,
                    )
                    if not claimed:
                        return
                    await conn.execute(
                        "DELETE FROM raw_job WHERE id = ANY($1::bigint[])",
                        [r["id"] for r in claimed],
                    )

            results[f"claim_finish_{size}"] = await _timed(jobs, claim_finish)
    finally:
        await probe.close()
        await recreate_pg_schema(SCHEMA)
    return results


_MYSQL_TABLE = (
    "CREATE TABLE raw_job (id BIGINT AUTO_INCREMENT PRIMARY KEY,"
    " state TINYINT NOT NULL DEFAULT 0, payload TEXT NOT NULL,"
    " KEY raw_job_queued (state, id)) ENGINE=InnoDB"
)
_PAYLOAD = '{"n": 1}'


async def _mysql_claim_finish(probe: MysqlProbe, jobs: int, size: int) -> dict[str, Any]:
    """``jobs`` queued in ``raw_job`` (emptied first), then claimed and finished ``size`` at a
    time; the rate of the claims and finishes."""
    conn = probe.conn
    async with conn.cursor() as cur:
        await cur.execute("TRUNCATE TABLE raw_job")
        for start in range(0, jobs, BATCH):
            count = min(BATCH, jobs - start)
            await cur.execute(
                "INSERT INTO raw_job (payload) VALUES " + ",".join(["(%s)"] * count),
                [_PAYLOAD] * count,
            )

        async def claim_finish() -> None:
            while True:
                await conn.begin()
                await cur.execute(
                    "SELECT id, payload FROM raw_job WHERE state = 0 ORDER BY id"
                    " LIMIT %s FOR UPDATE SKIP LOCKED",
                    (size,),
                )
                ids = [row[0] for row in await cur.fetchall()]
                if not ids:
                    await conn.commit()
                    return
                marks = ",".join(["%s"] * len(ids))
                await cur.execute(f"UPDATE raw_job SET state = 1 WHERE id IN ({marks})", ids)
                await conn.commit()
                await cur.execute(f"DELETE FROM raw_job WHERE id IN ({marks})", ids)

        return await _timed(jobs, claim_finish)


async def mysql(single: int, batch_total: int, drain: int, paced: int) -> dict[str, Any]:
    await recreate_mysql_database()
    probe = await MysqlProbe.connect()
    results: dict[str, Any] = {}
    try:
        async with probe.conn.cursor() as cur:
            await cur.execute(_MYSQL_TABLE)

            async def single_inserts() -> None:
                for _ in range(single):
                    await cur.execute("INSERT INTO raw_job (payload) VALUES (%s)", (_PAYLOAD,))

            results["insert_single"] = await _timed(single, single_inserts)
            results["commit_paced"] = await _paced(
                paced,
                lambda: cur.execute("INSERT INTO raw_job (payload) VALUES (%s)", (_PAYLOAD,)),
            )
            batches = max(1, batch_total // BATCH)

            async def multi_row() -> None:
                values = ",".join(["(%s)"] * BATCH)
                for _ in range(batches):
                    await cur.execute(
                        f"INSERT INTO raw_job (payload) VALUES {values}", [_PAYLOAD] * BATCH
                    )

            results["insert_batch_multirow"] = await _timed(batches * BATCH, multi_row)
        for size in CLAIM_SIZES:
            jobs = min(drain, 2000) if size == 1 else drain
            results[f"claim_finish_{size}"] = await _mysql_claim_finish(probe, jobs, size)
    finally:
        await probe.close()
        await recreate_mysql_database()
    return results


async def mysql_claim_finish_beside(jobs: int, size: int = 100) -> dict[str, Any]:
    """The claim + finish loop alone, run right beside a drain of asyncjobs on MariaDB so that
    the ratio of the two is taken minutes, not the length of a run, apart (the machine drifts).
    On a database of its own: the drain's is left as it is."""
    admin = await MysqlProbe.connect(None)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {RAW_DATABASE}")
        await admin.execute(f"CREATE DATABASE {RAW_DATABASE}")
        probe = await MysqlProbe.connect(RAW_DATABASE)
        try:
            await probe.execute(_MYSQL_TABLE)
            return await _mysql_claim_finish(probe, jobs, size)
        finally:
            await probe.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {RAW_DATABASE}")
        await admin.close()
