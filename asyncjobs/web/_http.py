"""The few HTTP types the admin needs, independent of any framework: the ASGI and aiohttp
adapters turn their requests into :class:`AdminRequest` and write :class:`Response` back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

#: the largest request body an action may send
MAX_BODY = 64 * 1024

SECURITY_HEADERS = (
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-resource-policy", "same-origin"),
)
#: the page loads only its own script and style; no inline code, no other origin
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class AdminRequest:
    """One request to the admin, as the ``authorize`` callable and the handlers see it."""

    method: str
    #: the path inside the admin, starting with ``/`` (``/api/jobs/7``)
    path: str
    #: where the admin is mounted (``/admin/jobs``), ``""`` at the root
    root_path: str
    #: header names in lower case; repeated headers joined with ``", "``
    headers: Mapping[str, str]
    query: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    #: the client's address, when the server knows it
    client: str | None = None
    #: the framework's own request: the ASGI scope, or the aiohttp ``web.Request``
    raw: Any = field(default=None, repr=False)

    @property
    def is_action(self) -> bool:
        """Whether the request changes something (cancel, requeue, run): every POST."""
        return self.method == "POST"


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def all_headers(self) -> list[tuple[str, str]]:
        headers = [("content-type", self.content_type), ("content-length", str(len(self.body)))]
        return headers + list(SECURITY_HEADERS) + self.headers


class HTTPError(Exception):
    """Ends a request with a status and a message (sent as ``{"error": message}``)."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


_encoder = msgspec.json.Encoder()


def json_response(value: Any, status: int = 200) -> Response:
    return Response(status, _encoder.encode(value), headers=[("cache-control", "no-store")])


def error_response(error: HTTPError) -> Response:
    response = json_response({"error": error.message, "status": error.status}, error.status)
    response.headers.extend(error.headers)
    return response
