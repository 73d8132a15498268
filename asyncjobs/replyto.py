"""ReplyTo: where a finished job POSTs its result.

A job's ``reply_to`` field is one string::

    [METHOD ]url
    [METHOD ]prefix@url

``METHOD`` is an HTTP method in upper case followed by exactly one space; it
defaults to ``POST``.  ``url`` must start with ``http://`` or ``https://``.

The optional ``prefix`` goes *before* the scheme and ends at the first ``@``
(so an ``@`` inside a prefix must be written ``%40``).  It has three forms:

``user:pass@https://host/path``
    HTTP basic auth.  ``user`` must not be empty; ``pass`` may be.
``http.Header-Name:value@https://host/path``
    One extra request header, e.g. ``http.X-Api-Key:abc@https://host/path``.
``token@https://host/path``
    ``Authorization: Bearer token``.

Every part of a prefix is percent-decoded (``us%40er:p%3Ass``).  A token,
password or header value whose *undecoded* text starts with ``$`` is read from
the environment variable of that name, e.g. ``$CALLBACK_TOKEN@https://...``,
but only when the application lists the name in ``allowed_env``; anything else
is an error rather than being sent as literal text.  To send a literal value
starting with ``$``, encode it as ``%24``.

Examples::

    https://example.com/hooks/done
    PUT https://example.com/jobs/42/result
    $HOOK_TOKEN@https://example.com/hooks/done
    http.X-Api-Key:%24ecret@https://example.com/hooks/done
    bot:$HOOK_PASSWORD@https://example.com/hooks/done

Credentials inside the URL itself (``https://user:pass@host``) are rejected:
use the prefix form, which keeps secrets out of ``ReplyTo.url`` and its repr.

Error messages never repeat the text of a token, password or header value.

The host a ReplyTo names is the job's choice, so what it may cost is bounded: the whole
exchange takes at most ``timeout`` seconds (a host that answers a byte at a time does not
hold the job), and at most ``max_response_bytes`` of its answer are kept.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import httpx
import msgspec

from asyncjobs.context import _current
from asyncjobs.exceptions import ReplyToError, SerializationError

__all__ = ["ReplyTo", "check_reply_to", "mask_reply_to", "send_json_callback"]

_METHOD_RE = re.compile(r"([A-Z]+) ")
_SCHEME_RE = re.compile(r"https?://", re.IGNORECASE)
_URL_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{0,31}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# RFC 9110 "token": the characters allowed in a header field name.
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_URL_USERINFO_RE = re.compile(r"^(https?://)[^/?#@]*@", re.IGNORECASE)
_VISIBLE_ASCII = frozenset(string.printable) - frozenset(string.whitespace)
# Headers that describe the message framing or routing; letting a ReplyTo set
# them would produce a corrupt or misdirected request.
_FORBIDDEN_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})
_HEADER_PREFIX = "http."
# A shared client's credentials, which a job-chosen host must not receive (its cookies too:
# one set without a domain goes to every host).
_CLIENT_CREDENTIALS = ("authorization", "proxy-authorization", "cookie")
#: how much of a callback's answer is kept by default (only its status says it was taken)
DEFAULT_MAX_RESPONSE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """A parsed ReplyTo string: the request to send when a job finishes.

    ``headers`` already contains ``Authorization`` for bearer and basic auth.
    ``repr()`` masks every header value, so a ReplyTo can be logged safely.
    """

    method: str
    url: str
    # Excluded from hashing because a mapping is not hashable; equality still
    # compares it.
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Freeze a copy so the "frozen" dataclass cannot be changed through
        # the caller's dict.
        object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        allowed_env: Collection[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> ReplyTo:
        """Parse ``[METHOD ][prefix@]url``; raise `ReplyToError` if it is malformed.

        ``allowed_env`` lists the environment variables a ``$NAME`` value may
        read; ``environ`` defaults to ``os.environ``.
        """
        if not isinstance(text, str):
            raise ReplyToError(f"ReplyTo must be a string, not {type(text).__name__}")
        if isinstance(allowed_env, str):
            # A bare string would make `in` a substring test: "TOKEN" would allow "TOK".
            raise TypeError("allowed_env must be a collection of variable names, not a string")
        if not text.strip():
            raise ReplyToError("ReplyTo is empty")
        if re.fullmatch(r"[A-Z]+ +", text):
            raise ReplyToError(f"ReplyTo has the method {text.strip()!r} but no URL")
        if text != text.strip():
            raise ReplyToError("ReplyTo has leading or trailing whitespace")

        method = "POST"
        rest = text
        if match := _METHOD_RE.match(text):
            method = match.group(1)
            rest = text[match.end() :]
        if any(ch.isspace() or not ch.isprintable() for ch in rest):
            raise ReplyToError(
                "ReplyTo contains whitespace or control characters; percent-encode them"
            )

        headers: dict[str, str] = {}
        url = rest
        if not _SCHEME_RE.match(rest):
            if "@" not in rest:
                raise ReplyToError(_scheme_message(rest))
            prefix, url = rest.split("@", 1)
            if not url:
                raise ReplyToError("ReplyTo has nothing after '@'; expected an http(s) URL")
            if not _SCHEME_RE.match(url):
                raise ReplyToError(_scheme_message(url))
            if not prefix:
                raise ReplyToError("ReplyTo has an empty prefix before '@'")
            env = os.environ if environ is None else environ
            allowed = None if allowed_env is _UNRESOLVED else frozenset(allowed_env)
            name, value = _parse_prefix(prefix, allowed, env)
            headers[name] = value

        _check_url(url)
        return cls(method=method, url=url, headers=headers)

    def __repr__(self) -> str:
        masked = {name: _mask(name, value) for name, value in self.headers.items()}
        return f"ReplyTo(method={self.method!r}, url={self.url!r}, headers={masked!r})"


def _scheme_message(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    # Only echo something that looks like a scheme, never arbitrary (possibly secret) text.
    if sep and _URL_SCHEME_RE.fullmatch(scheme):
        return f"ReplyTo URL has an unknown scheme {scheme!r}; expected http or https"
    return "ReplyTo URL must start with http:// or https://"


def _check_url(url: str) -> None:
    try:
        parsed = httpx.URL(url)
        # httpx accepts any port number; urlsplit checks the range.
        urlsplit(url).port  # noqa: B018
    except (httpx.InvalidURL, ValueError) as exc:
        raise ReplyToError(f"ReplyTo URL is invalid: {exc}") from None
    if not parsed.host:
        raise ReplyToError("ReplyTo URL has no host")
    if parsed.userinfo:
        raise ReplyToError(
            "ReplyTo URL contains credentials; put them before the scheme: "
            "user:pass@https://host/path"
        )


def mask_reply_to(text: str) -> str:
    """``text`` as it may be shown (in the admin, say): the literal secret of its prefix (a
    password, a token, a header value) replaced by ``***``; a ``$NAME`` stays, being no
    secret. Text that does not read as a ReplyTo loses its whole prefix."""
    method = ""
    if match := _METHOD_RE.match(text):
        method, text = text[: match.end()], text[match.end() :]
    if _SCHEME_RE.match(text) or "@" not in text:
        return method + _URL_USERINFO_RE.sub(r"\1***@", text)  # (refused, but stored before)
    prefix, url = text.split("@", 1)
    url = _URL_USERINFO_RE.sub(r"\1***@", url)
    if not _SCHEME_RE.match(url):
        return method + "***@" + url
    if _is_header_prefix(prefix) and ":" in prefix:
        name, value = prefix.split(":", 1)
        return f"{method}{name}:{_mask_secret(value)}@{url}"
    if ":" in prefix:
        user, password = prefix.split(":", 1)
        return f"{method}{user}:{_mask_secret(password)}@{url}"
    return f"{method}{_mask_secret(prefix)}@{url}"


def _is_header_prefix(prefix: str) -> bool:
    """``http.Header-Name:value`` in any case (``HTTP.X-Api-Key:...`` is no user name)."""
    return prefix[: len(_HEADER_PREFIX)].lower() == _HEADER_PREFIX


def _mask_secret(raw: str) -> str:
    return raw if raw.startswith("$") and _ENV_NAME_RE.fullmatch(raw[1:]) else "***"


def check_reply_to(text: str) -> None:
    """Raise `ReplyToError` if ``text`` is not a well-formed ReplyTo. A ``$NAME`` value is
    checked as a name only: the process that sends reads it, with its own ``allowed_env``."""
    ReplyTo.parse(text, allowed_env=_UNRESOLVED)


class _Unresolved(frozenset[str]):
    """``allowed_env`` of a check that reads no variable (see check_reply_to); a class of its
    own, as the empty frozenset and tuple are each one object."""


_UNRESOLVED = _Unresolved()


def _parse_prefix(
    prefix: str, allowed_env: frozenset[str] | None, environ: Mapping[str, str]
) -> tuple[str, str]:
    """Turn the part before ``@`` into one header (name, value)."""
    if _is_header_prefix(prefix):
        spec = prefix[len(_HEADER_PREFIX) :]
        if ":" not in spec:
            raise ReplyToError("ReplyTo header prefix must look like http.Header-Name:value")
        raw_name, raw_value = spec.split(":", 1)
        name = _decode(raw_name, "header name")
        if not name:
            raise ReplyToError("ReplyTo header prefix has an empty header name")
        if not _HEADER_NAME_RE.fullmatch(name):
            raise ReplyToError(f"ReplyTo header name {name!r} is not a valid HTTP header name")
        if name.lower() in _FORBIDDEN_HEADERS:
            raise ReplyToError(f"ReplyTo may not set the {name} header")
        value = _secret(raw_value, "header value", allowed_env, environ)
        if not value:
            raise ReplyToError(f"ReplyTo header {name} has an empty value")
        # Inner spaces and tabs are legal in a header value; CR/LF would
        # allow header injection.
        if not all(ch in _VISIBLE_ASCII or ch in " \t" for ch in value) or value != value.strip():
            raise ReplyToError(
                f"ReplyTo header {name} value has characters not allowed in an HTTP header"
            )
        return name, value

    if ":" in prefix:
        raw_user, raw_password = prefix.split(":", 1)
        user = _decode(raw_user, "user name")
        if not user:
            raise ReplyToError("ReplyTo basic auth has an empty user name")
        if ":" in user:
            # RFC 7617: the first colon separates user from password.
            raise ReplyToError("ReplyTo basic auth user name may not contain ':'")
        password = _secret(raw_password, "password", allowed_env, environ, allow_empty=True)
        credentials = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return "Authorization", f"Basic {credentials}"

    token = _secret(prefix, "bearer token", allowed_env, environ)
    if not token or not all(ch in _VISIBLE_ASCII for ch in token):
        raise ReplyToError("ReplyTo bearer token is empty or has characters not allowed in it")
    return "Authorization", f"Bearer {token}"


def _decode(raw: str, what: str) -> str:
    if _BAD_PERCENT_RE.search(raw):
        raise ReplyToError(f"ReplyTo {what} has a malformed percent escape")
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        # `from None`: the original exception would carry the secret's bytes.
        raise ReplyToError(f"ReplyTo {what} is not valid UTF-8 after percent-decoding") from None


def _secret(
    raw: str,
    what: str,
    allowed_env: frozenset[str] | None,
    environ: Mapping[str, str],
    *,
    allow_empty: bool = False,
) -> str:
    """Decode a secret, or read it from the environment if it is ``$NAME`` (with
    ``allowed_env`` None, the name is only checked)."""
    if not raw.startswith("$"):
        return _decode(raw, what)
    name = raw[1:]
    if not name:
        raise ReplyToError(f"ReplyTo {what} is a bare '$'; expected $ENV_VAR_NAME")
    if not _ENV_NAME_RE.fullmatch(name):
        # Not echoed: it is likely a literal secret that forgot its %24.
        raise ReplyToError(
            f"ReplyTo {what} starts with '$' but is no environment variable name "
            "(letters, digits, '_'); write a literal '$' as %24"
        )
    if allowed_env is None:
        return "x"  # a stand-in that passes the checks made of the value
    if name not in allowed_env:
        raise ReplyToError(
            f"ReplyTo {what} reads environment variable {name!r}, which is not in allowed_env"
        )
    value = environ.get(name)
    if value is None:
        raise ReplyToError(f"ReplyTo {what} reads environment variable {name!r}, which is unset")
    if not value and not allow_empty:
        raise ReplyToError(f"ReplyTo {what} reads environment variable {name!r}, which is empty")
    return value


def _mask(name: str, value: str) -> str:
    # Keep the auth scheme: "Bearer ***" says what was configured without the secret.
    if name.lower() == "authorization":
        scheme, _, _ = value.partition(" ")
        return f"{scheme} ***"
    return "***"


def _encode_body(body: object) -> bytes:
    """The body as JSON. Whatever stops that (a type msgspec cannot encode, a model whose dump
    raises, a cycle or nesting past the recursion limit) is a SerializationError: another
    attempt would fail alike, so a job does not redo its work for it."""
    try:
        payload: Any = body
        # Pydantic models (instances, not the class itself) dump to JSON-safe data first.
        dump = None if isinstance(body, type) else getattr(body, "model_dump", None)
        if callable(dump):
            payload = dump(mode="json")
        return msgspec.json.encode(payload)
    except Exception as exc:
        raise SerializationError(f"ReplyTo body cannot be encoded as JSON: {exc!r}") from exc


async def send_json_callback(
    reply_to: str | ReplyTo,
    body: object,
    *,
    allowed_env: Collection[str] | None = None,
    client: httpx.AsyncClient | None = None,
    # Bounds the whole exchange; a timeout raises httpx.TimeoutException (a transport error
    # the retry logic understands) instead of cancelling the caller's scope.
    timeout: float = 30.0,  # noqa: ASYNC109
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> httpx.Response:
    """Send ``body`` as JSON to ``reply_to`` and return the response.

    ``body`` may be any value msgspec can encode (dataclasses, dicts, lists,
    ...) or an object with ``model_dump`` such as a pydantic model.

    Raises `ReplyToError` for a malformed ``reply_to``, `SerializationError`
    if ``body`` is not JSON-able, and ``httpx.HTTPStatusError`` for any
    non-2xx response (redirects are not followed, so 3xx counts too).  The
    status error, like ``httpx.TransportError`` for network failures and
    ``httpx.TimeoutException`` once ``timeout`` seconds have passed, is
    deliberately left unwrapped so a job's retry policy treats the callback
    as failed and tries again.

    The response's body is kept when it is at most ``max_response_bytes``
    long; a longer one is not read on (the status alone says the callback was
    taken), and reading the returned response's content then raises
    ``httpx.ResponseNotRead``.

    ``client`` is used as-is when given (its default headers still apply), but
    never with its credentials: its ``auth``, and any ``Authorization``,
    ``Proxy-Authorization`` or ``Cookie`` it would add, are left out unless the
    ReplyTo itself sets that header, so a shared client's credentials are never
    sent to a job-chosen host. Otherwise a client is opened and closed for this
    one request.

    ``allowed_env`` defaults to the ``reply_to_env`` of the ``BackgroundJobs`` running the
    current job (none outside a job).
    """
    if allowed_env is None:
        context = _current.get()
        allowed_env = () if context is None else context.reply_to_env
    target = (
        reply_to
        if isinstance(reply_to, ReplyTo)
        else ReplyTo.parse(reply_to, allowed_env=allowed_env)
    )
    content = _encode_body(body)
    headers = httpx.Headers({"Content-Type": "application/json"})
    # Prefix headers win (case-insensitively, so no duplicates) so a ReplyTo can
    # pick e.g. a vendor JSON content type.
    headers.update(target.headers)
    own = {name.lower() for name in target.headers}

    async def send(http: httpx.AsyncClient) -> httpx.Response:
        request = http.build_request(
            target.method, target.url, content=content, headers=headers, timeout=timeout
        )
        for name in _CLIENT_CREDENTIALS:
            if name not in own:
                request.headers.pop(name, None)
        try:
            with anyio.fail_after(timeout):
                # Custom headers such as X-Api-Key would follow a redirect to any host.
                streamed = await http.send(request, auth=None, follow_redirects=False, stream=True)
                try:
                    raw = await _raw_body(streamed, max_response_bytes)
                finally:
                    await streamed.aclose()
                response = streamed if raw is None else await _with_body(streamed, raw)
        except TimeoutError:
            raise httpx.TimeoutException(
                f"the callback took longer than {timeout} s", request=request
            ) from None
        return response.raise_for_status()

    if client is not None:
        return await send(client)
    async with httpx.AsyncClient() as own_client:
        return await send(own_client)


async def _raw_body(response: httpx.Response, limit: int) -> bytes | None:
    """The response's body as sent (before any decompression) if it is at most ``limit``
    bytes long, else None (it is not read on)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _with_body(streamed: httpx.Response, raw: bytes) -> httpx.Response:
    """``streamed`` (read and closed) as a response holding ``raw``, decoded as httpx decodes
    a body it reads itself. A body that does not decode is left unread: the status stands."""
    response = httpx.Response(
        streamed.status_code,
        headers=streamed.headers,
        stream=httpx.ByteStream(raw),
        request=streamed.request,
        extensions=streamed.extensions,
        history=streamed.history,
        default_encoding=streamed.default_encoding,
    )
    response.elapsed = streamed.elapsed
    with contextlib.suppress(httpx.DecodingError):
        await response.aread()
    return response
