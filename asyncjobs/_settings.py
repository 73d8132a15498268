"""Checks of configuration values: a value of the wrong type or out of range is a
ConfigurationError that names the setting, raised where the object is built."""

from __future__ import annotations

import math
from datetime import timedelta

from .exceptions import ConfigurationError


def check_int(
    name: str,
    value: object,
    low: int,
    high: int,
    *,
    error: type[ConfigurationError] = ConfigurationError,
) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise error(f"{name} must be an int within {low}..{high}, got {value!r}")
    return value


def check_duration(
    name: str, value: object, minimum: timedelta, maximum: timedelta | None = None
) -> timedelta:
    if not isinstance(value, timedelta):
        raise ConfigurationError(f"{name} must be a timedelta, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigurationError(f"{name} must be at most {maximum}, got {value}")
    return value


def check_seconds(name: str, value: object, minimum: float) -> float:
    """A number of seconds (int or float), finite and at least ``minimum``."""
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < minimum
    ):
        raise ConfigurationError(
            f"{name} must be a number of seconds of at least {minimum:g}, got {value!r}"
        )
    return float(value)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {value!r}")
    return value


def check_pool_settings(
    min_size: object,
    max_size: object,
    deadlock_retries: object,
    pool_recycle: object,
    connect_timeout: object,
    change_poll_interval: object,
) -> None:
    """The settings of a dialect with a pool of its own and a watch of new job ids (MySQL,
    SQL Server)."""
    low = check_int("min_size", min_size, 1, 10_000)
    high = check_int("max_size", max_size, 1, 10_000)
    if low > high:
        raise ConfigurationError(f"min_size ({low}) must not exceed max_size ({high})")
    check_int("deadlock_retries", deadlock_retries, 0, 1000)
    if pool_recycle != -1:  # -1: never
        check_seconds("pool_recycle", pool_recycle, 1)
    check_seconds("connect_timeout", connect_timeout, 0.001)
    check_duration("change_poll_interval", change_poll_interval, timedelta(milliseconds=1))
