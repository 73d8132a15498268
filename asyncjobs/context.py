"""What a running job can see: ``current_job()``, ``job_logger()``, progress and cancellation."""

from __future__ import annotations

import logging
import sys
import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .exceptions import InvalidOptionsError, NoCurrentJobError
from .models import BackgroundJob, storable_text

_log = logging.getLogger("asyncjobs.job")

#: logs kept per job; past this the oldest text is dropped behind a marker
MAX_LOG_CHARS = 64 * 1024
TRUNCATED_MARKER = "[... earlier log lines truncated ...]\n"
#: a status line is cut to this many characters
MAX_STATUS_CHARS = 4096
CAPPED_MARKER = "[... log truncated: later lines are not stored ...]\n"


class CancelFlag:
    """The ``threading.Event`` interface, made cheaply: one is made for every job, and a
    ``threading.Event`` (a Condition and a Lock) costs more than the rest of a no-op job's
    bookkeeping. The real Event is only made if a thread waits on the flag."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    def clear(self) -> None:
        self._set = False
        if self._event is not None:
            self._event.clear()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        if self._set:
            return True
        if self._event is None:
            self._event = threading.Event()
            if self._set:  # set in between, by another thread
                self._event.set()
        return self._event.wait(timeout)


@dataclass(slots=True, eq=False)
class JobContext:
    """The state of one running job shared by the job, its logger and the runtime."""

    job: BackgroundJob
    services: Any = None
    #: the environment variables the application lets a ReplyTo read (``reply_to_env``)
    reply_to_env: frozenset[str] = frozenset()
    #: set when the job is asked to stop; sync commands can poll it
    cancel_event: CancelFlag = field(default_factory=CancelFlag)
    #: log text not yet written to the database
    pending_logs: list[str] = field(default_factory=list)
    dirty: bool = False
    #: the job reported progress itself; otherwise the runtime estimates it
    progress_reported: bool = False
    _logged_chars: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: while a sync command runs: the scope its job waits for the thread in, which a shutdown
    #: cancels to abandon a thread that never returns (an ``anyio.CancelScope``)
    thread_wait: Any = None

    def append_log(self, line: str) -> None:
        line = storable_text(line)
        text = line if line.endswith("\n") else line + "\n"
        with self._lock:
            self.job.logs = _cap((self.job.logs or "") + text)
            # The stored log is capped too: past the cap one marker is written, then nothing.
            room = MAX_LOG_CHARS - self._logged_chars
            if room > 0:
                kept = text if len(text) <= room else text[:room] + "\n" + CAPPED_MARKER
                self.pending_logs.append(kept)
                self._logged_chars += len(text)
            self.dirty = True

    def give_back(self, logs: str | None) -> None:
        """A write of what take_pending returned failed: its log text goes first next time
        (progress and status are read afresh anyway)."""
        with self._lock:
            if logs:
                self.pending_logs.insert(0, logs)
            self.dirty = True

    def take_pending(self) -> tuple[str | None, float | None, str | None]:
        """Log text, progress and status to write, clearing the pending state."""
        with self._lock:
            logs = "".join(self.pending_logs) or None
            self.pending_logs.clear()
            self.dirty = False
            return logs, self.job.progress, self.job.status


def _cap(text: str) -> str:
    if len(text) <= MAX_LOG_CHARS:
        return text
    return TRUNCATED_MARKER + text[len(text) - MAX_LOG_CHARS + len(TRUNCATED_MARKER) :]


_current: ContextVar[JobContext | None] = ContextVar("asyncjobs_current_job", default=None)


def current_context() -> JobContext:
    context = _current.get()
    if context is None:
        raise NoCurrentJobError("current_job() is only available inside a running job")
    return context


def current_job() -> BackgroundJob:
    """The job being executed (a ``LookupError`` outside a job)."""
    return current_context().job


def update_status(*, progress: float | None = None, status: str | None = None) -> None:
    """Report progress (0..1) and a status line for the running job."""
    context = current_context()
    if progress is not None:
        # A float, as every database stores it: one value it cannot store (a Decimal, say)
        # would hold up the progress writes of every job running here.
        if (
            not isinstance(progress, int | float)
            or isinstance(progress, bool)
            or not 0.0 <= progress <= 1.0
        ):
            raise InvalidOptionsError(f"progress must be a number from 0 to 1, got {progress!r}")
        context.job.progress = float(progress)
        context.progress_reported = True
    if status is not None:
        if not isinstance(status, str):
            raise InvalidOptionsError(f"status must be a str, got {type(status).__name__}")
        # (MySQL's status column holds 64 KB)
        context.job.status = storable_text(status[:MAX_STATUS_CHARS])
    context.job.last_activity_date = datetime.now(UTC)
    context.dirty = True


def cancellation_requested() -> bool:
    """Whether the running job was asked to stop (for sync commands, which cannot be
    interrupted)."""
    return current_context().cancel_event.is_set()


_formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")


class JobLogger(logging.LoggerAdapter[logging.Logger]):
    """Logs to the normal ``asyncjobs.job`` logger and to the running job's ``logs``."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        context = _current.get()
        # The job's own log keeps INFO and above even when the app's logging is quieter.
        if context is not None and (level >= logging.INFO or self.isEnabledFor(level)):
            exc_info = _exc_info(kwargs.get("exc_info"))  # .exception(): the traceback too
            record = self.logger.makeRecord(
                self.logger.name, level, "(job)", 0, msg, args, exc_info
            )
            try:
                line = _formatter.format(record)
            except Exception:  # a message and arguments that do not format: as logging does,
                line = f"{msg!r} % {args!r} (could not be formatted)"  # report, go on
            context.append_log(line)
        kwargs.setdefault("extra", {}).update(self.extra or {})
        # The record names the job's code, not this method (logging's own frames are skipped).
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
        if self.logger.isEnabledFor(level):
            self.logger.log(level, msg, *args, **kwargs)


def _exc_info(value: Any) -> Any:
    """An ``exc_info`` argument as the (type, value, traceback) a record holds, as logging
    reads it."""
    if isinstance(value, BaseException):
        return (type(value), value, value.__traceback__)
    if isinstance(value, tuple):
        return value
    if value:
        return sys.exc_info()
    return None


def job_logger() -> logging.LoggerAdapter[logging.Logger]:
    """A logger that writes to the normal log *and* to the current job's ``logs``."""
    context = current_context()
    return JobLogger(_log, {"job_id": context.job.id, "job_ref_id": context.job.ref_id})
