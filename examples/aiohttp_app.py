"""An aiohttp app whose request handler enqueues a job; the job runtime lives with the app.

Run: ``python examples/aiohttp_app.py`` then ``curl -X POST localhost:8080/signup?email=a@b.c``;
the jobs admin is at http://localhost:8080/admin/jobs/ (from this machine).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from asyncjobs import AsyncCommand, BackgroundJobs, job_logger
from asyncjobs.web import AdminRequest, aiohttp_app


@dataclass
class Welcome:
    email: str


class SendWelcomeEmail(AsyncCommand[Welcome]):
    async def run(self, request: Welcome) -> None:
        job_logger().info("welcome mail to %s", request.email)


JOBS_KEY = web.AppKey("jobs", BackgroundJobs)


def admin_allowed(request: AdminRequest) -> bool:
    """Who may use the jobs admin. Replace with your app's own check (a session, a role);
    this one lets in requests from this machine only."""
    return request.client in ("127.0.0.1", "::1")


#: The names this server answers to. A check by client address needs it: a page on another
#: site can point its own name at 127.0.0.1 (DNS rebinding), and the Host header gives it away.
ADMIN_HOSTS = {"127.0.0.1", "localhost", "::1"}


async def signup(request: web.Request) -> web.Response:
    jobs = request.app[JOBS_KEY]
    ref = await jobs.enqueue_command(SendWelcomeEmail, Welcome(request.query["email"]))
    return web.json_response({"job_id": ref.id, "ref_id": ref.ref_id}, status=202)


async def job_status(request: web.Request) -> web.Response:
    result = await request.app[JOBS_KEY].get_job(int(request.match_info["id"]))
    if result is None:
        raise web.HTTPNotFound()
    return web.json_response({"id": result.summary.id, "state": str(result.state)})


def create_app(dsn: str | None = None) -> web.Application:
    app = web.Application()
    jobs = BackgroundJobs(
        dsn or os.environ.get("ASYNCJOBS_DSN", "sqlite:///jobs.db"), commands=[SendWelcomeEmail]
    )
    app[JOBS_KEY] = jobs

    async def jobs_lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with jobs:  # migrate and run jobs while the app is up; stop gracefully after
            yield

    app.cleanup_ctx.append(jobs_lifecycle)
    app.router.add_post("/signup", signup)
    app.router.add_get("/jobs/{id}", job_status)
    app.add_subapp(
        "/admin/jobs/", aiohttp_app(jobs, authorize=admin_allowed, allowed_hosts=ADMIN_HOSTS)
    )
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="127.0.0.1", port=8080)
