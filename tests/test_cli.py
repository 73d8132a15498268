"""The command line: a dedicated worker process, migrate, demo."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from asyncjobs.store import MIGRATIONS

ROOT = Path(__file__).resolve().parent.parent

APP = textwrap.dedent(
    """
    import os
    from asyncjobs import BackgroundJobs
    from tests.commands import ALL_COMMANDS
    jobs = BackgroundJobs(os.environ["JOBS_DSN"], commands=ALL_COMMANDS)
    """
)


def _env(tmp_path: Path, dsn: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "JOBS_DSN": dsn}


def _run(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncjobs", *args], env=env, cwd=cwd, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


def test_migrate_then_worker_runs_jobs_and_stops_on_sigterm(tmp_path: Path) -> None:
    dsn = f"sqlite:///{tmp_path / 'jobs.db'}"
    (tmp_path / "myapp.py").write_text(APP)
    env = _env(tmp_path, dsn)
    migrated = _run("migrate", "--dsn", dsn, env=env, cwd=tmp_path)
    assert migrated.returncode == 0 and f"schema at version {len(MIGRATIONS)}" in migrated.stdout
    enqueue = textwrap.dedent(
        """
        import anyio, sys
        from myapp import jobs
        from tests.commands import Add, AddCommand
        async def main():
            async with jobs.__class__(jobs.dsn, commands=[AddCommand], execute=False) as producer:
                ref = await producer.enqueue_command(AddCommand, Add(20, 22))
                print(ref.id)
        anyio.run(main)
        """
    )
    job_id = subprocess.run(
        [sys.executable, "-c", enqueue], env=env, cwd=tmp_path, capture_output=True, text=True,
        check=True,
    ).stdout.strip()  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "worker", "--app", "myapp:jobs"],
        env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        check = textwrap.dedent(
            f"""
            import anyio
            from myapp import jobs
            async def main():
                async with jobs.__class__(jobs.dsn, execute=False) as reader:
                    print((await reader.get_job({job_id})).state)
            anyio.run(main)
            """
        )
        deadline = time.monotonic() + 20
        state = ""
        while time.monotonic() < deadline and state != "Completed":
            state = subprocess.run(
                [sys.executable, "-c", check], env=env, cwd=tmp_path, capture_output=True,
                text=True, check=True,
            ).stdout.strip()  # fmt: skip
            time.sleep(0.1)
        assert state == "Completed"
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0
    assert "received SIGTERM, shutting down" in stderr


def test_bad_app_path_is_a_clear_error(tmp_path: Path) -> None:
    result = _run("worker", "--app", "nocolon", env=_env(tmp_path, ""), cwd=tmp_path)
    assert result.returncode == 2 and "--app must look like" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["worker", "--app", "nosuchmodule:jobs"], "no module named 'nosuchmodule'"),
        (["worker", "--app", "os:nosuchattr"], "os has no attribute 'nosuchattr'"),
        (["worker", "--app", "myapp:jobs.nosuchattr"], "myapp:jobs has no attribute"),
        (["admin", "--app", "nosuchpackage.app:jobs"], "no module named 'nosuchpackage'"),
        (["--log-level", "verbose", "migrate", "--dsn", "sqlite:///x.db"], "invalid choice"),
    ],
)
def test_a_mistyped_app_or_log_level_is_a_clear_error(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "myapp.py").write_text(APP)
    result = _run(*args, env=_env(tmp_path, f"sqlite:///{tmp_path / 'jobs.db'}"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_module_the_app_fails_to_import_keeps_its_traceback(tmp_path: Path) -> None:
    (tmp_path / "brokenapp.py").write_text("import nosuchdependency\n")
    result = _run("worker", "--app", "brokenapp:jobs", env=_env(tmp_path, ""), cwd=tmp_path)
    assert result.returncode == 1 and "No module named 'nosuchdependency'" in result.stderr
    assert "Traceback" in result.stderr


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    dsn = f"sqlite:///{tmp_path / 'jobs.db'}"
    result = _run("--log-level", "debug", "migrate", "--dsn", dsn, env=_env(tmp_path, dsn),
                  cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.mark.dialects("postgres", "mysql")  # (MariaDB's refusal needs its server)
def test_a_database_that_is_not_there_is_a_one_line_error(
    tmp_path: Path, dialect_name: str
) -> None:
    """The DSN is well-formed, the server refuses it (an unknown database, nothing listening):
    one line naming the driver's error, not its traceback."""
    dsn, message = {
        "mysql": ("mysql://root@127.0.0.1:3306/no_such_database", "Unknown database"),
        "postgres": ("postgresql://postgres@127.0.0.1:1/test", "cannot open the postgres database"),
    }[dialect_name]
    result = _run("migrate", "--dsn", dsn, env=_env(tmp_path, ""), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_missing_driver_is_a_clear_error(tmp_path: Path) -> None:
    if importlib.util.find_spec("aioodbc") is not None:  # not a dev dependency
        pytest.skip("the premise: aioodbc is missing; it is installed here")
    result = _run("migrate", "--dsn", "mssql://u:p@h/db", env=_env(tmp_path, ""), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "pip install 'asyncjobs[mssql]'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_demo_runs_and_reports_every_job(tmp_path: Path) -> None:
    result = _run("demo", env=_env(tmp_path, ""), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum("Completed" in line for line in lines) == 6
    assert any("webhook" in line and "attempts=2" in line for line in lines)
    assert "printer worker ran A then B without overlap: True" in result.stdout
    assert lines[-1] == "done."


STUBBORN_APP = textwrap.dedent(
    """
    import os
    from datetime import timedelta
    from pathlib import Path
    import anyio
    from asyncjobs import AsyncNoRequestCommand, BackgroundJobs

    class StubbornCommand(AsyncNoRequestCommand):
        async def run(self) -> None:
            Path(os.environ["STARTED_FILE"]).write_text("started")
            while True:
                try:
                    await anyio.sleep(3600)
                except anyio.get_cancelled_exc_class():
                    pass  # ignores its stop: holds the shutdown

    jobs = BackgroundJobs(
        os.environ["JOBS_DSN"], commands=[StubbornCommand],
        shutdown_grace=timedelta(seconds=0.2), poll_interval=timedelta(seconds=0.1),
    )
    """
)


def test_a_second_signal_ends_a_worker_held_up_by_a_job_that_ignores_its_stop(
    tmp_path: Path,
) -> None:
    """The first SIGTERM starts the graceful shutdown, which waits for the job; the second
    exits at once (the job's lease lapses, and it runs again elsewhere, as after a crash)."""
    dsn = f"sqlite:///{tmp_path / 'jobs.db'}"
    (tmp_path / "stubborn.py").write_text(STUBBORN_APP)
    started = tmp_path / "started"
    env = {**_env(tmp_path, dsn), "STARTED_FILE": str(started)}
    enqueue = textwrap.dedent(
        """
        import anyio
        from stubborn import StubbornCommand, jobs
        async def main():
            async with jobs.__class__(jobs.dsn, commands=[StubbornCommand], execute=False) as p:
                await p.enqueue_command(StubbornCommand)
        anyio.run(main)
        """
    )
    subprocess.run([sys.executable, "-c", enqueue], env=env, cwd=tmp_path, check=True)
    worker = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "worker", "--app", "stubborn:jobs"],
        env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists()
        worker.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert worker.poll() is None  # held up by the job
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=5)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 128 + signal.SIGTERM
    assert "received SIGTERM again: exiting now" in stderr
