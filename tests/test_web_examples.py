"""The example web apps serve the jobs admin under /admin/jobs, to this machine only."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest
from aiohttp.test_utils import TestClient, TestServer

from examples.aiohttp_app import create_app as create_aiohttp_app
from examples.quart_app import create_app as create_quart_app

pytestmark = pytest.mark.anyio


async def test_aiohttp_example_mounts_the_admin(tmp_path: Path) -> None:
    app = create_aiohttp_app(f"sqlite:///{tmp_path / 'jobs.db'}")
    async with TestClient(TestServer(app)) as client:
        job_id = (await (await client.post("/signup", params={"email": "a@b.c"})).json())["job_id"]
        page = await client.get("/admin/jobs/")
        assert page.status == 200 and "static/app.js" in await page.text()
        with anyio.fail_after(10):
            while True:
                detail = await (await client.get(f"/admin/jobs/api/jobs/{job_id}")).json()
                if detail["state"] == "Completed":
                    break
                await anyio.sleep(0.05)
        assert "welcome mail to a@b.c" in detail["job"]["logs"]
        remote = await client.get("/admin/jobs/api/overview", headers={"X-Forwarded-For": "x"})
        assert remote.status == 200  # the check looks at the peer address, not headers
        # a page on another site whose name points at 127.0.0.1 (DNS rebinding)
        rebound = await client.get("/admin/jobs/api/overview", headers={"Host": "evil.example"})
        assert rebound.status == 403


async def test_quart_example_mounts_the_admin(tmp_path: Path) -> None:
    app = create_quart_app(f"sqlite:///{tmp_path / 'jobs.db'}")
    async with app.test_app():  # runs the app's startup: the jobs runtime
        local = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=local, base_url="http://localhost") as client:
            job_id = (await client.post("/reports", params={"name": "q3"})).json()["job_id"]
            assert (await client.get(f"/reports/{job_id}")).json()["state"] == "Completed"
            assert (await client.get("/reports/999")).status_code == 404  # no such job
            page = await client.get("/admin/jobs/")
            assert page.status_code == 200 and "static/app.js" in page.text
            redirect = await client.get("/admin/jobs")
            assert redirect.headers["location"] == "/admin/jobs/"
            detail = (await client.get(f"/admin/jobs/api/jobs/{job_id}")).json()
            assert detail["job"]["response_body"] == '{"name":"q3","rows":3}'
            rebound = await client.get(
                "/admin/jobs/api/overview", headers={"Host": "evil.example:5000"}
            )
            assert rebound.status_code == 403
        remote = httpx.ASGITransport(app=app, client=("203.0.113.9", 5000))
        async with httpx.AsyncClient(transport=remote, base_url="http://localhost") as client:
            assert (await client.get("/admin/jobs/api/overview")).status_code == 403
            assert (await client.post("/reports", params={"name": "q4"})).status_code == 202
