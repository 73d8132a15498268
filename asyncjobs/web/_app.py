"""The admin as an ASGI application: routes, static files, security and errors.

Pages are one static HTML document with its script and style; everything it shows comes from
the JSON API under ``api/``. All of it, pages included, passes the :class:`Guard`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from ..models import JobState
from ._api import AdminApi
from ._http import (
    MAX_BODY,
    PAGE_CSP,
    AdminRequest,
    HTTPError,
    Response,
    error_response,
    json_response,
)
from ._params import (
    body_ids,
    body_keys,
    body_text,
    parse_body,
    parse_id,
    parse_int,
    parse_list,
    parse_state,
    query_dict,
    storable,
)
from ._security import Authorize, Guard

if TYPE_CHECKING:
    from ..runtime import BackgroundJobs

log = logging.getLogger("asyncjobs.web")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Handler = Callable[[AdminRequest, re.Match[str]], Awaitable[Response]]

STATIC = Path(__file__).parent / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class _Static:
    body: bytes
    content_type: str
    etag: str


def _load_static() -> dict[str, _Static]:
    files = {}
    for path in sorted(STATIC.iterdir()):
        if path.suffix in _TYPES:
            body = path.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            files[path.name] = _Static(body, _TYPES[path.suffix], etag)
    return files


class AdminApp:
    """The jobs admin. An ASGI application; :func:`aiohttp_app` adapts it to aiohttp."""

    def __init__(
        self,
        jobs: BackgroundJobs,
        *,
        authorize: Authorize | None = None,
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | str | None = None,
        allow_unauthenticated: bool = False,
        allowed_hosts: Iterable[str] | None = None,
        manage_jobs: bool = False,
    ) -> None:
        self.jobs = jobs
        self.guard = Guard(
            authorize=authorize,
            bearer_token=bearer_token,
            basic_auth=basic_auth,
            allow_unauthenticated=allow_unauthenticated,
            allowed_hosts=allowed_hosts,
        )
        self.api = AdminApi(jobs)
        self.manage_jobs = manage_jobs
        self._static = _load_static()
        a = self.api
        read: list[tuple[str, Handler]] = [
            (r"/api/overview", self._simple(a.overview)),
            (r"/api/dashboard", self._simple(a.dashboard)),
            (r"/api/queue", self._simple(a.queue)),
            (r"/api/scheduled", self._simple(a.scheduled)),
            (r"/api/months", self._months),
            (r"/api/jobs", self._list),
            (r"/api/jobs/by-ref/(?P<ref>.+)", self._job_by_ref),
            (r"/api/jobs/(?P<id>[^/]+)", self._job),
            (r"/api/jobs/(?P<id>[^/]+)/live", self._live),
            (r"/", self._page),
            (r"/static/(?P<name>[^/]+)", self._file),
        ]
        actions: list[tuple[str, Handler]] = [
            (r"/api/jobs/cancel", self._cancel_many),
            (r"/api/jobs/requeue", self._requeue_many),
            (r"/api/jobs/(?P<id>[^/]+)/cancel", self._cancel),
            (r"/api/jobs/(?P<id>[^/]+)/requeue", self._requeue),
            (r"/api/scheduled/(?P<name>.+)/run", self._run_task),
        ]
        self._routes = [
            (re.compile(pattern + r"\Z"), method, handler)
            for routes, method in ((actions, "POST"), (read, "GET"))
            for pattern, handler in routes
        ]

    # -- dispatch -------------------------------------------------------------------------

    async def handle(self, request: AdminRequest) -> Response:
        """Answer one request (any framework's, once adapted)."""
        try:
            await self.guard.check(request)
            if request.path == "":
                # `/admin/jobs` → `/admin/jobs/`, so the page's relative URLs resolve inside it.
                return Response(308, headers=[("location", request.root_path + "/")])
            handler, match = self._route(request)
            if request.path.startswith("/api/") and not self.jobs._started:
                raise HTTPError(
                    503, "the jobs runtime is not running: enter `async with jobs` at app startup"
                )
            response = await handler(request, match)
        except HTTPError as exc:
            response = error_response(exc)
        except Exception:
            # %r: a path with a newline in it writes no line of its own into the log
            log.exception("admin request %s %r failed", request.method, request.path)
            response = error_response(HTTPError(500, "internal error; see the server log"))
        if request.method == "HEAD":
            response.body = b""
        return response

    def _route(self, request: AdminRequest) -> tuple[Handler, re.Match[str]]:
        allowed: list[str] = []
        literal = False
        for pattern, method, handler in self._routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            if literal and pattern.groups:
                # A literal route of this path (api/jobs/cancel) was found: the path is not
                # also a job id of a route with parameters (api/jobs/{id}).
                continue
            if request.method == method or (request.method == "HEAD" and method == "GET"):
                return handler, match
            allowed.append(method)
            literal = literal or not pattern.groups
        if allowed:
            methods = ", ".join(sorted(set(allowed)))
            raise HTTPError(
                405, f"{request.method} is not allowed here; use {methods}", [("allow", methods)]
            )
        raise HTTPError(404, f"no such admin route: {request.path}")

    def _simple(self, read: Callable[[], Awaitable[Any]]) -> Handler:
        async def handler(request: AdminRequest, _match: re.Match[str]) -> Response:
            query_dict(request.query, ())
            return json_response(await read())

        return handler

    # -- pages ----------------------------------------------------------------------------

    async def _page(self, request: AdminRequest, _match: re.Match[str]) -> Response:
        response = self._send_static(request, "index.html")
        response.headers.append(("content-security-policy", PAGE_CSP))
        return response

    async def _file(self, request: AdminRequest, match: re.Match[str]) -> Response:
        return self._send_static(request, match["name"])

    def _send_static(self, request: AdminRequest, name: str) -> Response:
        found = self._static.get(name)
        if found is None:
            raise HTTPError(404, f"no static file {name!r}")
        headers = [("etag", found.etag), ("cache-control", "no-cache")]
        if request.headers.get("if-none-match") == found.etag:
            return Response(304, headers=headers)
        return Response(200, found.body, found.content_type, headers)

    # -- reads ----------------------------------------------------------------------------

    async def _months(self, request: AdminRequest, _match: re.Match[str]) -> Response:
        query_dict(request.query, ())
        return json_response({"months": await self.api.months()})

    async def _list(self, request: AdminRequest, _match: re.Match[str]) -> Response:
        view, where = parse_list(request.query)
        return json_response(await self.api.list_jobs(view, where))

    async def _job(self, request: AdminRequest, match: re.Match[str]) -> Response:
        query_dict(request.query, ())
        return json_response(await self.api.job(job_id=parse_id(match["id"])))

    async def _job_by_ref(self, request: AdminRequest, match: re.Match[str]) -> Response:
        query_dict(request.query, ())
        ref_id = match["ref"]
        if len(ref_id) > 500:
            raise HTTPError(400, "ref id is longer than 500 characters")
        return json_response(await self.api.job(ref_id=storable(ref_id, "ref id")))

    async def _live(self, request: AdminRequest, match: re.Match[str]) -> Response:
        values = query_dict(request.query, ("log_offset",))
        offset = parse_int(values.get("log_offset", "0"), "log_offset", 0, 2**31 - 1)
        return json_response(await self.api.live(parse_id(match["id"]), offset))

    # -- actions --------------------------------------------------------------------------

    async def _cancel(self, request: AdminRequest, match: re.Match[str]) -> Response:
        body_keys(parse_body(request.body), ())
        return json_response(await self.api.cancel(parse_id(match["id"])))

    async def _cancel_many(self, request: AdminRequest, _match: re.Match[str]) -> Response:
        body = parse_body(request.body)
        body_keys(body, ("ids", "state", "worker"))
        if "ids" in body:
            if len(body) > 1:
                raise HTTPError(400, "give either ids, or state and/or worker")
            return json_response(await self.api.cancel_many(body_ids(body["ids"]), None, None))
        if not body:
            raise HTTPError(400, "give ids, or a state and/or a worker, of the jobs to cancel")
        state = None
        if "state" in body:
            state = parse_state(body_text(body["state"], "state"), (
                JobState.QUEUED, JobState.STARTED, JobState.EXECUTED
            ))  # fmt: skip
        worker = body_text(body["worker"], "worker") if "worker" in body else None
        return json_response(await self.api.cancel_many(None, state, worker))

    async def _requeue(self, request: AdminRequest, match: re.Match[str]) -> Response:
        body_keys(parse_body(request.body), ())
        return json_response(await self.api.requeue(parse_id(match["id"])))

    async def _requeue_many(self, request: AdminRequest, _match: re.Match[str]) -> Response:
        body = parse_body(request.body)
        body_keys(body, ("ids",))
        if "ids" not in body:
            raise HTTPError(400, "give the ids of the jobs to requeue")
        return json_response(await self.api.requeue_many(body_ids(body["ids"])))

    async def _run_task(self, request: AdminRequest, match: re.Match[str]) -> Response:
        body_keys(parse_body(request.body), ())
        return json_response(await self.api.run_task(match["name"]))

    # -- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1003})
            return
        root = str(scope.get("root_path", "")).rstrip("/")
        path = str(scope["path"])
        if root and (path == root or path.startswith(root + "/")):
            path = path[len(root) :]
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", ()):
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body = await _read_body(receive)
        if body is None:
            response = error_response(HTTPError(413, f"the body is over {MAX_BODY} bytes"))
        else:
            try:
                query = tuple(
                    parse_qsl(
                        scope.get("query_string", b"").decode("latin-1"),
                        keep_blank_values=True,
                        encoding="utf-8",
                        errors="strict",
                    )
                )
            except UnicodeDecodeError:
                response = error_response(HTTPError(400, "the query string is not UTF-8"))
            else:
                client = scope.get("client")
                request = AdminRequest(
                    method=str(scope["method"]).upper(),
                    path=path,
                    root_path=root,
                    headers=headers,
                    query=query,
                    body=body,
                    client=client[0] if client else None,
                    raw=scope,
                )
                response = await self.handle(request)
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in response.all_headers()
                ],
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """With ``manage_jobs``, the jobs runtime lives as long as the server; otherwise the
        host application owns it and these messages are only acknowledged."""
        message = await receive()
        if message["type"] != "lifespan.startup":
            await send({"type": "lifespan.shutdown.complete"})
            return
        if not self.manage_jobs:
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        started = False
        try:
            async with self.jobs:
                await send({"type": "lifespan.startup.complete"})
                started = True
                await receive()
        except Exception as exc:
            kind = "shutdown" if started else "startup"
            await send({"type": f"lifespan.{kind}.failed", "message": repr(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None past :data:`MAX_BODY`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def create_app(
    jobs: BackgroundJobs,
    *,
    authorize: Authorize | None = None,
    bearer_token: str | None = None,
    basic_auth: tuple[str, str] | str | None = None,
    allow_unauthenticated: bool = False,
    allowed_hosts: Iterable[str] | None = None,
    manage_jobs: bool = False,
) -> AdminApp:
    """The jobs admin as an ASGI application.

    Every route (pages, API, actions) needs authorisation: ``authorize(request)`` returning
    true (it may be async; ``request`` is an :class:`AdminRequest` with ``headers``,
    ``client``, ``is_action`` and the framework's ``raw`` request), or a matching
    ``bearer_token`` or ``basic_auth=(user, password)``. With none of them, building the app
    fails unless ``allow_unauthenticated=True``. ``allowed_hosts`` limits the ``Host`` header
    (a guard against DNS rebinding for a server on 127.0.0.1). With ``manage_jobs=True`` the
    app enters ``async with jobs`` on ASGI lifespan startup (for running it alone under
    uvicorn); otherwise the host application runs ``jobs``.
    """
    return AdminApp(
        jobs,
        authorize=authorize,
        bearer_token=bearer_token,
        basic_auth=basic_auth,
        allow_unauthenticated=allow_unauthenticated,
        allowed_hosts=allowed_hosts,
        manage_jobs=manage_jobs,
    )


def mount(
    app: Callable[..., Awaitable[None]], prefix: str, admin: Callable[..., Awaitable[None]]
) -> Callable[..., Coroutine[Any, Any, None]]:
    """An ASGI app serving ``admin`` under ``prefix`` and everything else from ``app``; for
    frameworks without a mount of their own (Quart: ``app.asgi_app = mount(app.asgi_app,
    "/admin/jobs", admin)``). Lifespan events go to ``app``."""
    prefix = "/" + prefix.strip("/")

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            root = str(scope.get("root_path", "")).rstrip("/")
            path = str(scope["path"])
            inner = path[len(root) :] if root and path.startswith(root + "/") else path
            if inner == prefix or inner.startswith(prefix + "/"):
                # `path` stays the full path, `root_path` gains the prefix (ASGI's convention).
                scope = dict(scope, root_path=root + prefix, path=root + inner)
                await admin(scope, receive, send)
                return
        await app(scope, receive, send)

    return dispatch
