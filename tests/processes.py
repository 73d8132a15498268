"""Starting and stopping worker processes for multi-process tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent


def start_worker(dsn: str, *args: str) -> subprocess.Popen[str]:
    """Start ``python -m tests.worker`` and wait until it says it is ready."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.worker", dsn, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        proc.stdout.close()
        raise RuntimeError(f"worker did not start (exit code {proc.wait()})")
    return proc


def stop_worker(proc: subprocess.Popen[str], timeout: float = 30) -> int:
    """SIGTERM and wait: a graceful shutdown."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout)
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


@contextmanager
def workers(dsn: str, count: int, *args: str) -> Iterator[list[subprocess.Popen[str]]]:
    procs = [start_worker(dsn, *args) for _ in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def event_lines(path: Path) -> list[list[str]]:
    """``start|end|callback label time pid job_id`` lines that test commands append (see
    tests/commands.py); none before the file exists."""
    if not path.exists():
        return []
    text = path.read_text()
    # Only whole lines: a worker may be halfway through appending the last one.
    return [line.split() for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def started_at(path: Path, label: str) -> float | None:
    """When the job labelled ``label`` first started (wall clock), or None."""
    for line in event_lines(path):
        if line[0] == "start" and line[1] == label:
            return float(line[2])
    return None


async def wait_for(predicate: Callable[[], bool], seconds: float) -> None:
    """Wait until ``predicate()`` holds; TimeoutError after ``seconds``."""
    with anyio.fail_after(seconds):
        while not predicate():
            await anyio.sleep(0.01)
