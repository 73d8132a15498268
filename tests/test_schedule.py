"""Tests for asyncjobs.schedule.Schedule."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncjobs import BackgroundJobs
from asyncjobs.cron import CronExpression, CronFormatError
from asyncjobs.exceptions import ConfigurationError
from asyncjobs.schedule import Schedule
from tests.commands import Add, AddCommand


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_cron_defaults_to_utc() -> None:
    s = Schedule.cron("0 */2 * * *")
    assert s.kind == "cron"
    assert s.tz_name == "UTC"
    assert s.interval is None
    assert s.expression == CronExpression.parse("0 */2 * * *")
    assert s.next_after(utc(2024, 1, 1, 0, 30)) == utc(2024, 1, 1, 2)


def test_cron_in_a_time_zone_returns_utc() -> None:
    s = Schedule.cron("0 9 * * MON-FRI", "Europe/Berlin")
    assert s.tz_name == "Europe/Berlin"
    found = s.next_after(utc(2024, 7, 1, 12))  # a Monday; 09:00 CEST = 07:00 UTC
    assert found == utc(2024, 7, 2, 7)
    assert found is not None
    assert found.tzinfo is UTC
    winter = s.next_after(utc(2024, 1, 5, 12))  # Friday -> Monday 09:00 CET = 08:00 UTC
    assert winter == utc(2024, 1, 8, 8)


def test_cron_accepts_tzinfo_objects() -> None:
    assert Schedule.cron("0 0 * * *", ZoneInfo("Asia/Tokyo")).tz_name == "Asia/Tokyo"
    assert Schedule.cron("0 0 * * *", UTC).tz_name == "UTC"
    assert Schedule.cron("0 0 * * *", "utc").tz_name == "UTC"
    fixed = Schedule.cron("0 0 * * *", timezone(timedelta(hours=5, minutes=30)))
    assert fixed.tz_name == "+05:30"
    assert fixed.next_after(utc(2024, 1, 1, 12)) == utc(2024, 1, 1, 18, 30)
    west = Schedule.cron("0 0 * * *", "-03:00")
    assert west.next_after(utc(2024, 1, 1, 12)) == utc(2024, 1, 2, 3)


def test_cron_dst_in_schedule_zone() -> None:
    s = Schedule.cron("30 2 * * *", "America/New_York")
    # 02:30 does not exist on 2024-03-10: fires at the jump, 03:00 EDT = 07:00 UTC.
    assert s.next_after(utc(2024, 3, 10, 5)) == utc(2024, 3, 10, 7)


def test_invalid_time_zone() -> None:
    with pytest.raises(ConfigurationError, match="Mars/Olympus"):
        Schedule.cron("* * * * *", "Mars/Olympus")
    with pytest.raises(ConfigurationError):
        Schedule.cron("* * * * *", "../etc/passwd")
    with pytest.raises(ConfigurationError):
        Schedule.cron("* * * * *", "+25:00")
    for offset in ("+05:75", "-01:00:60"):  # not taken for +06:15 or -01:01
        with pytest.raises(ConfigurationError, match="is not hh:mm"):
            Schedule.cron("* * * * *", offset)


def test_cron_takes_a_parsed_expression_and_nothing_but_text_else() -> None:
    parsed = CronExpression.parse("0 9 * * 1-5")
    assert Schedule.cron(parsed, "Europe/Berlin") == Schedule.cron("0 9 * * 1-5", "Europe/Berlin")
    seconds = CronExpression.parse("*/10 * * * * *", seconds=True)
    assert Schedule.from_text(Schedule.cron(seconds).to_text()) == Schedule.cron(seconds)
    for bad in (None, 5):
        with pytest.raises(CronFormatError, match="a cron expression is text"):
            Schedule.cron(bad)  # type: ignore[arg-type]


def test_seconds_detection() -> None:
    six = Schedule.cron("*/10 * * * * *")
    assert six.expression is not None
    assert six.expression.has_seconds
    assert six.next_after(utc(2024, 1, 1, 0, 0, 5)) == utc(2024, 1, 1, 0, 0, 10)
    five = Schedule.cron("*/10 * * * *")
    assert five.expression is not None
    assert not five.expression.has_seconds
    assert Schedule.cron("@every_second").next_after(utc(2024, 1, 1)) == utc(2024, 1, 1, 0, 0, 1)
    with pytest.raises(CronFormatError):
        Schedule.cron("*/10 * * * * *", seconds=False)
    with pytest.raises(CronFormatError, match="minute"):
        Schedule.cron("61 * * * *")


def test_interval() -> None:
    s = Schedule.interval(timedelta(seconds=90))
    assert s.kind == "interval"
    assert s.interval == timedelta(seconds=90)
    assert s.expression is None
    after = datetime(2024, 1, 1, 12, tzinfo=ZoneInfo("Europe/Berlin"))
    found = s.next_after(after)
    assert found == utc(2024, 1, 1, 11, 1, 30)
    assert found is not None
    assert found.tzinfo is UTC


@pytest.mark.parametrize("bad", [timedelta(0), timedelta(seconds=-1), 5, timedelta(days=3651)])
def test_interval_must_be_positive_timedelta(bad: object) -> None:
    with pytest.raises(ConfigurationError):
        Schedule.interval(bad)  # type: ignore[arg-type]


def test_next_after_requires_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Schedule.daily.next_after(datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        Schedule.interval(timedelta(minutes=1)).next_after(datetime(2024, 1, 1))


def test_never_again() -> None:
    assert Schedule.cron("0 0 30 2 *").next_after(utc(2024, 1, 1)) is None


@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        (Schedule.every_minute, utc(2024, 1, 1, 10, 0, 30), utc(2024, 1, 1, 10, 1)),
        (Schedule.hourly, utc(2024, 1, 1, 10, 0), utc(2024, 1, 1, 11)),
        (Schedule.daily, utc(2024, 1, 1, 10), utc(2024, 1, 2)),
        (Schedule.weekly, utc(2024, 1, 1), utc(2024, 1, 7)),
        (Schedule.monthly, utc(2024, 1, 1), utc(2024, 2, 1)),
        (Schedule.yearly, utc(2024, 1, 1), utc(2025, 1, 1)),
    ],
)
def test_constants(schedule: Schedule, after: datetime, expected: datetime) -> None:
    assert isinstance(schedule, Schedule)
    assert schedule.next_after(after) == expected


def test_yearly_is_documented_expression() -> None:
    assert Schedule.yearly == Schedule.cron("0 0 1 1 *")
    assert str(Schedule.yearly.expression) == "0 0 1 1 *"


def test_text_form() -> None:
    s = Schedule.cron("0 0-23/2 * * *", "Europe/Berlin")
    assert s.to_text() == "cron:0 */2 * * *|Europe/Berlin"
    assert Schedule.from_text(s.to_text()) == s
    i = Schedule.interval(timedelta(seconds=90))
    assert i.to_text() == "interval:90.0"
    assert Schedule.from_text("interval:90.0") == i
    six = Schedule.cron("@every_second", "+05:30")
    assert six.to_text() == "cron:* * * * * *|+05:30"
    assert Schedule.from_text(six.to_text()) == six


@pytest.mark.parametrize(
    "text",
    ["", "cron", "cron:* * * * *", "interval:abc", "interval:-5", "weekly:x", "interval:1e400"],
)
def test_bad_text_form(text: str) -> None:
    with pytest.raises((ConfigurationError, CronFormatError)):
        Schedule.from_text(text)


def test_equality_hash_and_immutability() -> None:
    a = Schedule.cron("*/15 * * * *", "Europe/Berlin")
    b = Schedule.cron("0,15,30,45 * * * *", ZoneInfo("Europe/Berlin"))
    assert a == b
    assert len({a, b}) == 1
    assert a != Schedule.cron("*/15 * * * *")
    assert Schedule.interval(timedelta(minutes=1)) != Schedule.every_minute
    assert Schedule.interval(timedelta(minutes=1)) == Schedule.interval(timedelta(seconds=60))
    with pytest.raises(AttributeError):
        a.tz_name = "UTC"
    assert pickle.loads(pickle.dumps(a)) == a
    assert repr(a) == "Schedule.cron('*/15 * * * *', 'Europe/Berlin')"
    assert repr(Schedule.interval(timedelta(seconds=5))) == (
        "Schedule.interval(datetime.timedelta(seconds=5))"
    )


@settings(max_examples=100, deadline=None)
@given(st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=3650)))
def test_interval_text_round_trips(every: timedelta) -> None:
    s = Schedule.interval(every)
    again = Schedule.from_text(s.to_text())
    assert again == s
    assert again.interval == every


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["*/5 * * * *", "0 9 * * MON-FRI", "0 0 L * *", "30 2 * * *", "@hourly"]),
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "+09:00"]),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1)),
)
def test_cron_text_round_trips_and_agrees(expr: str, tz: str, after: datetime) -> None:
    s = Schedule.cron(expr, tz)
    again = Schedule.from_text(s.to_text())
    assert again == s
    moment = after.replace(tzinfo=UTC)
    found = s.next_after(moment)
    assert found == again.next_after(moment)
    assert found is not None
    assert found > moment
    assert found.tzinfo is UTC


#: every second and every minute except each third: lists the text form keeps as written
_LONG_LIST = ",".join(str(i) for i in range(60) if i % 3 != 2)


def test_a_cron_schedule_too_long_to_store_is_a_configuration_error() -> None:
    fits = Schedule.cron(f"{_LONG_LIST} {_LONG_LIST} * * * *", "America/New_York")
    assert len(fits.to_text()) == 255
    with pytest.raises(ConfigurationError, match="256 characters, more than the 255"):
        Schedule.cron(f"{_LONG_LIST} {_LONG_LIST} * * * *", "America/Sao_Paulo")
    # A longer one stored before the limit is still read.
    stored = f"cron:{_LONG_LIST} {_LONG_LIST} * * * *|America/Sao_Paulo"
    assert len(Schedule.from_text(stored).to_text()) == 256


@pytest.mark.anyio
async def test_a_cron_schedule_of_the_longest_text_is_stored(
    make_jobs: Callable[..., BackgroundJobs],
) -> None:
    schedule = Schedule.cron(f"{_LONG_LIST} {_LONG_LIST} * * * *", "America/New_York")
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        await jobs.recurring_command(AddCommand, schedule, Add(1, 2), name="long")
        (task,) = await jobs.scheduled_tasks()
    assert task.schedule == schedule
