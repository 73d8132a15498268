"""The admin as an aiohttp sub-application: ``app.add_subapp("/admin/jobs", aiohttp_app(jobs,
authorize=...))``. Requests are handed to the same core as the ASGI app."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ._app import create_app
from ._http import MAX_BODY, AdminRequest, HTTPError, error_response

if TYPE_CHECKING:
    from ..runtime import BackgroundJobs


async def _read_body(request: web.Request) -> bytes:
    """The body, or its first MAX_BODY + 1 bytes if it is longer. (One read returns only what
    has arrived so far.)"""
    body = bytearray()
    while len(body) <= MAX_BODY:
        chunk = await request.content.read(MAX_BODY + 1 - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


def aiohttp_app(jobs: BackgroundJobs, **options: Any) -> web.Application:
    """An aiohttp application serving the admin; takes :func:`create_app`'s options. The host
    application runs ``jobs`` (e.g. ``async with jobs`` in a ``cleanup_ctx``)."""
    admin = create_app(jobs, **options)

    async def handle(request: web.Request) -> web.StreamResponse:
        if "tail" not in request.match_info:  # the prefix without its slash
            location = (
                request.path + "/" + (f"?{request.query_string}" if request.query_string else "")
            )
            raise web.HTTPPermanentRedirect(location)
        inner = "/" + request.match_info["tail"]
        path = request.path
        root = path[: -len(inner)] if path.endswith(inner) else ""
        body = await _read_body(request)
        if len(body) > MAX_BODY:
            response = error_response(HTTPError(413, f"the body is over {MAX_BODY} bytes"))
        else:
            headers: dict[str, str] = {}
            for name, value in request.headers.items():
                name = name.lower()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            response = await admin.handle(
                AdminRequest(
                    method=request.method.upper(),
                    path=inner,
                    root_path=root.rstrip("/"),
                    headers=headers,
                    query=tuple(request.query.items()),
                    body=body,
                    client=request.remote,
                    raw=request,
                )
            )
        # aiohttp sets Content-Length and Content-Type itself.
        headers_out = [
            (k, v) for k, v in response.all_headers() if k not in ("content-length", "content-type")
        ]
        return web.Response(
            status=response.status,
            body=response.body,
            headers=[*headers_out, ("Content-Type", response.content_type)],
        )

    app = web.Application()
    app.router.add_route("*", "", handle)  # the prefix alone, redirected to prefix + "/"
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
