"""Requests and results as JSON: dataclasses and plain values through msgspec, pydantic models
through their own methods. Errors become :class:`SerializationError`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from .exceptions import SerializationError

_encoder = msgspec.json.Encoder()


def type_name(tp: Any) -> str:
    """The stored name of a request or result type."""
    return getattr(tp, "__name__", None) or repr(tp)


def _is_pydantic(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "model_validate_json")


def encode(value: Any) -> str:
    """JSON text for a request or result."""
    try:
        if hasattr(value, "model_dump_json") and _is_pydantic(type(value)):
            return str(value.model_dump_json())
        return _encoder.encode(value).decode()
    except (TypeError, ValueError, msgspec.EncodeError, OverflowError) as exc:
        # (ValueError: pydantic's PydanticSerializationError, and UnicodeEncodeError for a lone
        # surrogate, which UTF-8 cannot hold)
        raise SerializationError(
            f"cannot store a {type(value).__name__} as JSON: {exc}. Requests and results must "
            "be dataclasses, pydantic models, msgspec Structs or plain JSON values"
        ) from exc


#: a loader per request or result type, made once: a msgspec Decoder loads several times
#: faster than msgspec.json.decode(text, type=...) does
_loaders: dict[Any, Callable[[str], Any]] = {}


def _loader(tp: Any) -> Callable[[str], Any]:
    try:
        return _loaders[tp]
    except KeyError:
        found = _loaders[tp] = _make_loader(tp)
        return found
    except TypeError:  # a type expression that cannot be a key: made each time
        return _make_loader(tp)


def _make_loader(tp: Any) -> Callable[[str], Any]:
    if _is_pydantic(tp):
        loader: Callable[[str], Any] = tp.model_validate_json
        return loader
    if tp is None or tp is Any:
        return msgspec.json.decode
    return msgspec.json.Decoder(tp).decode


def decode(text: str, tp: Any) -> Any:
    """Load JSON text back into its declared type."""
    try:
        return _loader(tp)(text)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as exc:
        raise SerializationError(f"cannot load stored JSON as {type_name(tp)}: {exc}") from exc


def check_encodable(value: Any, expected: Any) -> None:
    """A request of the wrong type is a user error worth catching before it is stored."""
    if isinstance(expected, type) and not isinstance(value, expected):
        raise SerializationError(
            f"expected a request of type {type_name(expected)}, got {type(value).__name__}"
        )


def check_loads(body: str, expected: Any) -> None:
    """A request must come back as it went: what the job will load is checked now, so that a
    value that does not fit its declared type (a str in an int field, a NaN stored as null)
    fails the enqueue rather than every attempt of the job."""
    try:
        decode(body, expected)
    except SerializationError as exc:
        raise SerializationError(
            f"the request would not load back as {type_name(expected)}: {exc.__cause__}"
        ) from exc
