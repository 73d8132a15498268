"""Validation of what a client sends: query strings, ids, dates, months and action bodies.
Everything wrong is a 400 with a message that says what was expected."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from ..exceptions import InvalidOptionsError
from ..models import JobState, check_text
from ._admin_store import LIST_QUERIES, JobFilter
from ._http import HTTPError

MAX_ID = 2**63 - 1
MAX_TEXT = 500
MAX_LIMIT = 500
MAX_IDS = 1000
_MONTH = re.compile(r"([0-9]{4})-?([0-9]{2})\Z")

#: the filters of ``GET api/jobs``, besides view, month, limit and offset
LIST_FILTERS = (
    "state", "command", "request_type", "worker", "tag", "batch_id", "ref_id", "created_by",
    "user_id", "from", "to", "q",
)  # fmt: skip
LIST_PARAMS = frozenset({"view", "month", "limit", "offset", *LIST_FILTERS})


def bad(message: str) -> HTTPError:
    return HTTPError(400, message)


def query_dict(query: Iterable[tuple[str, str]], allowed: Iterable[str]) -> dict[str, str]:
    """The query parameters as a dict; unknown or repeated ones are refused."""
    known = frozenset(allowed)
    values: dict[str, str] = {}
    for name, value in query:
        if name not in known:
            expected = ", ".join(sorted(known)) or "none"
            raise bad(f"unknown parameter {name!r}; expected one of: {expected}")
        if name in values:
            raise bad(f"parameter {name!r} is given more than once")
        values[name] = value
    return values


def parse_id(text: str, what: str = "job id") -> int:
    # The length first: int() refuses over 4300 digits with a ValueError of its own.
    if len(text) > 19 or not text.isascii() or not text.isdigit() or not 0 < int(text) <= MAX_ID:
        raise bad(f"{what} must be a positive integer, got {text[:40]!r}")
    return int(text)


def parse_int(text: str, name: str, low: int, high: int) -> int:
    try:
        if len(text) > 40:
            raise ValueError(text)
        value = int(text)
    except ValueError:
        raise bad(f"{name} must be an integer, got {text[:40]!r}") from None
    if not low <= value <= high:
        raise bad(f"{name} must be between {low} and {high}, got {value}")
    return value


def parse_text(text: str, name: str) -> str | None:
    text = text.strip()
    if len(text) > MAX_TEXT:
        raise bad(f"{name} is longer than {MAX_TEXT} characters")
    return storable(text, name) or None


def storable(text: str, name: str) -> str:
    """Text every database can compare with: no NUL, no lone surrogate."""
    try:
        check_text(name, text, empty_ok=True)
    except InvalidOptionsError as exc:
        raise bad(str(exc)) from None
    return text


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_datetime(text: str, name: str, *, end_of_day: bool = False) -> datetime | None:
    """An ISO 8601 date or date-time; a time without a zone is UTC. A date alone is midnight
    UTC at its start, or (``end_of_day``, for an inclusive "to") at its end."""
    text = text.strip()
    if not text:
        return None
    try:
        if len(text) == 10:
            day = datetime.combine(date.fromisoformat(text), time(), UTC)
            value = day + timedelta(days=1) if end_of_day else day
        else:
            value = datetime.fromisoformat(text)
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        # No job is older: and the years before 1000 are not four digits in the text SQLite
        # compares, nor in MySQL's DATETIME range.
        return max(value, _EPOCH)
    except (ValueError, OverflowError):  # OverflowError: past year 9999 once in UTC
        raise bad(
            f"{name} must be an ISO 8601 date or date-time (2026-11-05 or "
            f"2026-11-05T10:30:00Z) between the years 1 and 9999, got {text[:40]!r}"
        ) from None


def parse_month(text: str) -> str | None:
    """``YYYYMM`` or ``YYYY-MM`` → ``YYYYMM``."""
    text = text.strip()
    if not text:
        return None
    match = _MONTH.match(text)
    if match is None or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1970:
        raise bad(f"month must look like 2026-11 or 202611, got {text[:40]!r}")
    return match.group(1) + match.group(2)


def parse_state(text: str, allowed: Iterable[JobState] = tuple(JobState)) -> JobState:
    for state in allowed:
        if text.strip().lower() == state.value.lower():
            return state
    names = ", ".join(state.value for state in allowed)
    raise bad(f"state must be one of {names}, got {text[:40]!r}")


def parse_list(query: Iterable[tuple[str, str]]) -> tuple[str, JobFilter]:
    """The view and filters of ``GET api/jobs``."""
    values = query_dict(query, LIST_PARAMS)
    view = values.get("view", "summary").strip() or "summary"
    if view not in LIST_QUERIES:
        raise bad(f"view must be one of {', '.join(LIST_QUERIES)}, got {view[:40]!r}")
    state = None
    if values.get("state", "").strip():
        state = parse_state(values["state"]).value
    request_type = None
    if values.get("request_type", "").strip():
        request_type = values["request_type"].strip().upper()
        if request_type not in ("CMD", "API"):
            raise bad(f"request_type must be CMD or API, got {values['request_type'][:40]!r}")
    from_date = parse_datetime(values.get("from", ""), "from")
    to_date = parse_datetime(values.get("to", ""), "to", end_of_day=True)
    if from_date is not None and to_date is not None and from_date >= to_date:
        raise bad("from must be before to")
    texts = {
        name: parse_text(values.get(name, ""), name)
        for name in ("command", "worker", "tag", "batch_id", "ref_id", "created_by", "user_id")
    }
    return view, JobFilter(
        state=state,
        request_type=request_type,
        from_date=from_date,
        to_date=to_date,
        month=parse_month(values.get("month", "")),
        text=parse_text(values.get("q", ""), "q"),
        limit=parse_int(values.get("limit", "50"), "limit", 1, MAX_LIMIT),
        offset=parse_int(values.get("offset", "0"), "offset", 0, 1_000_000),
        **texts,
    )


def parse_body(body: bytes) -> dict[str, Any]:
    """An action's JSON object body (empty means ``{}``)."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # (nested beyond the stack)
        raise bad("the body must be a JSON object") from None
    if not isinstance(value, dict):
        raise bad("the body must be a JSON object")
    return value


def body_keys(body: Mapping[str, Any], allowed: Iterable[str]) -> None:
    unknown = set(body) - set(allowed)
    if unknown:
        raise bad(f"unknown field {sorted(unknown)[0]!r}; expected: {', '.join(sorted(allowed))}")


def body_ids(value: Any) -> list[int]:
    """``ids``: a non-empty list of positive integers."""
    if not isinstance(value, list) or not value:
        raise bad("ids must be a non-empty list of job ids")
    if len(value) > MAX_IDS:
        raise bad(f"at most {MAX_IDS} ids at once, got {len(value)}")
    ids: list[int] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 0 < item <= MAX_ID:
            raise bad(f"ids must be positive integers, got {json.dumps(item)[:40]}")
        ids.append(item)
    return list(dict.fromkeys(ids))


def body_text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
        raise bad(f"{name} must be a non-empty string")
    return storable(value, name)
