"""Cron expressions: parsing, normalisation and a fast next-occurrence search.

The syntax and semantics follow Hangfire's Cronos library.

Fields (``seconds=True`` adds the leading seconds field)::

    [second] minute hour day-of-month month day-of-week
     0-59    0-59   0-23 1-31         1-12  0-7 (0 and 7 are Sunday)

Fields are separated by spaces or tabs. Every field accepts ``*`` (or ``?``),
a number, a range ``a-b``, a step ``*/n``, ``a-b/n`` or ``a/n`` (``a`` up to the
field maximum, every ``n``), and comma-separated lists of those. A step must lie
between 1 and the field maximum. As in Cronos, the day-of-week maximum is 7, so
``1/2`` is Monday, Wednesday, Friday and Sunday. A range whose start is greater
than its end wraps around: ``SAT-TUE``, ``22-2`` in hours, ``20-5`` in
day-of-month (the 20th to the 31st, whatever the month's length, then the 1st to
the 5th), ``NOV-FEB`` in months; a step continues across the wrap. Months accept
``JAN``-``DEC``, days of week ``SUN``-``SAT``; everything is case-insensitive.

Day-of-month also accepts, each alone in the field:

* ``L`` the last day of the month, ``L-n`` the n-th day before it (0-30);
* ``nW`` the weekday (Monday-Friday) nearest to day ``n`` without leaving the
  month (``1W`` on a Saturday is Monday the 3rd; ``nW`` never matches in a month
  without day ``n``); ``LW`` and ``L-nW`` the weekday nearest to that day.

Day-of-week also accepts, alone in the field, ``d#n`` (the n-th such weekday of
the month, n = 1-5, e.g. ``FRI#3``) and ``dL`` (the last such weekday, ``5L``).

When day-of-month and day-of-week are both restricted (neither is ``*`` nor
``?``), a day must match **both**, as in Cronos and Quartz. Vixie cron would
fire when *either* matches; here ``0 0 13 * FRI`` fires only on Friday the 13th.

Macros: ``@every_second`` (only with ``seconds=True``), ``@every_minute``,
``@hourly``, ``@daily``, ``@midnight``, ``@weekly`` (Sunday), ``@monthly``,
``@yearly``, ``@annually``.

:meth:`CronExpression.next` returns None when nothing matches within 400 years
(the Gregorian calendar repeats every 400 years, so nothing ever will, as for
``0 0 30 2 *``) or before the year 10000.

Time zones and daylight saving time (as Cronos): occurrences are computed on
the wall clock of ``after.tzinfo`` (a :class:`zoneinfo.ZoneInfo`, a fixed
:class:`datetime.timezone`, or another tzinfo with PEP 495 ``fold`` support).

* An occurrence inside a skipped interval (spring forward) fires once, at the
  instant the clocks jumped: ``0 2 * * *`` in America/New_York fires at 03:00
  EDT on the day DST starts, and ``*/15`` ticks inside the gap collapse into
  that one occurrence.
* In a repeated interval (fall back), an expression whose hour field is
  interval-like - ``*`` or a step pattern that runs through the whole day,
  such as ``*/2`` or ``1/3`` - fires in both passes (the second pass is
  returned with ``fold=1``). Any other expression fires at a fixed time of day
  and fires once, in the first pass. Cronos looks at the syntax of the
  seconds, minutes and hours fields instead; this rule depends only on the set
  of hours, so that equal (normalised) expressions always behave alike.

``str(expr)`` is a normalised form: numbers only (no names), ``*`` for a full
field, ``*/n``, ``a/n``, ``a-b/n`` or ``a-b`` for an arithmetic progression of
three or more values, otherwise a sorted list of values and runs. It has six
fields exactly when the expression was parsed with ``seconds=True`` (macros
included), so ``CronExpression.parse(str(e), seconds=e.has_seconds) == e``.
Expressions are equal (and hash equal) when their normalised forms are, so
``*/15 * * * *`` equals ``0,15,30,45 * * * *`` - but a 5-field expression never
equals a 6-field one.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Any, Final, NamedTuple, NoReturn

from asyncjobs.exceptions import CronFormatError

__all__ = ["CronExpression", "CronFormatError"]


class _Field(NamedTuple):
    name: str
    lo: int
    hi: int  # largest value accepted in the text (7 for day-of-week)
    top: int  # largest value stored in the mask (day-of-week 7 folds to 0)
    full: int  # mask with every value set
    names: Mapping[str, int] | None


_MONTH_NAMES: Final = {
    name: i + 1
    for i, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
    )
}
_DAY_NAMES: Final = {
    name: i for i, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))
}

_SECOND: Final = _Field("second", 0, 59, 59, (1 << 60) - 1, None)
_MINUTE: Final = _Field("minute", 0, 59, 59, (1 << 60) - 1, None)
_HOUR: Final = _Field("hour", 0, 23, 23, (1 << 24) - 1, None)
_DOM: Final = _Field("day-of-month", 1, 31, 31, (1 << 32) - 2, None)
_MONTH: Final = _Field("month", 1, 12, 12, (1 << 13) - 2, _MONTH_NAMES)
_DOW: Final = _Field("day-of-week", 0, 7, 6, 0x7F, _DAY_NAMES)

_FIVE_FIELDS: Final = (_MINUTE, _HOUR, _DOM, _MONTH, _DOW)

# Day-of-month specials (the key's dom_kind).
_DOM_MASK: Final = 0
_DOM_LAST: Final = 1  # arg = offset from the last day
_DOM_NEAREST: Final = 2  # arg = day of month, always with the W flag
# Day-of-week specials (the key's dow_kind).
_DOW_MASK: Final = 0
_DOW_NTH: Final = 1  # n = 1-5, the weekday is the single bit of the mask
_DOW_LAST: Final = 2

_MACROS: Final = {
    "@every_minute": "* * * * *",
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

_LAST_RE: Final = re.compile(r"L(?:-([0-9]{1,2}))?(W?)")

# _FULL_DAYS[n]: bits 1..n set (the days of an n-day month).
_FULL_DAYS: Final = tuple((1 << (n + 1)) - 2 for n in range(32))
_DAYS_IN_MONTH: Final = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# Multiplying a 7-day pattern (bits 1-7) by this repeats it over 35 days.
_REPEAT_WEEK: Final = sum(1 << (7 * k) for k in range(5))
# Every (month, day, weekday) combination recurs within one 400-year Gregorian cycle.
_SEARCH_YEARS: Final = 400
_MAX_YEAR: Final = 9999


def _fail(field: _Field, token: str, reason: str) -> NoReturn:
    raise CronFormatError(f"invalid {field.name} field {token!r}: {reason}")


def _digits(text: str) -> int | None:
    # ASCII only: str.isdigit() alone accepts '²' and other scripts' digits. Long
    # strings map to a large number so that int() never meets its size limit.
    if text.isdigit() and text.isascii():
        return int(text) if len(text) <= 6 else 1_000_000
    return None


def _number(text: str, field: _Field, token: str, what: str) -> int:
    value = _digits(text)
    if value is None:
        _fail(field, token, f"{what} {text!r} is not a number")
    return value


def _value(text: str, field: _Field, token: str) -> int:
    value = _digits(text)
    if value is None:
        if field.names is None:
            _fail(field, token, f"{text!r} is not a number")
        if text not in field.names:
            _fail(field, token, f"{text!r} is neither a number nor a known name")
        value = field.names[text]
    if not field.lo <= value <= field.hi:
        _fail(field, token, f"{text} is out of range {field.lo}-{field.hi}")
    return value


def _range_bits(start: int, end: int, step: int, field: _Field) -> int:
    if field is _DOW and start == 7 and end < 7:
        start = 0  # Sunday written as 7 at the start of a range
    if start <= end:
        if step == 1:
            return (1 << (end + 1)) - (1 << start)
        bits = 0
        for v in range(start, end + 1, step):
            bits |= 1 << v
        return bits
    # Wrap around: continue past the top value and fold back to the bottom.
    cycle = field.top - field.lo + 1
    bits = 0
    for v in range(start, end + cycle + 1, step):
        bits |= 1 << (v if v <= field.top else v - cycle)
    return bits


def _parse_list(token: str, field: _Field) -> int:
    bits = 0
    for item in token.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            step = _number(step_text, field, token, "step")
            if not 1 <= step <= field.hi:
                _fail(field, token, f"step {step} is out of range 1-{field.hi}")
        if base in ("*", "?"):
            start, end = field.lo, field.hi
        else:
            start_text, dash, end_text = base.partition("-")
            start = _value(start_text, field, token)
            if dash:
                end = _value(end_text, field, token)
            elif slash:
                end = field.hi
            else:
                end = start
        bits |= _range_bits(start, end, step, field)
    return bits


def _parse_field(token: str, field: _Field) -> int:
    if token == "*" or token == "?":
        return field.full
    if token.isdigit() and token.isascii() and len(token) <= 2:
        value = int(token)
        if not field.lo <= value <= field.hi:
            _fail(field, token, f"{value} is out of range {field.lo}-{field.hi}")
        return 1 << value
    if field.names is not None:
        token = token.upper()
    return _parse_list(token, field)


def _fold_sunday(bits: int) -> int:
    return (bits | 1) & 0x7F if bits & 0x80 else bits


def _format_mask(bits: int, field: _Field) -> str:
    if bits == field.full:
        return "*"
    values = [v for v in range(field.lo, field.top + 1) if bits >> v & 1]
    if len(values) == 1:
        return str(values[0])
    first, last = values[0], values[-1]
    step = values[1] - first
    if len(values) >= 3 and all(b - a == step for a, b in itertools.pairwise(values)):
        if step == 1:
            return f"{first}-{last}"
        if last + step > field.hi:  # "a/n" runs to the field maximum
            return f"*/{step}" if first == field.lo else f"{first}/{step}"
        return f"{first}-{last}/{step}"
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{values[i]}-{values[j]}")
        else:
            parts.extend(str(v) for v in values[i : j + 1])
        i = j + 1
    return ",".join(parts)


def _table(bits: int, size: int) -> list[int]:
    """table[v] = the smallest value >= v in ``bits``, or -1; ``size`` entries."""
    table = [-1] * size
    nxt = -1
    for v in range(size - 1, -1, -1):
        if bits >> v & 1:
            nxt = v
        table[v] = nxt
    return table


def _interval_like_hours(bits: int) -> bool:
    """True when the hours form a step pattern through the whole day (``*``, ``*/n``, ``a/n``)."""
    hours = [h for h in range(24) if bits >> h & 1]
    if len(hours) < 2:
        return False
    step = hours[1] - hours[0]
    return (
        hours[0] < step
        and hours[-1] + step > 23
        and all(b - a == step for a, b in itertools.pairwise(hours))
    )


def _transition(tz: tzinfo, lo: datetime, hi: datetime) -> datetime:
    """The naive-UTC instant in (lo, hi] at which ``tz`` changes its offset.

    ``lo`` has the offset before the transition and ``hi`` the one after; the
    binary search runs on whole seconds, the resolution of tz database transitions,
    from ``lo``'s whole second (from ``lo`` itself, a start with a fraction of a second,
    as a clock reads, put the transition that fraction late).
    """
    lo = lo.replace(microsecond=0)
    before = tz.fromutc(lo.replace(tzinfo=tz)).utcoffset()
    low, high = 0, math.ceil((hi - lo).total_seconds())
    while high - low > 1:
        mid = (low + high) // 2
        if tz.fromutc((lo + timedelta(seconds=mid)).replace(tzinfo=tz)).utcoffset() == before:
            low = mid
        else:
            high = mid
    return lo + timedelta(seconds=high)


# Internal representation, also the identity used by __eq__ and __hash__:
# (has_seconds, second, minute, hour, day-of-month, month, day-of-week,
#  dom_kind, dom_arg, dom_weekday, dow_kind, dow_n)
_Key = tuple[bool, int, int, int, int, int, int, int, int, bool, int, int]


class _Tables(NamedTuple):
    months: list[int]
    hours: list[int]
    minutes: list[int]
    seconds: list[int]
    first_hour: int
    first_minute: int
    first_second: int
    simple_days: bool  # day-of-month mask only: no weekday rule, no specials
    dom: int


class CronExpression:
    """A parsed, immutable cron expression; see the module docstring for the syntax."""

    __slots__ = ("_cache", "_key", "_never", "_tables", "_text")

    _key: _Key
    _text: str | None
    _tables: _Tables | None
    _never: bool
    _cache: tuple[int, int]

    def __init__(self, text: str, *, seconds: bool = False) -> None:
        """Same as :meth:`parse`."""
        self._init(CronExpression.parse(text, seconds=seconds)._key)

    def _init(self, key: _Key) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "_key", key)
        setattr_(self, "_text", None)
        setattr_(self, "_tables", None)
        setattr_(self, "_never", False)
        # (year * 16 + month, day mask) of the last month _month_days computed.
        setattr_(self, "_cache", (-1, 0))

    @classmethod
    def _from_key(cls, key: _Key) -> CronExpression:
        self = object.__new__(cls)
        self._init(key)
        return self

    # -- parsing ---------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, *, seconds: bool = False) -> CronExpression:
        """Parse ``text``: five fields, or six (seconds first) when ``seconds`` is true.

        Raises :class:`CronFormatError` (a ``ValueError``) for any invalid text.
        """
        if not isinstance(text, str):
            raise TypeError(f"cron expression must be a str, not {type(text).__name__}")
        parts = [p for p in text.replace("\t", " ").split(" ") if p]
        if not parts:
            raise CronFormatError("empty cron expression")
        if parts[0][0] == "@":
            return cls._parse_macro(parts, text, seconds)
        seconds = bool(seconds)
        expected = 6 if seconds else 5
        if len(parts) != expected:
            hint = ""
            if len(parts) == 6 and not seconds:
                hint = " (pass seconds=True for a leading seconds field)"
            elif len(parts) == 5 and seconds:
                hint = " (seconds=True expects a leading seconds field)"
            names = " ".join(f.name for f in ((_SECOND,) if seconds else ()) + _FIVE_FIELDS)
            raise CronFormatError(
                f"expected {expected} fields ({names}), got {len(parts)} in {text!r}{hint}"
            )
        if seconds:
            second = _parse_field(parts[0], _SECOND)
            minute_t, hour_t, dom_t, month_t, dow_t = parts[1:]
        else:
            second = 1
            minute_t, hour_t, dom_t, month_t, dow_t = parts
        minute = _parse_field(minute_t, _MINUTE)
        hour = _parse_field(hour_t, _HOUR)
        month = _parse_field(month_t, _MONTH)

        dom_kind = _DOM_MASK
        dom_arg = 0
        dom_weekday = False
        dom = _DOM.full
        if dom_t != "*" and dom_t != "?":
            upper = dom_t.upper()
            if upper[0] == "L":
                m = _LAST_RE.fullmatch(upper)
                if m is None:
                    _fail(_DOM, dom_t, "expected L, L-n, LW or L-nW")
                dom_kind = _DOM_LAST
                dom_arg = int(m.group(1) or 0)
                if dom_arg > 30:
                    _fail(_DOM, dom_t, f"offset {dom_arg} is out of range 0-30")
                dom_weekday = bool(m.group(2))
            elif upper[-1] == "W":
                dom_kind = _DOM_NEAREST
                dom_arg = _value(upper[:-1], _DOM, dom_t)
                dom_weekday = True
            else:
                dom = _parse_field(upper, _DOM)

        dow_kind = _DOW_MASK
        dow_n = 0
        dow = _DOW.full
        if dow_t != "*" and dow_t != "?":
            upper = dow_t.upper()
            if "#" in upper:
                day_text, _, n_text = upper.partition("#")
                dow = 1 << (_value(day_text, _DOW, dow_t) % 7)
                dow_n = _number(n_text, _DOW, dow_t, "week number")
                if not 1 <= dow_n <= 5:
                    _fail(_DOW, dow_t, f"week number {dow_n} is out of range 1-5")
                dow_kind = _DOW_NTH
            elif len(upper) > 1 and upper[-1] == "L":
                dow = 1 << (_value(upper[:-1], _DOW, dow_t) % 7)
                dow_kind = _DOW_LAST
            else:
                dow = _fold_sunday(_parse_field(upper, _DOW))

        key: _Key = (
            seconds,
            second,
            minute,
            hour,
            dom,
            month,
            dow,
            dom_kind,
            dom_arg,
            dom_weekday,
            dow_kind,
            dow_n,
        )
        return cls._from_key(key)

    @classmethod
    def _parse_macro(cls, parts: list[str], text: str, seconds: bool) -> CronExpression:
        if len(parts) != 1:
            raise CronFormatError(f"unexpected text after the macro in {text!r}")
        name = parts[0].lower()
        if name == "@every_second":
            if not seconds:
                raise CronFormatError("@every_second needs seconds=True (a 6-field expression)")
            return cls.parse("* * * * * *", seconds=True)
        body = _MACROS.get(name)
        if body is None:
            known = ", ".join(["@every_second", *_MACROS])
            raise CronFormatError(f"unknown macro {parts[0]!r} (known: {known})")
        return cls.parse(f"0 {body}" if seconds else body, seconds=seconds)

    # -- identity ----------------------------------------------------------------

    @property
    def has_seconds(self) -> bool:
        """True for a 6-field expression (seconds first)."""
        return self._key[0]

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = self._format()
            object.__setattr__(self, "_text", text)
        return text

    def _format(self) -> str:
        (seconds, second, minute, hour, dom, month, dow, dom_kind, dom_arg, dom_weekday,
         dow_kind, dow_n) = self._key  # fmt: skip
        fields = [_format_mask(second, _SECOND)] if seconds else []
        fields += [_format_mask(minute, _MINUTE), _format_mask(hour, _HOUR)]
        if dom_kind == _DOM_LAST:
            dom_text = "L" + (f"-{dom_arg}" if dom_arg else "") + ("W" if dom_weekday else "")
        elif dom_kind == _DOM_NEAREST:
            dom_text = f"{dom_arg}W"
        else:
            dom_text = _format_mask(dom, _DOM)
        fields += [dom_text, _format_mask(month, _MONTH)]
        weekday = (dow & -dow).bit_length() - 1
        if dow_kind == _DOW_NTH:
            fields.append(f"{weekday}#{dow_n}")
        elif dow_kind == _DOW_LAST:
            fields.append(f"{weekday}L")
        else:
            fields.append(_format_mask(dow, _DOW))
        return " ".join(fields)

    def __repr__(self) -> str:
        extra = ", seconds=True" if self.has_seconds else ""
        return f"CronExpression.parse({str(self)!r}{extra})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CronExpression):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (str(self), self.has_seconds))

    def __copy__(self) -> CronExpression:
        return self

    def __deepcopy__(self, memo: object) -> CronExpression:
        return self

    # -- searching ---------------------------------------------------------------

    def _build_tables(self) -> _Tables:
        (_, second, minute, hour, dom, month, dow, dom_kind, _, _, dow_kind, _) = self._key
        hours = _table(hour, 25)
        minutes = _table(minute, 61)
        seconds = _table(second, 61)
        simple = dom_kind == _DOM_MASK and dow_kind == _DOW_MASK and dow == _DOW.full
        months = _table(month, 14)
        tables = _Tables(
            months, hours, minutes, seconds, hours[0], minutes[0], seconds[0], simple, dom
        )
        object.__setattr__(self, "_tables", tables)
        return tables

    def _month_days(self, year: int, month: int, dim: int) -> int:
        """Bit mask of the matching days of one month (bit d = day d)."""
        tag = year * 16 + month
        cached_tag, cached_days = self._cache  # one read: threads may replace it meanwhile
        if cached_tag == tag:
            return cached_days
        (_, _, _, _, days, _, dow, dom_kind, dom_arg, dom_weekday, dow_kind, dow_n) = self._key
        first = date(year, month, 1).isoweekday() % 7  # cron weekday of the 1st, 0 = Sunday
        if dom_kind != _DOM_MASK:
            day = dim - dom_arg if dom_kind == _DOM_LAST else dom_arg
            if not 1 <= day <= dim:
                days = 0
            else:
                if dom_weekday:
                    weekday = (first + day - 1) % 7
                    if weekday == 6:  # Saturday: Friday, or Monday when the 1st
                        day = day - 1 if day > 1 else day + 2
                    elif weekday == 0:  # Sunday: Monday, or Friday when the last day
                        day = day + 1 if day < dim else day - 2
                days = 1 << day
        if dow_kind == _DOW_MASK:
            if dow != 0x7F:
                # Rotate so that bit k means "weekday of day k+1", then repeat weekly.
                rotated = ((dow >> first) | (dow << (7 - first))) & 0x7F
                days &= (rotated << 1) * _REPEAT_WEEK
        else:
            weekday = (dow & -dow).bit_length() - 1
            if dow_kind == _DOW_NTH:
                day = 1 + (weekday - first) % 7 + 7 * (dow_n - 1)
            else:
                day = dim - ((first + dim - 1) % 7 - weekday) % 7
            days &= 1 << day
        days &= _FULL_DAYS[dim]
        object.__setattr__(self, "_cache", (tag, days))
        return days

    def _seek(
        self, y: int, mo: int, d: int, h: int, mi: int, s: int, tz: tzinfo | None
    ) -> datetime | None:
        """The first matching wall time at or after the given fields, or None.

        ``s`` may be 60 (the start rounded past the minute); larger fields then
        carry through the lookup tables, whose last entry is -1.
        """
        if self._never:
            return None
        t = self._tables or self._build_tables()
        months, hours, minutes, seconds = t.months, t.hours, t.minutes, t.seconds
        h0, m0, s0 = t.first_hour, t.first_minute, t.first_second
        simple, dom = t.simple_days, t.dom
        limit = y + _SEARCH_YEARS
        if limit > _MAX_YEAR:
            limit = _MAX_YEAR
        while True:
            v = months[mo]
            if v != mo:
                if v < 0:
                    y += 1
                    if y > limit:
                        if limit != _MAX_YEAR:  # a whole 400-year cycle without a match
                            object.__setattr__(self, "_never", True)
                        return None
                    v = months[1]
                mo = v
                d = 1
                h = -1  # the day changed: the first time of day matches
            if mo == 2:
                dim = 29 if y % 4 == 0 and (y % 100 != 0 or y % 400 == 0) else 28
            else:
                dim = _DAYS_IN_MONTH[mo]
            days = dom & _FULL_DAYS[dim] if simple else self._month_days(y, mo, dim)
            r = days >> d
            if not r & 1:
                if not r:
                    mo += 1
                    d = 1
                    h = -1
                    continue
                return datetime(y, mo, d + (r & -r).bit_length() - 1, h0, m0, s0, 0, tz)
            if h < 0:
                return datetime(y, mo, d, h0, m0, s0, 0, tz)
            v = hours[h]
            if v != h:
                if v < 0:
                    d += 1
                    h = -1
                    continue
                return datetime(y, mo, d, v, m0, s0, 0, tz)
            v = minutes[mi]
            if v != mi:
                if v >= 0:
                    return datetime(y, mo, d, h, v, s0, 0, tz)
                v = hours[h + 1]
                if v < 0:
                    d += 1
                    h = -1
                    continue
                return datetime(y, mo, d, v, m0, s0, 0, tz)
            v = seconds[s]
            if v >= 0:
                return datetime(y, mo, d, h, mi, v, 0, tz)
            v = minutes[mi + 1]
            if v >= 0:
                return datetime(y, mo, d, h, v, s0, 0, tz)
            v = hours[h + 1]
            if v < 0:
                d += 1
                h = -1
                continue
            return datetime(y, mo, d, v, m0, s0, 0, tz)

    def _seek_from(self, start: datetime, inclusive: bool) -> datetime | None:
        s = start.second
        if not inclusive or start.microsecond:
            s += 1
        return self._seek(start.year, start.month, start.day, start.hour, start.minute, s, None)

    def next(self, after: datetime, *, inclusive: bool = False) -> datetime | None:
        """The first occurrence after ``after`` (or at it, when ``inclusive``).

        ``after`` must be timezone-aware; the result has the same ``tzinfo``
        object (and ``fold=1`` for the second pass of a repeated hour). Returns
        None when no later occurrence exists (``0 0 30 2 *``, or past year 9999).
        """
        tz = after.tzinfo
        if type(tz) is timezone:  # fixed offset: wall time is all there is
            s = after.second
            if not inclusive or after.microsecond:
                s += 1
            return self._seek(after.year, after.month, after.day, after.hour, after.minute, s, tz)
        if tz is None or after.utcoffset() is None:
            raise ValueError("CronExpression.next() needs a timezone-aware datetime")
        try:
            return self._next_zoned(after, tz, inclusive)
        except OverflowError:  # through UTC past year 9999 (or before year 1)
            return None

    def _next_zoned(self, after: datetime, tz: tzinfo, inclusive: bool) -> datetime | None:
        offset = after.utcoffset()
        assert offset is not None
        # Through UTC (`after - offset` keeps tzinfo): astimezone() would return
        # `after` untouched, even when it names a wall time that does not exist.
        local = tz.fromutc(after - offset)
        if not local.fold:
            # Fast path: the next matching wall time, kept when it exists with the
            # start's offset (if repeated, its first pass is the answer: the start
            # is not in a second pass). A transition in between breaks the round trip.
            s = local.second
            if not inclusive or local.microsecond:
                s += 1
            found = self._seek(local.year, local.month, local.day, local.hour, local.minute, s, tz)
            if found is None:
                return None
            local_offset = local.utcoffset()
            assert local_offset is not None
            back = tz.fromutc(found - local_offset)
            if back == found:
                return found
        return self._next_zoned_slow(local, tz, inclusive)

    def _next_zoned_slow(self, local: datetime, tz: tzinfo, inclusive: bool) -> datetime | None:
        """Cronos's rules around transitions; ``local`` is canonical (from fromutc)."""
        start = local.replace(tzinfo=None, fold=0)
        first = local.replace(fold=0).utcoffset()
        second = local.replace(fold=1).utcoffset()
        assert first is not None
        assert second is not None
        if first > second:  # `after` lies in a repeated (fall back) interval
            moment = _transition(tz, start - first, start - second)
            repeat_start, repeat_end = moment + second, moment + first
            if local.fold == 0:
                found = self._seek_from(start, inclusive)
                if found is not None and found < repeat_end:
                    return found.replace(tzinfo=tz)
                start, inclusive = repeat_start, True
            if _interval_like_hours(self._key[3]):
                found = self._seek_from(start, inclusive)
                if found is not None and found < repeat_end:
                    return found.replace(tzinfo=tz, fold=1)
            start, inclusive = repeat_end, True
        found = self._seek_from(start, inclusive)
        if found is None:
            return None
        result = found.replace(tzinfo=tz)
        first = result.utcoffset()
        second = found.replace(tzinfo=tz, fold=1).utcoffset()
        assert first is not None
        assert second is not None
        if first < second:  # skipped (spring forward): fire when the clocks jump
            moment = _transition(tz, found - second, found - first)
            return tz.fromutc(moment.replace(tzinfo=tz))
        return result  # fold=0: the first pass of a repeated time

    def occurrences(
        self,
        start: datetime,
        end: datetime,
        *,
        start_inclusive: bool = True,
        end_inclusive: bool = False,
    ) -> Iterator[datetime]:
        """Occurrences from ``start`` to ``end``, in ``start``'s time zone."""
        if end.tzinfo is None or end.utcoffset() is None:
            raise ValueError("CronExpression.occurrences() needs a timezone-aware end")
        # Compare in UTC: aware datetimes sharing a tzinfo compare by wall time and
        # ignore fold, which would confuse the two passes of a repeated hour.
        stop = end.astimezone(UTC)
        current = self.next(start, inclusive=start_inclusive)
        while current is not None:
            moment = current.astimezone(UTC)
            if moment > stop or (moment == stop and not end_inclusive):
                return
            yield current
            current = self.next(current)


def _restore(text: str, seconds: bool) -> CronExpression:
    return CronExpression.parse(text, seconds=seconds)
