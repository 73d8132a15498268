"""The jobs admin: a dashboard, the live queue, scheduled tasks, history and every job, with
cancel and requeue. Served by the library itself (no CDN, no build step).

- ASGI (Starlette/FastAPI ``app.mount("/admin/jobs", admin)``, uvicorn, or Quart through
  :func:`mount`): ``admin = create_app(jobs, authorize=...)``
- aiohttp: ``app.add_subapp("/admin/jobs", aiohttp_app(jobs, authorize=...))``
- standalone: ``python -m asyncjobs admin --app mypackage.jobs:jobs``
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._app import AdminApp, create_app, mount
from ._http import AdminRequest

if TYPE_CHECKING:
    from aiohttp import web

    from ..runtime import BackgroundJobs


def aiohttp_app(jobs: BackgroundJobs, **options: Any) -> web.Application:
    """The admin as an aiohttp sub-application (needs ``aiohttp``); see :func:`create_app`."""
    from ._aiohttp import aiohttp_app as build

    return build(jobs, **options)


__all__ = ["AdminApp", "AdminRequest", "aiohttp_app", "create_app", "mount"]
