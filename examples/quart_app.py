"""A Quart app whose request handler enqueues a job; the job runtime lives with the app.

Run: ``python examples/quart_app.py`` then ``curl -X POST localhost:5000/reports?name=q3``;
the jobs admin is at http://localhost:5000/admin/jobs/ (from this machine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from quart import Quart, jsonify, request
from quart.typing import ResponseReturnValue

import asyncjobs.web
from asyncjobs import AsyncCommandWithResult, BackgroundJobs, JobNotFoundError, update_status
from asyncjobs.web import AdminRequest


@dataclass
class ReportRequest:
    name: str


@dataclass
class Report:
    name: str
    rows: int


class BuildReport(AsyncCommandWithResult[ReportRequest, Report]):
    async def run(self, request: ReportRequest) -> Report:
        update_status(progress=0.5, status="querying")
        return Report(request.name, rows=3)


def admin_allowed(request: AdminRequest) -> bool:
    """Who may use the jobs admin. Replace with your app's own check (a session, a role);
    this one lets in requests from this machine only."""
    return request.client in ("127.0.0.1", "::1")


#: The names this server answers to. A check by client address needs it: a page on another
#: site can point its own name at 127.0.0.1 (DNS rebinding), and the Host header gives it away.
ADMIN_HOSTS = {"127.0.0.1", "localhost", "::1"}


def create_app(dsn: str | None = None) -> Quart:
    app = Quart(__name__)
    jobs = BackgroundJobs(
        dsn or os.environ.get("ASYNCJOBS_DSN", "sqlite:///jobs.db"), commands=[BuildReport]
    )

    @app.before_serving
    async def start_jobs() -> None:
        await jobs.__aenter__()

    @app.after_serving
    async def stop_jobs() -> None:
        await jobs.__aexit__(None, None, None)

    @app.post("/reports")
    async def create_report() -> ResponseReturnValue:
        ref = await jobs.enqueue_command(BuildReport, ReportRequest(request.args["name"]))
        return jsonify({"job_id": ref.id}), 202

    @app.get("/reports/<int:job_id>")
    async def report(job_id: int) -> ResponseReturnValue:
        try:
            result = await jobs.wait_for_job(job_id)
        except JobNotFoundError:
            return jsonify({"error": f"no report job {job_id}"}), 404
        job = result.job
        return jsonify({"state": str(result.state), "result": job.response_body if job else None})

    # The admin is an ASGI app; Quart's way to add one is to wrap its asgi_app.
    admin = asyncjobs.web.create_app(jobs, authorize=admin_allowed, allowed_hosts=ADMIN_HOSTS)
    app.asgi_app = asyncjobs.web.mount(app.asgi_app, "/admin/jobs", admin)  # type: ignore[method-assign]
    return app


if __name__ == "__main__":
    create_app().run(host="127.0.0.1", port=5000)
