"""Tests for asyncjobs.cron: syntax, errors, search, DST, normalisation, properties."""

from __future__ import annotations

import calendar
import copy
import functools
import pickle
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncjobs import Schedule
from asyncjobs.cron import CronExpression, CronFormatError
from asyncjobs.exceptions import AsyncJobsError

NY = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def nexts(text: str, start: datetime, count: int, *, seconds: bool = False) -> list[datetime]:
    expr = CronExpression.parse(text, seconds=seconds)
    out: list[datetime] = []
    current: datetime | None = start
    for _ in range(count):
        assert current is not None
        current = expr.next(current)
        assert current is not None
        out.append(current)
    return out


def first(text: str, start: datetime, *, seconds: bool = False) -> datetime | None:
    return CronExpression.parse(text, seconds=seconds).next(start)


# --------------------------------------------------------------------------- syntax


def test_every_minute_and_star_question_mark() -> None:
    assert nexts("* * * * *", utc(2024, 1, 1, 10, 0, 30), 3) == [
        utc(2024, 1, 1, 10, 1),
        utc(2024, 1, 1, 10, 2),
        utc(2024, 1, 1, 10, 3),
    ]
    assert CronExpression.parse("0 0 ? * *") == CronExpression.parse("0 0 * * *")
    assert CronExpression.parse("0 0 * * ?") == CronExpression.parse("0 0 * * *")


def test_numbers_lists_and_ranges() -> None:
    assert nexts("5,10 8-9 * * *", utc(2024, 1, 1), 5) == [
        utc(2024, 1, 1, 8, 5),
        utc(2024, 1, 1, 8, 10),
        utc(2024, 1, 1, 9, 5),
        utc(2024, 1, 1, 9, 10),
        utc(2024, 1, 2, 8, 5),
    ]


def test_steps() -> None:
    assert [d.minute for d in nexts("*/20 * * * *", utc(2024, 1, 1), 4)] == [20, 40, 0, 20]
    assert [d.minute for d in nexts("1-30/10 * * * *", utc(2024, 1, 1), 4)] == [1, 11, 21, 1]
    # "10/25" means 10 to the maximum, every 25.
    assert [d.minute for d in nexts("10/25 * * * *", utc(2024, 1, 1), 4)] == [10, 35, 10, 35]
    assert [d.hour for d in nexts("0 */8 * * *", utc(2024, 1, 1, 1), 3)] == [8, 16, 0]


def test_month_and_day_names_case_insensitive() -> None:
    a = CronExpression.parse("0 0 1 jan,Mar-MAY * ")
    assert a == CronExpression.parse("0 0 1 1,3-5 *")
    assert nexts("0 0 1 jan,Mar-MAY *", utc(2024, 1, 2), 3) == [
        utc(2024, 3, 1),
        utc(2024, 4, 1),
        utc(2024, 5, 1),
    ]
    # 2024-01-01 is a Monday.
    assert [d.day for d in nexts("0 12 * * mon-WED", utc(2024, 1, 1), 4)] == [1, 2, 3, 8]


def test_sunday_is_zero_and_seven() -> None:
    zero = CronExpression.parse("0 0 * * 0")
    assert zero == CronExpression.parse("0 0 * * 7")
    assert zero == CronExpression.parse("0 0 * * SUN")
    assert zero.next(utc(2024, 1, 1)) == utc(2024, 1, 7)
    assert str(CronExpression.parse("0 0 * * 5-7")) == "0 0 * * 0,5,6"
    assert CronExpression.parse("0 0 * * 7-2") == CronExpression.parse("0 0 * * 0-2")


def test_wrapping_ranges() -> None:
    # 2024-01-06 is a Saturday.
    assert [d.day for d in nexts("0 0 * * SAT-TUE", utc(2024, 1, 3), 5)] == [6, 7, 8, 9, 13]
    assert [d.hour for d in nexts("0 22-2 * * *", utc(2024, 1, 1, 12), 6)] == [22, 23, 0, 1, 2, 22]
    assert [d.day for d in nexts("0 0 28-2 * *", utc(2024, 2, 1), 5)] == [2, 28, 29, 1, 2]
    assert [d.month for d in nexts("0 0 1 NOV-FEB *", utc(2024, 3, 1), 4)] == [11, 12, 1, 2]
    # A step continues across the wrap: 22, 25 = 1, then past 2.
    assert str(CronExpression.parse("0 22-2/3 * * *")) == "0 1,22 * * *"
    assert str(CronExpression.parse("0 0 20-5 * *")) == "0 0 1-5,20-31 * *"


def test_last_day_of_month() -> None:
    assert [d.date() for d in nexts("0 0 L * *", utc(2024, 1, 31), 3)] == [
        date(2024, 2, 29),
        date(2024, 3, 31),
        date(2024, 4, 30),
    ]
    assert [d.day for d in nexts("0 0 L-1 * *", utc(2023, 1, 1), 3)] == [30, 27, 30]
    assert first("0 0 l-30 2 *", utc(2024, 1, 1)) is None  # February never has a 31st day
    assert first("0 0 L-30 * *", utc(2024, 2, 1)) == utc(2024, 3, 1)


def test_nearest_weekday() -> None:
    # 2024-06-15 is a Saturday -> Friday the 14th; 2024-09-15 a Sunday -> Monday the 16th.
    assert first("0 0 15W 6 *", utc(2024, 1, 1)) == utc(2024, 6, 14)
    assert first("0 0 15W 9 *", utc(2024, 1, 1)) == utc(2024, 9, 16)
    assert first("0 0 15w 5 *", utc(2024, 1, 1)) == utc(2024, 5, 15)  # a Wednesday
    # Never crosses the month: 2024-06-01 (Saturday) -> Monday the 3rd,
    # 2024-03-31 (Sunday) -> Friday the 29th.
    assert first("0 0 1W 6 *", utc(2024, 1, 1)) == utc(2024, 6, 3)
    assert first("0 0 31W 3 *", utc(2024, 1, 1)) == utc(2024, 3, 29)
    # A month without the day has no occurrence: April has no 31st.
    assert first("0 0 31W * *", utc(2024, 4, 1)) == utc(2024, 5, 31)


def test_last_weekday_of_month() -> None:
    # 2024-03-31 is a Sunday, 2024-08-31 a Saturday, 2024-11-30 a Saturday.
    assert [d.date() for d in nexts("0 0 LW * *", utc(2024, 2, 29), 3)] == [
        date(2024, 3, 29),
        date(2024, 4, 30),
        date(2024, 5, 31),
    ]
    assert first("0 0 LW 8 *", utc(2024, 1, 1)) == utc(2024, 8, 30)
    # L-1 of November 2024 is Friday the 29th; L-2W: the 28th is a Thursday.
    assert first("0 0 L-2W 11 *", utc(2024, 1, 1)) == utc(2024, 11, 28)
    # L-1 of June 2024 is Saturday the 29th -> Friday the 28th.
    assert first("0 0 L-1W 6 *", utc(2024, 1, 1)) == utc(2024, 6, 28)


def test_nth_weekday() -> None:
    assert [d.date() for d in nexts("0 0 * * FRI#3", utc(2024, 1, 1), 3)] == [
        date(2024, 1, 19),
        date(2024, 2, 16),
        date(2024, 3, 15),
    ]
    assert first("0 0 * * 5#3", utc(2024, 1, 1)) == utc(2024, 1, 19)
    # Fifth Friday: February 2024 has four, March 2024 has five.
    assert first("0 0 * * 5#5", utc(2024, 2, 1)) == utc(2024, 3, 29)
    assert first("0 0 * * 7#1", utc(2024, 1, 1)) == utc(2024, 1, 7)


def test_last_weekday_of_kind() -> None:
    assert [d.date() for d in nexts("0 0 * * 5L", utc(2024, 1, 1), 3)] == [
        date(2024, 1, 26),
        date(2024, 2, 23),
        date(2024, 3, 29),
    ]
    assert CronExpression.parse("0 0 * * FRIL") == CronExpression.parse("0 0 * * 5l")
    assert first("0 0 * * 0L", utc(2024, 3, 1)) == utc(2024, 3, 31)


def test_day_of_month_and_day_of_week_must_both_match() -> None:
    # Friday the 13th, not "the 13th or any Friday".
    assert [d.date() for d in nexts("0 0 13 * FRI", utc(2024, 1, 1), 2)] == [
        date(2024, 9, 13),
        date(2024, 12, 13),
    ]
    assert first("0 0 L * MON", utc(2024, 1, 1)) == utc(2024, 9, 30)
    # 1W falls on a Monday again in April 2024 (February and March: Thursday, Friday).
    assert first("0 0 1W * 1", utc(2024, 1, 1)) == utc(2024, 4, 1)


@pytest.mark.parametrize(
    ("macro", "equivalent"),
    [
        ("@every_minute", "* * * * *"),
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("  @DAILY\t", "0 0 * * *"),
    ],
)
def test_macros(macro: str, equivalent: str) -> None:
    assert CronExpression.parse(macro) == CronExpression.parse(equivalent)
    assert CronExpression.parse(macro, seconds=True) == CronExpression.parse(
        "0 " + equivalent, seconds=True
    )


def test_every_second_macro_needs_seconds() -> None:
    expr = CronExpression.parse("@every_second", seconds=True)
    assert str(expr) == "* * * * * *"
    assert expr.next(utc(2024, 1, 1, 0, 0, 0)) == utc(2024, 1, 1, 0, 0, 1)
    with pytest.raises(CronFormatError, match="seconds=True"):
        CronExpression.parse("@every_second")


def test_seconds_field() -> None:
    assert nexts("*/20 * * * * *", utc(2024, 1, 1, 0, 0, 5), 4, seconds=True) == [
        utc(2024, 1, 1, 0, 0, 20),
        utc(2024, 1, 1, 0, 0, 40),
        utc(2024, 1, 1, 0, 1, 0),
        utc(2024, 1, 1, 0, 1, 20),
    ]
    assert first("30 15 10 * * *", utc(2024, 1, 1, 10, 15, 30), seconds=True) == utc(
        2024, 1, 2, 10, 15, 30
    )
    expr = CronExpression.parse("0 * * * * *", seconds=True)
    assert expr.has_seconds
    assert not CronExpression.parse("* * * * *").has_seconds
    assert str(expr) == "0 * * * * *"
    assert expr != CronExpression.parse("* * * * *")  # 6 fields never equal 5 fields


def test_whitespace_tolerance() -> None:
    assert CronExpression.parse("  0\t 0  * *   *  ") == CronExpression.parse("0 0 * * *")


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "seconds", "fragments"),
    [
        ("", False, ["empty"]),
        ("   ", False, ["empty"]),
        ("* * * *", False, ["expected 5 fields", "got 4"]),
        ("* * * * * *", False, ["expected 5 fields", "seconds=True"]),
        ("* * * * *", True, ["expected 6 fields"]),
        ("60 * * * *", False, ["minute", "'60'", "0-59"]),
        ("* 24 * * *", False, ["hour", "'24'"]),
        ("* * 0 * *", False, ["day-of-month", "'0'"]),
        ("* * 32 * *", False, ["day-of-month", "'32'"]),
        ("* * * 13 *", False, ["month", "'13'"]),
        ("* * * * 8", False, ["day-of-week", "'8'"]),
        ("60 * * * * *", True, ["second", "'60'"]),
        ("*/0 * * * *", False, ["minute", "'*/0'", "step"]),
        ("*/60 * * * *", False, ["minute", "'*/60'", "step"]),
        ("0 */24 * * *", False, ["hour", "'*/24'", "step"]),
        ("0 0 * */13 *", False, ["month", "'*/13'"]),
        ("* * * FOO *", False, ["month", "'FOO'"]),
        ("* * * * FRX", False, ["day-of-week", "'FRX'"]),
        ("* * * * FRIDAY", False, ["day-of-week", "'FRIDAY'"]),
        ("* * * JAN-FOO *", False, ["month", "JAN-FOO"]),
        ("MON * * * *", False, ["minute", "'MON'"]),
        ("1,,2 * * * *", False, ["minute", "'1,,2'"]),
        ("1, * * * *", False, ["minute", "'1,'"]),
        ("-5 * * * *", False, ["minute", "'-5'"]),
        ("5- * * * *", False, ["minute", "'5-'"]),
        ("1-2-3 * * * *", False, ["minute", "'1-2-3'"]),
        ("5/ * * * *", False, ["minute", "'5/'"]),
        ("*/x * * * *", False, ["minute", "'*/x'"]),
        ("a * * * *", False, ["minute", "'a'"]),
        ("1.5 * * * *", False, ["minute", "'1.5'"]),
        ("\u0662 * * * *", False, ["minute"]),
        ("L * * * *", False, ["minute", "'L'"]),
        ("* L * * *", False, ["hour", "'L'"]),
        ("* * * L *", False, ["month", "'L'"]),
        ("* * * * L", False, ["day-of-week", "'L'"]),
        ("* * 15W * 1W", False, ["day-of-week", "'1W'"]),
        ("* * * * 5#6", False, ["day-of-week", "'5#6'", "1-5"]),
        ("* * * * 5#0", False, ["day-of-week", "'5#0'"]),
        ("* * * * 5#", False, ["day-of-week", "'5#'"]),
        ("* * * * #3", False, ["day-of-week", "'#3'"]),
        ("* * * * 1#2,3", False, ["day-of-week"]),
        ("* * 5#2 * *", False, ["day-of-month", "'5#2'"]),
        ("* * L-31 * *", False, ["day-of-month", "'L-31'"]),
        ("* * L- * *", False, ["day-of-month", "'L-'"]),
        ("* * LL * *", False, ["day-of-month", "'LL'"]),
        ("* * 1,L * *", False, ["day-of-month", "'1,L'"]),
        ("* * 32W * *", False, ["day-of-month", "'32W'"]),
        ("* * 0W * *", False, ["day-of-month", "'0W'"]),
        ("* * W * *", False, ["day-of-month", "'W'"]),
        ("* * 1-5W * *", False, ["day-of-month", "'1-5W'"]),
        ("15W * * * *", False, ["minute", "'15W'"]),
        ("* * * * 1L,2", False, ["day-of-week"]),
        ("* * * * * #", False, ["expected 5 fields"]),
        ("@often", False, ["unknown macro", "@often"]),
        ("@daily extra", False, ["after the macro"]),
        ("0 0 * * *\n", False, ["day-of-week"]),
        ("00000000000000000000000 * * * *", False, ["minute"]),
    ],
)
def test_invalid_expressions(text: str, seconds: bool, fragments: list[str]) -> None:
    with pytest.raises(CronFormatError) as info:
        CronExpression.parse(text, seconds=seconds)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_error_hierarchy() -> None:
    with pytest.raises(ValueError, match="minute"):
        CronExpression.parse("99 * * * *")
    with pytest.raises(AsyncJobsError):
        CronExpression.parse("99 * * * *")
    with pytest.raises(TypeError):
        CronExpression.parse(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- next()


def test_next_requires_aware_datetime() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        CronExpression.parse("* * * * *").next(datetime(2024, 1, 1))


def test_next_inclusive_and_microseconds() -> None:
    expr = CronExpression.parse("0 12 * * *")
    noon = utc(2024, 1, 1, 12)
    assert expr.next(noon) == utc(2024, 1, 2, 12)
    assert expr.next(noon, inclusive=True) == noon
    # A start past the whole minute cannot return that minute, even inclusively.
    late = noon + timedelta(microseconds=1)
    assert expr.next(late, inclusive=True) == utc(2024, 1, 2, 12)
    assert expr.next(noon - timedelta(microseconds=1)) == noon


def test_next_keeps_the_tzinfo_object() -> None:
    plus_two = timezone(timedelta(hours=2))
    found = CronExpression.parse("0 9 * * *").next(datetime(2024, 1, 1, 10, tzinfo=plus_two))
    assert found == datetime(2024, 1, 2, 9, tzinfo=plus_two)
    assert found is not None
    assert found.tzinfo is plus_two
    in_ny = CronExpression.parse("0 9 * * *").next(datetime(2024, 1, 1, 10, tzinfo=NY))
    assert in_ny is not None
    assert in_ny.tzinfo is NY
    assert in_ny.astimezone(UTC) == utc(2024, 1, 2, 14)


def test_rare_and_impossible_dates() -> None:
    assert first("0 0 29 2 *", utc(2024, 3, 1)) == utc(2028, 2, 29)
    assert first("0 0 29 2 *", utc(2096, 3, 1)) == utc(2104, 2, 29)  # 2100 is no leap year
    assert first("0 0 29 2 MON", utc(2024, 1, 1)) == utc(2044, 2, 29)
    assert first("0 0 30 2 *", utc(2024, 1, 1)) is None
    assert first("0 0 31 4,6,9,11 *", utc(2024, 1, 1)) is None
    assert first("0 0 * 2 1#5", utc(2024, 1, 1)) == utc(2044, 2, 29)
    impossible = CronExpression.parse("0 0 30 2 *")
    assert impossible.next(utc(2024, 1, 1)) is None
    assert impossible.next(utc(1990, 1, 1)) is None  # answered from the cached verdict


def test_end_of_time() -> None:
    assert first("0 0 1 1 *", datetime(9999, 6, 1, tzinfo=UTC)) is None
    assert first("59 23 31 12 *", datetime(9999, 12, 31, 23, 58, tzinfo=UTC)) == datetime(
        9999, 12, 31, 23, 59, tzinfo=UTC
    )
    assert first("* * * * *", datetime(9999, 12, 31, 23, 59, tzinfo=UTC)) is None
    # In a zone whose UTC is past year 9999 there, or a schedule asked past it: no answer,
    # not an error.
    yearly = CronExpression.parse("0 0 1 1 *")
    assert yearly.next(datetime(9999, 12, 31, 22, tzinfo=NY)) is None
    tokyo = Schedule.cron("0 0 1 1 *", "Asia/Tokyo")
    assert tokyo.next_after(datetime.max.replace(tzinfo=UTC)) is None
    every_hour = Schedule.interval(timedelta(hours=1))
    assert every_hour.next_after(datetime(9999, 12, 31, 23, 30, tzinfo=UTC)) is None


def test_occurrences() -> None:
    expr = CronExpression.parse("0 */6 * * *")
    start, end = utc(2024, 1, 1), utc(2024, 1, 2)
    assert list(expr.occurrences(start, end)) == [
        utc(2024, 1, 1, 0),
        utc(2024, 1, 1, 6),
        utc(2024, 1, 1, 12),
        utc(2024, 1, 1, 18),
    ]
    assert list(expr.occurrences(start, end, start_inclusive=False, end_inclusive=True)) == [
        utc(2024, 1, 1, 6),
        utc(2024, 1, 1, 12),
        utc(2024, 1, 1, 18),
        utc(2024, 1, 2, 0),
    ]
    assert list(CronExpression.parse("0 0 30 2 *").occurrences(start, utc(2030, 1, 1))) == []


# --------------------------------------------------------------------------- DST


def wall(found: list[datetime]) -> list[tuple[str, int]]:
    return [(d.isoformat(), d.fold) for d in found]


def between(text: str, start: datetime, end: datetime) -> list[tuple[str, int]]:
    return wall(list(CronExpression.parse(text).occurrences(start, end)))


def test_new_york_spring_forward_fires_once_at_the_jump() -> None:
    # 2024-03-10: 02:00 EST jumps to 03:00 EDT.
    start, end = datetime(2024, 3, 10, 0, 0, tzinfo=NY), datetime(2024, 3, 10, 4, 1, tzinfo=NY)
    assert between("0 2 * * *", start, end) == [("2024-03-10T03:00:00-04:00", 0)]
    assert between("30 2 * * *", start, end) == [("2024-03-10T03:00:00-04:00", 0)]
    assert between("*/30 * * * *", start, end) == [
        ("2024-03-10T00:00:00-05:00", 0),
        ("2024-03-10T00:30:00-05:00", 0),
        ("2024-03-10T01:00:00-05:00", 0),
        ("2024-03-10T01:30:00-05:00", 0),
        ("2024-03-10T03:00:00-04:00", 0),
        ("2024-03-10T03:30:00-04:00", 0),
        ("2024-03-10T04:00:00-04:00", 0),
    ]
    jump = CronExpression.parse("0 2 * * *").next(datetime(2024, 3, 10, 1, 59, tzinfo=NY))
    assert jump is not None
    assert jump.astimezone(UTC) == utc(2024, 3, 10, 7)
    assert jump.tzinfo is NY
    # The day after, 02:00 exists again.
    assert CronExpression.parse("0 2 * * *").next(jump) == datetime(2024, 3, 11, 2, tzinfo=NY)


def test_new_york_fall_back() -> None:
    # 2024-11-03: 02:00 EDT falls back to 01:00 EST; 01:00-01:59 happens twice.
    start, end = datetime(2024, 11, 3, 0, 0, tzinfo=NY), datetime(2024, 11, 3, 3, 1, tzinfo=NY)
    assert between("30 1 * * *", start, end) == [("2024-11-03T01:30:00-04:00", 0)]
    assert between("0 2 * * *", start, end) == [("2024-11-03T02:00:00-05:00", 0)]
    assert between("*/30 * * * *", start, end) == [
        ("2024-11-03T00:00:00-04:00", 0),
        ("2024-11-03T00:30:00-04:00", 0),
        ("2024-11-03T01:00:00-04:00", 0),
        ("2024-11-03T01:30:00-04:00", 0),
        ("2024-11-03T01:00:00-05:00", 1),
        ("2024-11-03T01:30:00-05:00", 1),
        ("2024-11-03T02:00:00-05:00", 0),
        ("2024-11-03T02:30:00-05:00", 0),
        ("2024-11-03T03:00:00-05:00", 0),
    ]
    assert between("0 * * * *", start, end) == [
        ("2024-11-03T00:00:00-04:00", 0),
        ("2024-11-03T01:00:00-04:00", 0),
        ("2024-11-03T01:00:00-05:00", 1),
        ("2024-11-03T02:00:00-05:00", 0),
        ("2024-11-03T03:00:00-05:00", 0),
    ]
    # The same from starts between whole seconds, as a clock reads them: the second pass
    # is not skipped, and a fixed time at its end is not a day late.
    assert between("0 * * * *", start.replace(microsecond=10_000), end) == [
        ("2024-11-03T01:00:00-04:00", 0),
        ("2024-11-03T01:00:00-05:00", 1),
        ("2024-11-03T02:00:00-05:00", 0),
        ("2024-11-03T03:00:00-05:00", 0),
    ]
    inside = datetime(2024, 11, 3, 1, 45, 0, 10_000, tzinfo=NY)
    found = CronExpression.parse("*/15 * * * *").next(inside)
    assert found is not None and wall([found]) == [("2024-11-03T01:00:00-05:00", 1)]
    found = CronExpression.parse("0 * * * *").next(datetime(2024, 11, 3, 1, 0, 0, 10_000, NY))
    assert found is not None and wall([found]) == [("2024-11-03T01:00:00-05:00", 1)]
    in_second_pass = datetime(2024, 11, 3, 6, 30, 0, 500_000, tzinfo=UTC)
    assert Schedule.cron("0 2 * * *", "America/New_York").next_after(in_second_pass) == (
        datetime(2024, 11, 3, 7, 0, tzinfo=UTC)
    )
    # A fixed time asked for from inside the second pass waits for the next day.
    second_pass = datetime(2024, 11, 3, 1, 10, tzinfo=NY, fold=1)
    found = CronExpression.parse("30 1 * * *").next(second_pass)
    assert found is not None
    assert wall([found]) == [("2024-11-04T01:30:00-05:00", 0)]
    # From inside the first pass it still fires in the first pass.
    first_pass = datetime(2024, 11, 3, 1, 10, tzinfo=NY)
    found = CronExpression.parse("30 1 * * *").next(first_pass)
    assert found is not None
    assert wall([found]) == [("2024-11-03T01:30:00-04:00", 0)]


def test_lord_howe_half_hour_shifts() -> None:
    # 2024-04-07: 02:00 +11:00 falls back to 01:30 +10:30.
    start = datetime(2024, 4, 7, 1, 0, tzinfo=LORD_HOWE)
    end = datetime(2024, 4, 7, 2, 31, tzinfo=LORD_HOWE)
    assert between("45 1 * * *", start, end) == [("2024-04-07T01:45:00+11:00", 0)]
    assert between("*/15 * * * *", start, end) == [
        ("2024-04-07T01:00:00+11:00", 0),
        ("2024-04-07T01:15:00+11:00", 0),
        ("2024-04-07T01:30:00+11:00", 0),
        ("2024-04-07T01:45:00+11:00", 0),
        ("2024-04-07T01:30:00+10:30", 1),
        ("2024-04-07T01:45:00+10:30", 1),
        ("2024-04-07T02:00:00+10:30", 0),
        ("2024-04-07T02:15:00+10:30", 0),
        ("2024-04-07T02:30:00+10:30", 0),
    ]
    # 2024-10-06: 02:00 +10:30 jumps to 02:30 +11:00.
    start = datetime(2024, 10, 6, 1, 30, tzinfo=LORD_HOWE)
    end = datetime(2024, 10, 6, 3, 1, tzinfo=LORD_HOWE)
    assert between("15 2 * * *", start, end) == [("2024-10-06T02:30:00+11:00", 0)]
    assert between("*/15 * * * *", start, end) == [
        ("2024-10-06T01:30:00+10:30", 0),
        ("2024-10-06T01:45:00+10:30", 0),
        ("2024-10-06T02:30:00+11:00", 0),
        ("2024-10-06T02:45:00+11:00", 0),
        ("2024-10-06T03:00:00+11:00", 0),
    ]


def test_nonexistent_start_time_is_read_as_its_instant() -> None:
    # 02:30 does not exist on 2024-03-10 in New York; fold=0 reads it with the
    # offset before the jump (EST), i.e. the instant 03:30 EDT.
    ghost = datetime(2024, 3, 10, 2, 30, tzinfo=NY)
    found = CronExpression.parse("*/10 * * * *").next(ghost)
    assert found is not None
    assert found.isoformat() == "2024-03-10T03:40:00-04:00"


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("*/15 * * * *", "*/15 * * * *"),
        ("0,15,30,45 * * * *", "*/15 * * * *"),
        ("0-59/15 * * * *", "*/15 * * * *"),
        ("5/20 * * * *", "5/20 * * * *"),
        ("5-45/20 * * * *", "5/20 * * * *"),
        ("5-44/20 * * * *", "5,25 * * * *"),
        ("0 9-17 * * MON-FRI", "0 9-17 * * 1-5"),
        ("0 0 1,2,3,10,20,21 * *", "0 0 1-3,10,20,21 * *"),
        ("0 0 ? * SUN,SAT", "0 0 * * 0,6"),
        ("0 0 1-31 1-12 0-7", "0 0 * * *"),
        ("0 0 * * MON-SUN", "0 0 * * *"),
        ("0 0 * * 1/2", "0 0 * * 0,1,3,5"),
        ("0 0 * * 1-5/2", "0 0 * * 1-5/2"),
        ("0 0 * * */2", "0 0 * * */2"),
        ("0 0 * * SUN/3", "0 0 * * */3"),
        ("0 0 * * 7/3", "0 0 * * 0"),
        ("0 0 L-0 * *", "0 0 L * *"),
        ("0 0 l-3w * *", "0 0 L-3W * *"),
        ("0 0 15w * *", "0 0 15W * *"),
        ("0 0 * * sun#2", "0 0 * * 0#2"),
        ("0 0 * * 7L", "0 0 * * 0L"),
        ("@weekly", "0 0 * * 0"),
    ],
)
def test_normalised_form(text: str, normal: str) -> None:
    expr = CronExpression.parse(text)
    assert str(expr) == normal
    again = CronExpression.parse(normal)
    assert again == expr
    assert hash(again) == hash(expr)


def test_equality_and_hashing() -> None:
    a = CronExpression.parse("*/15 * * * *")
    b = CronExpression.parse("0,15,30,45 * * * *")
    assert a == b
    assert len({a, b}) == 1
    assert a != CronExpression.parse("*/10 * * * *")
    assert a != "*/15 * * * *"
    assert CronExpression("*/15 * * * *") == a


def test_immutable_and_picklable() -> None:
    expr = CronExpression.parse("0 0 L * 5", seconds=False)
    with pytest.raises(AttributeError):
        expr._key = expr._key
    with pytest.raises(AttributeError):
        expr.anything = 1
    assert pickle.loads(pickle.dumps(expr)) == expr
    six = CronExpression.parse("5 0 0 L * 5", seconds=True)
    assert pickle.loads(pickle.dumps(six)) == six
    assert copy.deepcopy(six) is six
    assert repr(six) == "CronExpression.parse('5 0 0 L * 5', seconds=True)"
    assert repr(expr) == "CronExpression.parse('0 0 L * 5')"


# --------------------------------------------------------------------------- croniter


CRONITER_EXPRESSIONS = [
    "* * * * *",
    "*/5 * * * *",
    "7,19,43 * * * *",
    "0 9 * * MON-FRI",
    "30 */2 * * *",
    "0 0 1 * *",
    "0 12 15 * *",
    "0 0 1 1 *",
    "30 2 29 2 *",
    "15 10 * * 0",
    "0 0 * * 6,0",
    "0 0 */5 * *",
    "0 22 * 11-12 *",
    "0-30/7 8-10 * * *",
    "59 23 31 * *",
    "0 0 1 */3 *",
]


@pytest.mark.parametrize("text", CRONITER_EXPRESSIONS)
def test_matches_croniter_in_utc(text: str) -> None:
    from croniter import croniter  # a dev dependency: missing, this fails rather than skips

    start = utc(2023, 12, 30, 17, 23, 11)
    it = croniter(text, start)
    expected = [it.get_next(datetime) for _ in range(40)]
    assert nexts(text, start, 40) == expected


# --------------------------------------------------------------------------- properties
#
# The strategies build an expression's text together with the sets it must
# mean, computed here independently of the parser.


@dataclass
class Spec:
    text: str
    seconds: bool
    second: set[int]
    minute: set[int]
    hour: set[int]
    month: set[int]
    dom: set[int] | None = None  # None when a special is used
    dom_special: tuple[str, int, bool] | None = None  # ("L", offset, W) / ("W", day, True)
    dow: set[int] = field(default_factory=lambda: set(range(7)))
    dow_special: tuple[str, int, int] | None = None  # ("#", weekday, n) / ("L", weekday, 0)


MONTH_NAMES = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
DAY_NAMES = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
CASES = st.sampled_from([str.upper, str.lower, str.title])


def cyclic(start: int, end: int, step: int, lo: int, top: int) -> set[int]:
    """start..end (wrapping from top to lo), every step-th element."""
    if start <= end:
        seq = list(range(start, end + 1))
    else:
        seq = list(range(start, top + 1)) + list(range(lo, end + 1))
    return set(seq[::step])


@st.composite
def field_text(
    draw: st.DrawFn, lo: int, hi: int, names: list[str] | None = None
) -> tuple[str, set[int]]:
    """One field: text and set. ``hi`` 7 marks day-of-week (7 = Sunday)."""
    dow = hi == 7
    top = 6 if dow else hi

    def show(v: int) -> str:
        # The name SUN is 0, so 7 stays a number ("SUN/2" starts at 0, "7/2" at 7).
        if names is not None and (v != 7 or not dow) and draw(st.booleans()):
            name = names[v % 7] if dow else names[v - lo]
            return draw(CASES)(name)
        return str(v)

    def item() -> tuple[str, set[int]]:
        kind = draw(st.sampled_from(["value", "range", "step", "star_step", "open_step"]))
        if kind == "value":
            v = draw(st.integers(lo, hi))
            return show(v), {v % 7 if dow else v}
        if kind == "star_step":
            step = draw(st.integers(1, hi))
            return f"*/{step}", {v % 7 if dow else v for v in range(lo, hi + 1, step)}
        if kind == "open_step":
            a, step = draw(st.integers(lo, hi)), draw(st.integers(1, hi))
            return f"{show(a)}/{step}", {v % 7 if dow else v for v in range(a, hi + 1, step)}
        a = draw(st.integers(lo, top))
        b = draw(st.integers(lo, top))
        step = draw(st.integers(1, hi)) if kind == "step" else 1
        text = f"{show(a)}-{show(b)}" + (f"/{step}" if kind == "step" else "")
        return text, cyclic(a, b, step, lo, top)

    if draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from(["*", "?"])), set(range(lo, top + 1))
    parts = [item() for _ in range(draw(st.integers(1, 3)))]
    return ",".join(p[0] for p in parts), set().union(*(p[1] for p in parts))


@st.composite
def specs(draw: st.DrawFn, allow_seconds: bool = True, dense: bool = False) -> Spec:
    seconds = allow_seconds and draw(st.booleans())
    if seconds:
        sec_text, sec = draw(field_text(0, 59))
    else:
        sec_text, sec = "", {0}
    min_text, minute = draw(field_text(0, 59))
    hour_text, hour = draw(field_text(0, 23))
    month_text, month = ("*", set(range(1, 13))) if dense else draw(field_text(1, 12, MONTH_NAMES))
    spec = Spec("", seconds, sec, minute, hour, month)
    choice = draw(st.integers(0, 9))
    if choice < 6 or dense:
        dom_text, spec.dom = ("*", set(range(1, 32))) if dense else draw(field_text(1, 31))
    elif choice < 8:
        offset = draw(st.integers(0, 30)) if draw(st.booleans()) else 0
        weekday = draw(st.booleans())
        dom_text = "L" + (f"-{offset}" if offset or draw(st.booleans()) else "")
        dom_text += "W" if weekday else ""
        dom_text = draw(CASES)(dom_text)
        spec.dom_special = ("L", offset, weekday)
    else:
        day = draw(st.integers(1, 31))
        dom_text = f"{day}{draw(st.sampled_from(['W', 'w']))}"
        spec.dom_special = ("W", day, True)
    choice = draw(st.integers(0, 9))
    if choice < 7:
        dow_text, spec.dow = draw(field_text(0, 7, DAY_NAMES))
    else:
        day = draw(st.integers(0, 7))
        day_text = draw(CASES)(DAY_NAMES[day % 7]) if draw(st.booleans()) else str(day)
        if choice < 9:
            n = draw(st.integers(1, 5))
            dow_text = f"{day_text}#{n}"
            spec.dow_special = ("#", day % 7, n)
        else:
            dow_text = f"{day_text}{draw(st.sampled_from(['L', 'l']))}"
            spec.dow_special = ("L", day % 7, 0)
    fields = [min_text, hour_text, dom_text, month_text, dow_text]
    if seconds:
        fields.insert(0, sec_text)
    spec.text = " ".join(fields)
    return spec


@functools.cache
def nearest_weekday(year: int, month: int, day: int) -> int:
    dim = calendar.monthrange(year, month)[1]
    weekdays = [d for d in range(1, dim + 1) if date(year, month, d).weekday() < 5]
    return min(weekdays, key=lambda d: abs(d - day))


def day_matches(spec: Spec, d: date) -> bool:
    if d.month not in spec.month:
        return False
    dim = calendar.monthrange(d.year, d.month)[1]
    if spec.dom_special is None:
        assert spec.dom is not None
        dom_ok = d.day in spec.dom
    else:
        kind, arg, weekday = spec.dom_special
        target = dim - arg if kind == "L" else arg
        if not 1 <= target <= dim:
            dom_ok = False
        elif weekday:
            dom_ok = d.day == nearest_weekday(d.year, d.month, target)
        else:
            dom_ok = d.day == target
    cron_weekday = d.isoweekday() % 7
    if spec.dow_special is None:
        dow_ok = cron_weekday in spec.dow
    else:
        kind, wd, n = spec.dow_special
        if kind == "#":
            dow_ok = cron_weekday == wd and (d.day - 1) // 7 == n - 1
        else:
            dow_ok = cron_weekday == wd and d.day + 7 > dim
    return dom_ok and dow_ok


def matches(spec: Spec, t: datetime) -> bool:
    return (
        t.microsecond == 0
        and t.second in spec.second
        and t.minute in spec.minute
        and t.hour in spec.hour
        and day_matches(spec, t.date())
    )


def reference_next(spec: Spec, after: datetime, days: int) -> datetime | None:
    """Walk day by day (up to ``days``), then through the sorted times of a matching day."""
    naive = after.replace(tzinfo=None)
    hours, minutes, seconds = sorted(spec.hour), sorted(spec.minute), sorted(spec.second)
    for offset in range(days):
        day = naive.date() + timedelta(days=offset)
        if not day_matches(spec, day):
            continue
        today = offset == 0
        for h in hours:
            if today and h < naive.hour:
                continue
            for m in minutes:
                if today and h == naive.hour and m < naive.minute:
                    continue
                for s in seconds:
                    candidate = datetime(day.year, day.month, day.day, h, m, s)
                    if candidate > naive:
                        return candidate.replace(tzinfo=after.tzinfo)
    return None


starts = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2060, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)

PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(specs(), starts)
def test_next_agrees_with_a_day_walk(spec: Spec, start: datetime) -> None:
    expr = CronExpression.parse(spec.text, seconds=spec.seconds)
    horizon = 3 * 366
    expected = reference_next(spec, start, horizon)
    found = expr.next(start)
    if expected is not None:
        assert found == expected
    else:
        # Nothing within three years: whatever is returned must be later and match.
        limit = start + timedelta(days=horizon - 1)
        assert found is None or (found > limit and matches(spec, found))


@PROPERTY_SETTINGS
@given(specs(dense=True), starts)
def test_nothing_skipped_in_a_step_walk(spec: Spec, start: datetime) -> None:
    """A minute (or second) walk over a small window finds exactly what next() iterates to."""
    expr = CronExpression.parse(spec.text, seconds=spec.seconds)
    step = timedelta(seconds=1) if spec.seconds else timedelta(minutes=1)
    steps = 3600 if spec.seconds else 3000
    t = start.replace(microsecond=0, second=start.second if spec.seconds else 0) + step
    window_end = t + steps * step
    walked: list[datetime] = []
    while t < window_end:
        if matches(spec, t):
            walked.append(t)
        t += step
    iterated: list[datetime] = []
    found = expr.next(start)
    while found is not None and found < window_end:
        iterated.append(found)
        found = expr.next(found)
    assert iterated == walked


@PROPERTY_SETTINGS
@given(specs(), starts)
def test_iterated_next_is_strictly_increasing_and_matching(spec: Spec, start: datetime) -> None:
    expr = CronExpression.parse(spec.text, seconds=spec.seconds)
    previous = start
    for _ in range(15):
        found = expr.next(previous)
        if found is None:
            break
        assert found > previous
        assert found.tzinfo is UTC
        assert matches(spec, found), (spec.text, found)
        previous = found


@settings(max_examples=300, deadline=None)
@given(
    specs(allow_seconds=False, dense=True),
    st.sampled_from(
        [
            datetime(2024, 3, 9, 22, tzinfo=NY),
            datetime(2024, 11, 2, 22, tzinfo=NY),
            datetime(2024, 4, 6, 22, tzinfo=LORD_HOWE),
            datetime(2024, 10, 5, 22, tzinfo=LORD_HOWE),
        ]
    ),
    st.integers(0, 8 * 60),
    st.sampled_from([0, 1, 250_000, 999_999]),
)
def test_dst_windows(spec: Spec, base: datetime, minutes: int, micros: int) -> None:
    """Around transitions, next() fires exactly where a UTC minute walk says it should.

    A matching wall time fires once per UTC instant, except in the second pass
    of a repeated hour, which only interval-like hours use; matches inside a
    skipped interval fire once, at the instant of the jump.
    """
    tz = base.tzinfo
    assert tz is not None
    expr = CronExpression.parse(spec.text)
    # A start between whole seconds too, as the scheduler's clock reads.
    start_utc = base.astimezone(UTC) + timedelta(minutes=minutes, microseconds=micros)
    start = start_utc.astimezone(tz)
    end = start.astimezone(UTC) + timedelta(hours=6)
    hours = sorted(spec.hour)
    interval_like = (
        len(hours) > 1
        and hours[0] < hours[1] - hours[0]
        and hours == list(range(hours[0], 24, hours[1] - hours[0]))
    )
    expected: list[datetime] = []
    minute = timedelta(minutes=1)
    u = start_utc.replace(microsecond=0) + minute  # the first whole minute after the start
    previous = (u - minute).astimezone(tz)
    while u < end:
        local = u.astimezone(tz)
        fire = matches(spec, local.replace(tzinfo=None)) and (local.fold == 0 or interval_like)
        offset, previous_offset = local.utcoffset(), previous.utcoffset()
        assert offset is not None
        assert previous_offset is not None
        if offset > previous_offset:  # the clocks jumped forward at u
            skipped = previous.replace(tzinfo=None) + minute
            while skipped < local.replace(tzinfo=None):
                fire = fire or matches(spec, skipped)
                skipped += minute
        if fire:
            expected.append(u)
        previous = local
        u += minute
    results = list(expr.occurrences(start, end, start_inclusive=False))
    assert [d.astimezone(UTC) for d in results] == expected
    for d in results:
        assert d.tzinfo is tz
        canonical = d.astimezone(UTC).astimezone(tz)
        assert (canonical.replace(tzinfo=None), canonical.fold) == (d.replace(tzinfo=None), d.fold)


@PROPERTY_SETTINGS
@given(specs(), starts)
def test_normalised_text_round_trips(spec: Spec, start: datetime) -> None:
    expr = CronExpression.parse(spec.text, seconds=spec.seconds)
    text = str(expr)
    again = CronExpression.parse(text, seconds=expr.has_seconds)
    assert again == expr
    assert hash(again) == hash(expr)
    assert str(again) == text
    assert len(text.split()) == (6 if spec.seconds else 5)
    assert again.next(start) == expr.next(start)


@PROPERTY_SETTINGS
@given(st.sets(st.integers(0, 59), min_size=1), st.randoms(use_true_random=False))
def test_same_set_in_any_spelling_is_equal(values: set[int], rnd: random.Random) -> None:
    ordered = sorted(values)
    shuffled = list(ordered)
    rnd.shuffle(shuffled)
    a = CronExpression.parse(",".join(map(str, shuffled)) + " * * * *")
    b = CronExpression.parse(",".join(f"{v}-{v}" for v in ordered) + " * * * *")
    assert a == b
    assert hash(a) == hash(b)
    assert str(a) == str(b)


JUNK_ALPHABET = "0123456789*/,-#LlWw?@ \tJANFEBMONSUNSATjanmon_xyz\n."


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(st.text(max_size=40), st.text(alphabet=JUNK_ALPHABET, max_size=40)),
    st.booleans(),
)
def test_junk_raises_only_cron_format_error(text: str, seconds: bool) -> None:
    try:
        expr = CronExpression.parse(text, seconds=seconds)
    except CronFormatError:
        return
    # Whatever parses must normalise and search without surprises.
    assert CronExpression.parse(str(expr), seconds=seconds) == expr
    expr.next(utc(2024, 1, 1))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "*",
                "?",
                "*/5",
                "1-5",
                "L",
                "LW",
                "L-3",
                "15W",
                "5#3",
                "5L",
                "MON",
                "JAN",
                "0",
                "7",
                "59",
                "60",
                "31",
                "32",
                "*/0",
                "1,2",
                "SAT-TUE",
                "22-2",
                "#",
                "W",
                "-1",
                "1/99",
            ]
        ),
        min_size=0,
        max_size=7,
    ),
    st.booleans(),
)
def test_field_soup_raises_only_cron_format_error(tokens: list[str], seconds: bool) -> None:
    try:
        expr = CronExpression.parse(" ".join(tokens), seconds=seconds)
    except CronFormatError:
        return
    assert len(tokens) == (6 if seconds else 5)
    assert CronExpression.parse(str(expr), seconds=seconds) == expr
