"""A benchmark worker process: ``python -m benchmarks.worker <system> <dsn> [options]``.

``system`` is ``asyncjobs``, ``pgqueuer`` or ``procrastinate``. The process prints ``ready``
once set up, ``F <monotonic time>`` when its first job starts and, with ``--latency``,
``L <n> <seconds from enqueue to start>`` for every job. SIGTERM stops it gracefully.
"""

from __future__ import annotations

import argparse

import anyio


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    parser.add_argument("system", choices=["asyncjobs", "pgqueuer", "procrastinate"])
    parser.add_argument("dsn")
    parser.add_argument("--latency", action="store_true", help="print every job's latency")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="pgqueuer's batch_size")
    args = parser.parse_args(argv)
    if args.system == "asyncjobs":
        from . import _ours

        anyio.run(lambda: _ours.serve(args.dsn, latency=args.latency, concurrency=args.concurrency))
    elif args.system == "pgqueuer":
        from . import _pgqueuer

        _pgqueuer.serve(
            args.dsn, latency=args.latency, batch_size=args.batch_size or _pgqueuer.BATCH_SIZE
        )
    else:
        from . import _procrastinate

        concurrency = args.concurrency or _procrastinate.CONCURRENCY
        anyio.run(lambda: _procrastinate.serve(latency=args.latency, concurrency=concurrency))


if __name__ == "__main__":
    main()
