"""A worker process for multi-process tests: ``python -m tests.worker <dsn> [options]``.

Serves the commands of ``tests.commands`` until SIGTERM or SIGINT, then shuts down gracefully.
Prints ``ready`` on stdout once the runtime is up.
"""

from __future__ import annotations

import argparse
import signal
import sys
from datetime import timedelta

import anyio

from asyncjobs import BackgroundJobs, Schedule
from tests.commands import ALL_COMMANDS, Sleep, SleepCommand

TICK_LOG: str | None = None


def build(argv: list[str]) -> BackgroundJobs:
    parser = argparse.ArgumentParser()
    parser.add_argument("dsn")
    parser.add_argument("--max-concurrency", type=int, default=10)
    parser.add_argument("--lease-seconds", type=float, default=2.0)
    parser.add_argument("--poll-ms", type=float, default=100.0)
    parser.add_argument("--grace-seconds", type=float, default=5.0)
    parser.add_argument("--no-notifications", action="store_true")
    parser.add_argument("--tick-log", help="register an every-second task logging here")
    args = parser.parse_args(argv)
    global TICK_LOG
    TICK_LOG = args.tick_log
    return BackgroundJobs(
        args.dsn,
        commands=ALL_COMMANDS,
        max_concurrency=args.max_concurrency,
        lease_duration=timedelta(seconds=args.lease_seconds),
        poll_interval=timedelta(milliseconds=args.poll_ms),
        shutdown_grace=timedelta(seconds=args.grace_seconds),
        retry_delay=timedelta(0),
        notifications=not args.no_notifications,
    )


async def serve(jobs: BackgroundJobs) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with jobs:
            if TICK_LOG:
                await jobs.recurring_command(
                    SleepCommand,
                    Schedule.cron("* * * * * *"),
                    Sleep(0, label="tick", log_file=TICK_LOG),
                    name="tick",
                )
            print("ready", flush=True)
            async for _ in signals:
                break


def main() -> None:
    anyio.run(serve, build(sys.argv[1:]))


if __name__ == "__main__":
    main()
