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


def check_duration(name: str, value: object, minimum: timedelta) -> timedelta:
    if not isinstance(value, timedelta):
        raise ConfigurationError(f"{name} must be a timedelta, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {value}")
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
