"""Who may use the admin, and protection of its actions against cross-site requests.

Access is granted when any configured mechanism accepts the request: the app's ``authorize``
callable, a bearer token, or a basic-auth user and password. With none configured the app is
refused unless ``allow_unauthenticated=True`` (the standalone server on loopback).

Actions (every POST) also need the ``X-Requested-With`` header, which a cross-site form cannot
send and a cross-site ``fetch`` cannot send without a CORS preflight this app never grants, and
an ``Origin`` (when the browser sends one) naming this very host.
"""

from __future__ import annotations

import base64
import hmac
import inspect
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from ..exceptions import ConfigurationError
from ._http import AdminRequest, HTTPError

Authorize = Callable[[AdminRequest], "bool | Awaitable[bool]"]

#: the header every action must carry (the UI sends it with every request)
ACTION_HEADER = "x-requested-with"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class Guard:
    """Checks every request before a handler sees it."""

    def __init__(
        self,
        *,
        authorize: Authorize | None,
        bearer_token: str | None,
        basic_auth: tuple[str, str] | str | None,
        allow_unauthenticated: bool,
        allowed_hosts: Iterable[str] | None,
    ) -> None:
        if authorize is not None and not callable(authorize):
            raise ConfigurationError(
                f"authorize must be a callable, got {type(authorize).__name__}"
            )
        if bearer_token is not None and not isinstance(bearer_token, str):
            raise ConfigurationError(
                f"bearer_token must be a str, got {type(bearer_token).__name__}"
            )
        if bearer_token is not None and not bearer_token.strip():
            raise ConfigurationError("bearer_token must not be empty")
        if bearer_token is not None and not bearer_token.isascii():
            # HTTP carries header values as bytes that servers read as Latin-1: a token with
            # other characters could never be matched.
            raise ConfigurationError("bearer_token must be ASCII (it is sent in a header)")
        self.authorize = authorize
        self.bearer_token = bearer_token
        self.basic = _basic_pair(basic_auth)
        self.open = authorize is None and bearer_token is None and self.basic is None
        if self.open and not allow_unauthenticated:
            raise ConfigurationError(
                "the admin needs authorisation: pass authorize=<callable>, bearer_token=... or "
                "basic_auth=(user, password); or allow_unauthenticated=True if it is reachable "
                "only by trusted users (for example on 127.0.0.1)"
            )
        self.allowed_hosts = None if allowed_hosts is None else _host_set(allowed_hosts)

    async def check(self, request: AdminRequest) -> None:
        """Raise 401/403 unless the request may proceed."""
        if self.allowed_hosts is not None:
            # A page on another site can point its own host name at 127.0.0.1 (DNS
            # rebinding); the Host header still names that site, so it is refused here.
            host = host_name(request.headers.get("host", ""))
            if host not in self.allowed_hosts:
                raise HTTPError(403, f"host {host!r} is not allowed to reach the admin")
        if not self.open and not await self._granted(request):
            if self.basic is not None or self.bearer_token is not None:
                scheme = 'Basic realm="asyncjobs admin", charset="UTF-8"'
                if self.basic is None:
                    scheme = 'Bearer realm="asyncjobs admin"'
                raise HTTPError(401, "authentication required", [("www-authenticate", scheme)])
            raise HTTPError(403, "not allowed to use the jobs admin")
        if request.is_action:
            check_same_origin(request)

    async def _granted(self, request: AdminRequest) -> bool:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        # Credentials are ASCII: other text (a server may hand its bytes over as surrogate
        # escapes) is no credential, not an error, and the application's authorize decides.
        readable = credentials.isascii()
        if (
            self.bearer_token is not None
            and scheme == "bearer"
            and readable
            and hmac.compare_digest(credentials.encode(), self.bearer_token.encode())
        ):
            return True
        if self.basic is not None and scheme == "basic":
            try:
                if not readable:
                    raise ValueError("not ASCII")
                user, _, password = (
                    base64.b64decode(credentials, validate=True).decode().partition(":")
                )
            except ValueError:  # (binascii.Error and UnicodeDecodeError are ValueErrors)
                user = password = ""
            # Both compared, always, so the time taken says nothing about which was wrong.
            user_ok = hmac.compare_digest(user.encode(), self.basic[0].encode())
            password_ok = hmac.compare_digest(password.encode(), self.basic[1].encode())
            if user_ok and password_ok:
                return True
        if self.authorize is not None:
            verdict = self.authorize(request)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            return verdict is True
        return False


def check_same_origin(request: AdminRequest) -> None:
    """Refuse an action that a page on another origin could have sent."""
    if not request.headers.get(ACTION_HEADER):
        raise HTTPError(403, "actions need the X-Requested-With header (cross-site protection)")
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPError(403, f"cross-site action refused (Sec-Fetch-Site: {site})")
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        try:
            netloc = urlsplit(origin).netloc.lower()
        except ValueError:  # no URL at all ("http://[::1", say): no origin of this host
            netloc = None
        if origin == "null" or netloc != host.lower():
            raise HTTPError(403, f"cross-site action refused (Origin {origin!r} is not {host!r})")
    if request.body.strip():
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise HTTPError(415, "actions take a JSON body (Content-Type: application/json)")


def host_name(host: str) -> str:
    """``example.com:8700`` → ``example.com``; ``[::1]:8700`` → ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _host_set(hosts: Iterable[str]) -> frozenset[str]:
    # A str is iterable too, but as its letters: allowed_hosts="localhost" would let in
    # Host "l" and keep out localhost.
    if isinstance(hosts, str | bytes) or not isinstance(hosts, Iterable):
        raise ConfigurationError(
            "allowed_hosts must be a collection of host names, such as {'localhost'}, "
            f"not {type(hosts).__name__}"
        )
    found = list(hosts)
    for host in found:
        if not isinstance(host, str):
            raise ConfigurationError(
                f"allowed_hosts must hold host names as str, got {type(host).__name__}"
            )
    # Compared with host_name(), which lower-cases the request's Host.
    return frozenset(host.strip().lower() for host in found)


def _basic_pair(value: tuple[str, str] | str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        user, sep, password = value.partition(":")
        if not sep:
            raise ConfigurationError("basic_auth must be (user, password) or 'user:password'")
        value = (user, password)
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ConfigurationError(
            f"basic_auth must be (user, password) or 'user:password', got {type(value).__name__}"
        )
    user, password = value
    if not isinstance(user, str) or not isinstance(password, str):
        raise ConfigurationError(
            "basic_auth's user and password must be str, got "
            f"({type(user).__name__}, {type(password).__name__})"
        )
    if not user or not password or ":" in user:
        raise ConfigurationError("basic_auth needs a user (without ':') and a non-empty password")
    return user, password
