"""When a recurring job runs: a cron expression in a time zone, or a fixed interval.

A :class:`Schedule` is immutable and hashable, and has a text form for storage::

    cron:<normalised expression>|<time zone>     cron:0 */2 * * *|Europe/Berlin
    interval:<seconds>                           interval:90.0

The time zone is an IANA name (``Europe/Berlin``), ``UTC``, or a fixed offset
written ``+HH:MM`` / ``-HH:MM`` (``+HH:MM:SS`` when it has seconds).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any, ClassVar, Literal, overload
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from asyncjobs.cron import CronExpression
from asyncjobs.exceptions import ConfigurationError, CronFormatError

__all__ = ["Schedule"]

#: the longest text form every database stores (MySQL's schedule column is VARCHAR(255))
_MAX_TEXT_CHARS = 255

_OFFSET_RE = re.compile(r"([+-])([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?")


def _offset_name(offset: timedelta) -> str:
    sign = "-" if offset < timedelta(0) else "+"
    seconds = int(abs(offset).total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{sign}{hours:02d}:{minutes:02d}" + (f":{secs:02d}" if secs else "")


def _resolve_tz(tz: str | tzinfo | None) -> tuple[tzinfo, str]:
    """The tzinfo to compute in and the name that recreates it."""
    if tz is None:
        return UTC, "UTC"
    if isinstance(tz, str):
        if tz.upper() == "UTC":
            return UTC, "UTC"
        m = _OFFSET_RE.fullmatch(tz)
        if m is not None:
            sign, hh, mm, ss = m.groups()
            if int(mm) > 59 or int(ss or 0) > 59:
                raise ConfigurationError(f"time zone offset {tz!r} is not hh:mm[:ss]")
            delta = timedelta(hours=int(hh), minutes=int(mm), seconds=int(ss or 0))
            if delta >= timedelta(hours=24):
                raise ConfigurationError(f"time zone offset {tz!r} is out of range")
            return _resolve_tz(timezone(-delta if sign == "-" else delta))
        try:
            zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise ConfigurationError(f"unknown time zone {tz!r}") from exc
        return zone, tz
    if isinstance(tz, ZoneInfo):
        if tz.key is None:
            raise ConfigurationError("a ZoneInfo built from a file has no name to store")
        return tz, tz.key
    if isinstance(tz, timezone):
        offset = tz.utcoffset(None)
        if not offset:
            return UTC, "UTC"
        return tz, _offset_name(offset)
    raise ConfigurationError(
        f"unsupported tzinfo {tz!r}: pass an IANA name, a zoneinfo.ZoneInfo or a datetime.timezone"
    )


def _detect_seconds(expr: str) -> bool:
    text = expr.strip()
    if text.startswith("@"):
        return text.lower() == "@every_second"
    return len(text.split()) == 6


class _IntervalAttribute:
    """``Schedule.interval(every)`` builds a schedule; ``schedule.interval`` is its timedelta."""

    @overload
    def __get__(self, obj: None, owner: type[Schedule]) -> Callable[[timedelta], Schedule]: ...

    @overload
    def __get__(self, obj: Schedule, owner: type[Schedule] | None = None) -> timedelta | None: ...

    def __get__(
        self, obj: Schedule | None, owner: type[Schedule] | None = None
    ) -> Callable[[timedelta], Schedule] | timedelta | None:
        if obj is None:
            return _interval_schedule
        return obj._interval


class Schedule:
    """A recurring schedule: ``Schedule.cron(...)`` or ``Schedule.interval(...)``.

    Class-level constants (all in UTC): ``every_minute``, ``hourly``, ``daily``,
    ``weekly`` (Sunday midnight), ``monthly`` (the 1st) and ``yearly`` (1 January).
    """

    __slots__ = ("_interval", "_tz", "expression", "kind", "tz_name")

    kind: Literal["cron", "interval"]
    expression: CronExpression | None
    tz_name: str
    _interval: timedelta | None
    _tz: tzinfo

    interval = _IntervalAttribute()

    every_minute: ClassVar[Schedule]
    hourly: ClassVar[Schedule]
    daily: ClassVar[Schedule]
    weekly: ClassVar[Schedule]
    monthly: ClassVar[Schedule]
    yearly: ClassVar[Schedule]

    def __init__(
        self,
        kind: Literal["cron", "interval"],
        expression: CronExpression | None,
        tz: tzinfo,
        tz_name: str,
        interval: timedelta | None,
    ) -> None:
        """Internal: use :meth:`cron`, :meth:`interval` or :meth:`from_text`."""
        setattr_ = object.__setattr__
        setattr_(self, "kind", kind)
        setattr_(self, "expression", expression)
        setattr_(self, "_tz", tz)
        setattr_(self, "tz_name", tz_name)
        setattr_(self, "_interval", interval)

    @staticmethod
    def cron(
        expr: str | CronExpression, tz: str | tzinfo | None = None, *, seconds: bool | None = None
    ) -> Schedule:
        """A cron schedule evaluated on the wall clock of ``tz`` (default UTC); ``expr`` is its
        text or a parsed CronExpression.

        ``seconds=None`` detects a leading seconds field from the field count (six).
        Raises CronFormatError for a bad expression, ConfigurationError for a bad tz or for a
        schedule whose text form is too long to store.
        """
        schedule = _cron_schedule(expr, tz, seconds)
        text = schedule.to_text()
        if len(text) > _MAX_TEXT_CHARS:
            raise ConfigurationError(
                f"the cron schedule's stored form is {len(text)} characters, more than the "
                f"{_MAX_TEXT_CHARS} every database holds: {text[:60]!r}... "
                "(write long lists as ranges or steps)"
            )
        return schedule

    def next_after(self, after: datetime) -> datetime | None:
        """The first run strictly after ``after`` (aware), as an aware UTC datetime.

        None when the cron expression has no later occurrence, or none before the end of
        year 9999.
        """
        if after.tzinfo is None or after.utcoffset() is None:
            raise ValueError("Schedule.next_after() needs a timezone-aware datetime")
        try:
            if self.expression is None:
                assert self._interval is not None
                return after.astimezone(UTC) + self._interval
            found = self.expression.next(after.astimezone(self._tz))
            return None if found is None else found.astimezone(UTC)
        except OverflowError:  # past year 9999: no later run can be told
            return None

    def to_text(self) -> str:
        """The storage form; :meth:`from_text` turns it back into an equal schedule."""
        if self.expression is None:
            assert self._interval is not None
            return f"interval:{self._interval.total_seconds()!r}"
        return f"cron:{self.expression}|{self.tz_name}"

    @staticmethod
    def from_text(text: str) -> Schedule:
        """Parse the output of :meth:`to_text`."""
        if not isinstance(text, str):
            raise ConfigurationError(f"a stored schedule is text, not {type(text).__name__}")
        kind, sep, body = text.partition(":")
        if sep and kind == "cron":
            expr, bar, tz_name = body.rpartition("|")
            if not bar:
                raise ConfigurationError(f"stored cron schedule {text!r} has no time zone")
            # Unchecked for length: a schedule stored before the limit must still be read.
            return _cron_schedule(expr, tz_name, None)
        if sep and kind == "interval":
            try:
                seconds = float(body)
                every = timedelta(seconds=seconds)
            except (ValueError, OverflowError) as exc:
                raise ConfigurationError(f"bad stored interval {text!r}") from exc
            return _interval_schedule(every)
        raise ConfigurationError(f"unknown stored schedule {text!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def _identity(self) -> tuple[Any, ...]:
        return (self.kind, self.expression, self.tz_name, self._interval)

    def __repr__(self) -> str:
        if self.expression is None:
            return f"Schedule.interval({self._interval!r})"
        return f"Schedule.cron({str(self.expression)!r}, {self.tz_name!r})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Schedule is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Schedule is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Schedule.from_text, (self.to_text(),))


def _cron_schedule(
    expr: str | CronExpression, tz: str | tzinfo | None, seconds: bool | None
) -> Schedule:
    if isinstance(expr, CronExpression):
        expression = expr
    elif isinstance(expr, str):
        if seconds is None:
            seconds = _detect_seconds(expr)
        expression = CronExpression.parse(expr, seconds=seconds)
    else:
        raise CronFormatError(f"a cron expression is text, not {type(expr).__name__}")
    zone, name = _resolve_tz(tz)
    return Schedule("cron", expression, zone, name, None)


def _interval_schedule(every: timedelta) -> Schedule:
    """A schedule that runs ``every`` after the previous run (no fixed anchor)."""
    if not isinstance(every, timedelta):
        raise ConfigurationError(f"interval must be a timedelta, not {type(every).__name__}")
    if not timedelta(0) < every <= _LONGEST_INTERVAL:
        raise ConfigurationError(
            f"interval must be positive and at most {_LONGEST_INTERVAL.days} days, got {every!r}"
        )
    return Schedule("interval", None, UTC, "UTC", every)


#: past this, the next run's date could overflow what a datetime (or a database) holds
_LONGEST_INTERVAL = timedelta(days=3650)


Schedule.every_minute = Schedule.cron("* * * * *")
Schedule.hourly = Schedule.cron("0 * * * *")
Schedule.daily = Schedule.cron("0 0 * * *")
Schedule.weekly = Schedule.cron("0 0 * * 0")
Schedule.monthly = Schedule.cron("0 0 1 * *")
Schedule.yearly = Schedule.cron("0 0 1 1 *")
