"""The examples run: the web apps enqueue a job from a request and the job completes."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from aiohttp.test_utils import TestClient, TestServer

from examples.aiohttp_app import create_app as create_aiohttp_app
from examples.quart_app import create_app as create_quart_app

pytestmark = pytest.mark.anyio


async def test_aiohttp_example_enqueues_and_runs_a_job(tmp_path: Path) -> None:
    app = create_aiohttp_app(f"sqlite:///{tmp_path / 'jobs.db'}")
    async with TestClient(TestServer(app)) as client:
        response = await client.post("/signup", params={"email": "a@b.c"})
        assert response.status == 202
        job_id = (await response.json())["job_id"]
        with anyio.fail_after(10):
            while True:
                status = await (await client.get(f"/jobs/{job_id}")).json()
                if status["state"] == "Completed":
                    break
                await anyio.sleep(0.05)
        assert (await client.get("/jobs/99999")).status == 404


async def test_quart_example_enqueues_and_runs_a_job(tmp_path: Path) -> None:
    app = create_quart_app(f"sqlite:///{tmp_path / 'jobs.db'}")
    async with app.test_app() as test_app:
        client = test_app.test_client()
        response = await client.post("/reports", query_string={"name": "q3"})
        assert response.status_code == 202
        job_id = (await response.get_json())["job_id"]
        with anyio.fail_after(10):
            done = await client.get(f"/reports/{job_id}")
        body = await done.get_json()
    assert body["state"] == "Completed"
    assert json.loads(body["result"]) == {"name": "q3", "rows": 3}


async def test_report_pipeline_example(tmp_path: Path) -> None:
    from examples.report_pipeline import Report, ReportReady, run_pipeline

    ReportReady.notified = []
    built, published = await run_pipeline(f"sqlite:///{tmp_path / 'jobs.db'}")
    assert built.completed is not None and published.completed is not None
    assert built.completed.notified_date is not None  # the callback ran
    assert ReportReady.notified == [Report("q3", pages=8)]
    logs = built.completed.logs or ""
    assert "rendering section 4 of 4" in logs and built.completed.status == "section 4"
    assert 'publishing {"name":"q3","pages":8}' in (published.completed.logs or "")
    assert published.completed.started_date is not None
    assert built.completed.completed_date is not None
    assert published.completed.started_date >= built.completed.completed_date
