"""The command line: ``python -m asyncjobs worker|migrate|admin|demo``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence

import anyio

from .exceptions import ConfigurationError, DatabaseError, MissingDriverError
from .runtime import BackgroundJobs, open_database


def load_app(path: str) -> BackgroundJobs:
    """The ``BackgroundJobs`` object at ``module:attribute``."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"--app must look like package.module:jobs, got {path!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")  # like `python -m`, find modules in the current directory
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the named module (or a package on its path) is a mistyped --app; a module the
        # app itself fails to import keeps its traceback.
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise
        raise ConfigurationError(f"--app {path!r}: no module named {exc.name!r}") from None
    app: object = module
    found = module_name
    for part in attribute.split("."):
        try:
            app = getattr(app, part)
        except AttributeError:
            raise ConfigurationError(f"--app {path!r}: {found} has no attribute {part!r}") from None
        found += ("." if ":" in found else ":") + part
    if not isinstance(app, BackgroundJobs):
        raise ConfigurationError(f"{path} is a {type(app).__name__}, not a BackgroundJobs")
    return app


async def run_worker(jobs: BackgroundJobs) -> None:
    """Run jobs until SIGINT or SIGTERM, then stop gracefully."""
    if not jobs.execute:
        raise ConfigurationError("this BackgroundJobs has execute=False; a worker must execute")
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as watch:
            async with jobs:
                logging.getLogger("asyncjobs").info("worker %s running", jobs.node_id)
                async for signum in signals:
                    logging.getLogger("asyncjobs").info(
                        "received %s, shutting down", signal.Signals(signum).name
                    )
                    break
                watch.start_soon(_exit_on_another_signal, signals)
            watch.cancel_scope.cancel()


async def _exit_on_another_signal(signals: AsyncIterator[signal.Signals]) -> None:
    """A second signal while the shutdown waits (for a job that ignores its stop, say) ends
    the process at once, as a crash would: the jobs still running here keep their lease, and
    run again elsewhere once it lapses."""
    async for signum in signals:
        name = signal.Signals(signum).name
        logging.getLogger("asyncjobs").warning(
            "received %s again: exiting now; jobs still running here run again once their "
            "lease lapses",
            name,
        )
        logging.shutdown()
        os._exit(128 + signum)


async def run_migrate(jobs: BackgroundJobs) -> None:
    await open_database(jobs.dialect)
    try:
        version = await jobs.store.migrate()
        print(f"schema at version {version}")
    finally:
        await jobs.dialect.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asyncjobs")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="run jobs in a dedicated process")
    worker.add_argument("--app", required=True, help="module:attribute of a BackgroundJobs")
    migrate = commands.add_parser("migrate", help="create or upgrade the schema")
    target = migrate.add_mutually_exclusive_group(required=True)
    target.add_argument("--app", help="module:attribute of a BackgroundJobs")
    target.add_argument("--dsn", help="a database URL")
    admin = commands.add_parser("admin", help="serve the jobs admin UI (needs asyncjobs[web])")
    admin.add_argument("--app", required=True, help="module:attribute of a BackgroundJobs")
    admin.add_argument("--host", default="127.0.0.1", help="without a credential: loopback only")
    admin.add_argument("--port", type=int, default=8700)
    admin.add_argument("--token", default=os.environ.get("ASYNCJOBS_ADMIN_TOKEN"),
                       help="bearer token (default: $ASYNCJOBS_ADMIN_TOKEN)")  # fmt: skip
    admin.add_argument("--basic-auth", default=os.environ.get("ASYNCJOBS_ADMIN_BASIC_AUTH"),
                       help="user:password (default: $ASYNCJOBS_ADMIN_BASIC_AUTH)")  # fmt: skip
    demo = commands.add_parser("demo", help="run example jobs on SQLite and show what happened")
    demo.add_argument("--dsn", default=None)
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "worker":
            anyio.run(run_worker, load_app(args.app))
        elif args.command == "admin":
            from .web._server import serve

            serve(load_app(args.app), host=args.host, port=args.port,
                  bearer_token=args.token, basic_auth=args.basic_auth)  # fmt: skip
        elif args.command == "migrate":
            jobs = load_app(args.app) if args.app else BackgroundJobs(args.dsn, execute=False)
            anyio.run(run_migrate, jobs)
        else:
            logging.getLogger("asyncjobs").setLevel(logging.ERROR)
            logging.getLogger("asyncjobs.job").setLevel(logging.WARNING)
            from .demo import main as demo_main

            demo_main(args.dsn)
    except (ConfigurationError, MissingDriverError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DatabaseError as exc:  # the DSN is well-formed; the database is not there
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
