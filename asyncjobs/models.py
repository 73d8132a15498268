"""The job records users see: options, references, states, jobs and results."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import msgspec

from .exceptions import InvalidOptionsError, ReplyToError


class JobState(StrEnum):
    """Where a job is in its life. ``Failed`` and ``Cancelled`` are final and archived together."""

    QUEUED = "Queued"
    STARTED = "Started"
    EXECUTED = "Executed"  # the command succeeded; its callback has not yet
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def is_final(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


FINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})


#: the largest id the job tables hold (BIGINT), and the largest INTEGER (priority, retries)
_MAX_ID = 2**63 - 1
_MAX_INT = 2**31 - 1
#: a timeout past this is a mistake (a deadline that far off is no deadline)
_MAX_TIMEOUT = timedelta(days=366)
#: the longest name (ref id, worker, tag, task name, ...) every database holds: MySQL's columns
#: for them are VARCHAR(255), so the same limit applies on every dialect
MAX_NAME_CHARS = 255
#: the longest reply_to: a URL, which HTTP servers refuse long before this (MySQL's column is
#: TEXT, 65 535 bytes, which this many characters fit in whatever their UTF-8 length)
MAX_REPLY_TO_CHARS = 8192


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidOptionsError(f"{name} must be an int, got {value!r}")
    if not low <= value <= high:
        raise InvalidOptionsError(f"{name} must be within {low}..{high}, got {value}")


def check_text(
    name: str,
    value: object,
    *,
    empty_ok: bool = False,
    max_chars: int | None = None,
    secret: bool = False,
) -> None:
    """A string option every database can store: text, not empty, valid Unicode (a lone
    surrogate cannot be written as UTF-8), without NUL (PostgreSQL's text cannot hold it) and,
    for a column of limited width, at most ``max_chars`` characters. The error repeats the
    value, unless it is ``secret`` (a ReplyTo may hold a password)."""
    if not isinstance(value, str) or not (value or empty_ok):
        got = type(value).__name__ if secret and value else repr(value)
        raise InvalidOptionsError(f"{name} must be a non-empty string, got {got}")
    if max_chars is not None and len(value) > max_chars:
        start = "" if secret else f": {value[:40]!r}..."
        raise InvalidOptionsError(
            f"{name} must be at most {max_chars} characters, got {len(value)}{start}"
        )
    if "\x00" in value:
        got = "" if secret else f", got {value!r}"
        raise InvalidOptionsError(f"{name} must not contain NUL characters{got}")
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise InvalidOptionsError(f"{name} is not valid Unicode text: {exc}") from None


def check_name(name: str, value: object) -> None:
    """A name (ref id, worker, tag, task name, ...) every database stores and compares alike:
    text of at most MAX_NAME_CHARS characters, a character past U+FFFF (an emoji, say)
    counting two (SQL Server's nvarchar counts UTF-16 units), not ending with a space (MySQL's
    collations compare text without its trailing spaces: "w " and "w" would be one worker
    there and two elsewhere)."""
    check_text(name, value, max_chars=MAX_NAME_CHARS)
    assert isinstance(value, str)
    if len(value) > MAX_NAME_CHARS // 2:  # (shorter text is short enough however written)
        units = len(value.encode("utf-16-le")) // 2
        if units > MAX_NAME_CHARS:
            raise InvalidOptionsError(
                f"{name} must be at most {MAX_NAME_CHARS} characters, a character past U+FFFF "
                f"(an emoji, say) counting two, got {units}: {value[:40]!r}..."
            )
    if value.endswith(" "):
        raise InvalidOptionsError(f"{name} must not end with a space, got {value!r}")


#: args and meta as the store encodes them: a value JSON cannot hold becomes its text
STORED_JSON_ENCODER = msgspec.json.Encoder(enc_hook=str)


def _check_json(name: str, value: object) -> None:
    """``value`` as it will be stored is JSON every database stores. The encoded text is what
    counts: the encoder also writes sets, dataclasses, Structs and other objects (as their
    text), and any of them may hold a NUL, which PostgreSQL's jsonb refuses."""
    try:
        text = STORED_JSON_ENCODER.encode(value)
    except UnicodeEncodeError as exc:  # a lone surrogate
        raise InvalidOptionsError(f"{name} is not valid Unicode text: {exc}") from None
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError) as exc:
        # (RecursionError: a container that holds itself)
        raise InvalidOptionsError(f"{name} cannot be stored as JSON: {exc}") from None
    # A NUL is written as \u0000; the text may also hold it after an escaped backslash, so the
    # plain JSON it decodes to is walked to tell the two apart.
    if b"\\u0000" in text:
        _check_json_text(name, msgspec.json.decode(text))


def _check_json_text(name: str, value: object) -> None:
    """Every string in a JSON value (keys too) is text every database stores."""
    if isinstance(value, str):
        check_text(name, value, empty_ok=True)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_json_text(name, key)
            _check_json_text(name, item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_json_text(name, item)


def storable_text(text: str) -> str:
    """Text a job produced (a log line, a status, an error message), made storable in every
    database: NUL (which PostgreSQL's text and jsonb refuse) and lone surrogates (which UTF-8
    cannot encode, e.g. from os.fsdecode of a bad file name) become replacement characters.
    One unstorable outcome would otherwise fail every write of the batch it is in."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode()
    return text


@dataclass(frozen=True, slots=True, kw_only=True)
class JobOptions:
    """How to run one job. Every field is stored with the job and returned with it."""

    ref_id: str | None = None  # unique; generated when absent
    parent_id: int | None = None
    worker: str | None = None  # jobs of one named worker run one at a time, in enqueue order
    run_after: datetime | None = None  # timezone-aware
    created_by: str | None = None
    retry_limit: int | None = None  # retries after the first attempt
    timeout: timedelta | None = None
    callback: str | None = None  # a command run with the result after success
    depends_on: int | None = None  # run only after this job completed
    user_id: str | None = None
    reply_to: str | None = None
    tag: str | None = None
    batch_id: str | None = None
    args: Mapping[str, str] | None = None
    meta: Mapping[str, Any] | None = None
    priority: int = 0  # higher first
    run_command: bool = False  # recurring tasks: run transiently instead of enqueueing

    def __post_init__(self) -> None:
        # Checked here, so that a bad value fails the call that made it, not a claim or a
        # scheduler run later (or a database's range check, with the driver's own error).
        for name in ("parent_id", "depends_on"):
            _check_int(name, getattr(self, name), 1, _MAX_ID)
        _check_int("retry_limit", self.retry_limit, 0, _MAX_INT)
        _check_int("priority", self.priority, -_MAX_INT - 1, _MAX_INT)
        if self.run_after is not None:
            if not isinstance(self.run_after, datetime):
                raise InvalidOptionsError(
                    f"run_after must be a datetime, got {type(self.run_after).__name__}"
                )
            if self.run_after.tzinfo is None:
                raise InvalidOptionsError(
                    "run_after must be timezone-aware (e.g. datetime.now(UTC) + timedelta(...)); "
                    f"got naive {self.run_after.isoformat()}"
                )
            if not 1000 <= self.run_after.year <= 9998:  # what every database stores
                raise InvalidOptionsError(
                    f"run_after must be within the years 1000-9998, got {self.run_after}"
                )
        if self.timeout is not None:
            if not isinstance(self.timeout, timedelta):
                raise InvalidOptionsError(
                    f"timeout must be a timedelta, got {type(self.timeout).__name__}"
                )
            if not timedelta(0) < self.timeout <= _MAX_TIMEOUT:
                raise InvalidOptionsError(
                    f"timeout must be positive and at most {_MAX_TIMEOUT.days} days, "
                    f"got {self.timeout}"
                )
        for name in ("args", "meta"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), Mapping):
                raise InvalidOptionsError(f"{name} must be a mapping, got {getattr(self, name)!r}")
        if self.args is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.args.items()
        ):
            raise InvalidOptionsError("args must map str to str")
        if self.meta is not None:
            _check_json("meta", self.meta)
        for name in ("worker", "tag", "batch_id", "ref_id", "callback", "created_by", "user_id"):
            value = getattr(self, name)
            if value is not None:
                check_name(name, value)
        if self.reply_to is not None:
            check_text("reply_to", self.reply_to, max_chars=MAX_REPLY_TO_CHARS, secret=True)
            from .replyto import check_reply_to  # (replyto reads the job context: no cycle)

            try:
                check_reply_to(self.reply_to)
            except ReplyToError as exc:
                raise InvalidOptionsError(f"reply_to: {exc}") from exc
        for key, value in (self.args or {}).items():
            check_text("args", key, empty_ok=True)
            check_text("args", value, empty_ok=True)

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-able values (for recurring tasks, which store them)."""
        values: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == f.default:
                continue
            if isinstance(value, timedelta):
                value = value.total_seconds()
            elif isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, Mapping):
                value = dict(value)
            values[f.name] = value
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> JobOptions:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known}
        if kwargs.get("timeout") is not None:
            kwargs["timeout"] = timedelta(seconds=float(kwargs["timeout"]))
        if kwargs.get("run_after") is not None:
            kwargs["run_after"] = datetime.fromisoformat(kwargs["run_after"])
        return cls(**kwargs)


@dataclass(frozen=True, slots=True)
class JobRef:
    """What enqueueing returns: the job's id and its unique reference id."""

    id: int
    ref_id: str


@dataclass(frozen=True, slots=True)
class JobError:
    """Why a job failed: the message, the exception type and its traceback."""

    message: str
    type: str
    traceback: str | None = None


@dataclass(slots=True, kw_only=True)
class BackgroundJob:
    """One job with every stored column. Inside a job, ``current_job()`` returns it.

    It is mutable because a running (or transient) job's record is updated as it runs.
    """

    id: int
    ref_id: str
    request_type: str  # "CMD" or "API"
    request: str  # the request type's name
    request_body: str  # JSON
    state: JobState
    created_date: datetime
    retry_limit: int
    parent_id: int | None = None
    worker: str | None = None
    tag: str | None = None
    batch_id: str | None = None
    callback: str | None = None
    depends_on: int | None = None
    run_after: datetime | None = None
    created_by: str | None = None
    command: str | None = None
    user_id: str | None = None
    response: str | None = None
    response_body: str | None = None
    started_date: datetime | None = None
    completed_date: datetime | None = None
    notified_date: datetime | None = None
    attempts: int = 0
    duration_ms: int | None = None
    timeout_secs: float | None = None
    progress: float | None = None
    status: str | None = None
    logs: str | None = None
    last_activity_date: datetime | None = None
    reply_to: str | None = None
    error_code: str | None = None
    error: JobError | None = None
    args: dict[str, str] | None = None
    meta: dict[str, Any] | None = None
    priority: int = 0
    # Filled in for a running job only.
    parent_job: BackgroundJob | None = field(default=None, repr=False)
    user: Any = field(default=None, repr=False)
    request_object: Any = field(default=None, repr=False)
    result: Any = field(default=None, repr=False)

    @property
    def timeout(self) -> timedelta | None:
        return None if self.timeout_secs is None else timedelta(seconds=self.timeout_secs)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSummary:
    """The small row kept for every job, active or archived."""

    id: int
    ref_id: str
    request_type: str
    request: str
    state: JobState
    created_date: datetime
    parent_id: int | None = None
    worker: str | None = None
    tag: str | None = None
    batch_id: str | None = None
    callback: str | None = None
    depends_on: int | None = None
    created_by: str | None = None
    command: str | None = None
    user_id: str | None = None
    started_date: datetime | None = None
    completed_date: datetime | None = None
    duration_ms: int | None = None
    attempts: int = 0
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class JobResult:
    """A job as found in the store: its summary and whichever table holds it now."""

    summary: JobSummary
    queued: BackgroundJob | None = None
    completed: BackgroundJob | None = None
    failed: BackgroundJob | None = None

    @property
    def job(self) -> BackgroundJob | None:
        return self.queued or self.completed or self.failed

    @property
    def state(self) -> JobState:
        job = self.job
        return job.state if job is not None else self.summary.state


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduledTask:
    """A recurring task as registered, with its run history."""

    name: str
    schedule: Any  # asyncjobs.Schedule
    request_type: str  # "CMD" or "API"
    command: str | None
    request: str
    request_body: str
    options: JobOptions
    skip_if_running: bool
    enabled: bool
    last_run: datetime | None
    last_job_id: int | None
    next_run: datetime | None


# Field names by name, to build a record from a row with the model's own (interned) strings as
# keywords: keywords are matched to parameters by identity first, and a driver's column names
# are fresh strings, each then compared with every parameter name in turn (for BackgroundJob's
# 40 fields that made the constructor ~17 us instead of ~2 us, on the claim's hot path).
_JOB_FIELDS = {f.name: f.name for f in fields(BackgroundJob)}
_SUMMARY_FIELDS = {f.name: f.name for f in fields(JobSummary)}
