"""``python -m tests.mysql_worker <dsn> [tests.worker options]``: the generic test worker, with
warnings logged to stderr and, after a graceful stop, one JSON line on stdout with the
dialect's statistics (deadlocks retried and deadlocks passed on) and the runtime's counters."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import anyio

from tests.worker import build, serve


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    jobs = build(sys.argv[1:])
    anyio.run(serve, jobs)
    dialect: Any = jobs.dialect
    report = {"dialect": dialect.statistics(), "runtime": jobs.statistics()}
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
