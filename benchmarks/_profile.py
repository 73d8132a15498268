"""Where a worker process spends a drain: ``python -m benchmarks --profile``.

py-spy samples the first worker process while the drain is timed (``--idle``, so the samples
where the event loop waits on the database are counted too, and ``--nonblocking``, so the worker
is never paused). The collapsed stacks are kept next to a short summary: how much of the time
the process waited, which functions use the rest (self time), and which of the runtime's own
functions account for it (inclusive time). Profiled runs are slower than plain ones and are not
used as results.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

#: samples per second
RATE = 250
#: leaf frames where a thread waits rather than works: the event loop's poll (for the
#: database's replies), a worker thread's wait for its next task
_WAITING = re.compile(r"^(EpollSelector\.select|KqueueSelector\.select|Condition\.wait) ")
#: frames worth a line in the inclusive table: the runtime and the drivers it talks through
_OURS = re.compile(r"\((asyncjobs|asyncpg|aiomysql|pymysql|sqlite3)/")
#: a frame's line number: the inclusive table adds up a function's lines
_LINE = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    """py-spy from this Python's environment (run without activating it), or from PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@asynccontextmanager
async def sampling(pid: int, stem: Path) -> AsyncIterator[None]:
    """Sample process ``pid`` while the body runs; write ``<stem>.raw`` (collapsed stacks)
    and ``<stem>.md`` (the summary). A profiler that cannot start (no py-spy, no permission
    to trace) is reported in the summary; the workload runs anyway."""
    raw, log = stem.with_suffix(".raw"), stem.with_suffix(".log")
    command = [
        py_spy() or "py-spy", "record", "--pid", str(pid), "--rate", str(RATE), "--idle",
        "--nonblocking", "--threads", "--format", "raw", "--output", str(raw),
    ]  # fmt: skip
    raw.unlink(missing_ok=True)
    with log.open("wb") as errors:
        spy = await anyio.open_process(command, stdout=subprocess.DEVNULL, stderr=errors)
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                if spy.returncode is None:
                    spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                with anyio.move_on_after(30):
                    await spy.wait()
                if spy.returncode is None:
                    spy.kill()
                    await spy.wait()
    if raw.exists():
        stem.with_suffix(".md").write_text(summarise(raw.read_text(), stem.name))
        log.unlink()
    else:
        message = log.read_text(errors="replace").strip() or f"exit code {spy.returncode}"
        stem.with_suffix(".md").write_text(f"# {stem.name}\n\npy-spy failed: {message}\n")


def summarise(collapsed: str, title: str, top: int = 15) -> str:
    """A Markdown summary of py-spy's collapsed stacks (``frame;frame;... count`` lines)."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    waiting: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = _thread_name(frames[0])
        threads[thread] += count
        total += count
        if _WAITING.match(frames[-1]):
            waiting[thread] += count
            continue
        # Only the thread's own frame: it ran native code with no Python frame on top.
        self_time[frames[-1] if len(frames) > 1 else "(native code)"] += count
        for function in {_LINE.sub(")", frame) for frame in frames[1:]}:
            if _OURS.search(function):
                inclusive[function] += count
    if not total:
        return f"# {title}\n\nNo samples.\n"
    lines = [
        f"# {title}",
        "",
        f"{total} samples at {RATE} Hz. Share of each thread's samples spent waiting "
        "(on the database, or for work):",
        "",
        "| thread | samples | waiting |",
        "|---|---|---|",
    ]
    for thread, count in threads.most_common():
        lines.append(f"| {thread} | {count} | {waiting[thread] / count:.0%} |")
    lines += ["", f"Busy samples by function (self time, top {top}), % of all samples:", ""]
    lines += ["| % | function |", "|---|---|"]
    for frame, count in self_time.most_common(top):
        lines.append(f"| {count / total:.1%} | `{frame}` |")
    lines += ["", "The runtime's and drivers' functions by busy samples under them (any line):", ""]
    lines += ["| % | function |", "|---|---|"]
    for frame, count in inclusive.most_common(top * 2):
        lines.append(f"| {count / total:.1%} | `{frame}` |")
    return "\n".join(lines) + "\n"


def _thread_name(frame: str) -> str:
    # py-spy --threads writes the thread first: "thread (0x7f...): MainThread" or with a pid
    match = re.match(r"thread \([^)]*\): (.+)", frame)
    return match.group(1) if match else "process"
