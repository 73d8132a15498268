"""The admin HTTP API, on SQLite, PostgreSQL and MariaDB: every endpoint and filter, the actions,
authorisation, cross-site protection and malformed input."""

from __future__ import annotations

import base64
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from asyncjobs import BackgroundJobs, JobOptions, Schedule
from asyncjobs.exceptions import ConfigurationError
from asyncjobs.web import AdminApp, AdminRequest, create_app, mount
from asyncjobs.web import _api as web_api
from asyncjobs.web._server import build_admin
from tests.admin_support import (
    FAILING,
    XSS,
    ProgressCommand,
    Steps,
    Switch,
    SwitchCommand,
    admin_jobs,
    insert_task,
    seed_history,
    wait_state,
)
from tests.commands import Add, AddCommand, Fail, FailCommand, Sleep, SleepCommand

pytestmark = [pytest.mark.anyio, pytest.mark.dialects("sqlite", "postgres", "mysql")]
Factory = Callable[..., BackgroundJobs]
TOKEN = "s3cret-token"
ACTION = {"X-Requested-With": "asyncjobs"}


@dataclass
class Admin:
    jobs: BackgroundJobs
    app: AdminApp
    client: httpx.AsyncClient
    dsn: str

    async def get(self, path: str, status: int = 200, **params: Any) -> Any:
        response = await self.client.get(path, params=params)
        assert response.status_code == status, response.text
        return response.json()

    async def post(self, path: str, body: Any = None, status: int = 200) -> Any:
        response = await self.client.post(
            path, json=body if body is not None else {}, headers=ACTION
        )
        assert response.status_code == status, response.text
        return response.json()


def client_for(app: Any, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://admin.test", headers=headers
    )


@pytest.fixture
async def admin(make_jobs: Factory, dsn: str) -> AsyncIterator[Admin]:
    jobs = admin_jobs(make_jobs())
    app = create_app(jobs, bearer_token=TOKEN)
    async with jobs, client_for(app, authorization=f"Bearer {TOKEN}") as client:
        yield Admin(jobs, app, client, dsn)


# -- reads ------------------------------------------------------------------------------------


async def test_overview_counts_jobs_by_state(admin: Admin) -> None:
    await seed_history(admin.jobs)
    data = await admin.get("/api/overview")
    counts = data["counts"]
    assert counts["Completed"] == 6 and counts["Failed"] == 2 and counts["Cancelled"] == 0
    assert counts["Queued"] == 1 and data["delayed"] == 1 and data["running"] == 0
    assert data["window_hours"] == 24
    assert [node["alive"] for node in data["nodes"]] == [True]
    assert data["nodes"][0]["id"] == admin.jobs.node_id


async def test_overview_tells_a_node_whose_lease_ran_out(
    admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By the clock that times leases (the database's), not the web app's, here an hour
    ahead."""
    await admin.jobs.store.renew_node("gone", "elsewhere", 1, timedelta(milliseconds=1))
    await anyio.sleep(0.05)
    real = web_api.utcnow
    monkeypatch.setattr(web_api, "utcnow", lambda: real() + timedelta(hours=1))
    data = await admin.get("/api/overview")
    alive = {node["id"]: node["alive"] for node in data["nodes"]}
    assert alive == {admin.jobs.node_id: True, "gone": False}


async def test_dashboard_has_throughput_and_stats_by_command_and_worker(admin: Admin) -> None:
    await seed_history(admin.jobs)
    data = await admin.get("/api/dashboard")
    hours = data["throughput"]
    assert len(hours) == 24
    assert sum(h["Completed"] for h in hours) == 6 and sum(h["Failed"] for h in hours) == 2
    assert hours[-1]["Completed"] + hours[-2]["Completed"] == 6  # all finished just now
    commands = {row["name"]: row for row in data["commands"]}
    add = commands["AddCommand"]
    assert (add["completed"], add["failed"], add["queued"], add["running"]) == (5, 0, 0, 0)
    assert add["avg_ms"] is not None and add["p95_ms"] is not None
    assert add["p95_ms"] >= add["avg_ms"] * 0.5
    assert commands["FailCommand"]["failed"] == 2 and commands["FailCommand"]["p95_ms"] is None
    assert commands["Ping"]["request_type"] == "API" and commands["Ping"]["completed"] == 1
    assert commands["SleepCommand"]["queued"] == 1
    workers = {row["name"]: row for row in data["workers"]}
    assert workers["pinger"]["completed"] == 1 and workers["later"]["queued"] == 1
    assert workers[None]["completed"] == 5 and workers[None]["failed"] == 2


async def test_queue_shows_progress_and_why_jobs_wait(admin: Admin) -> None:
    jobs = admin.jobs
    # long enough to be seen running on a slow machine (the queue is cached for a second)
    progress = await jobs.enqueue_command(ProgressCommand, Steps(400, 0.05))
    busy = await jobs.enqueue_command(SleepCommand, Sleep(30), JobOptions(worker="serial"))
    behind = await jobs.enqueue_command(SleepCommand, Sleep(0), JobOptions(worker="serial"))
    later = await jobs.enqueue_command(SleepCommand, Sleep(0), JobOptions(worker="serial"))
    delayed = await jobs.enqueue_command(
        SleepCommand, Sleep(0), JobOptions(run_after=datetime.now(UTC) + timedelta(hours=1))
    )
    child = await jobs.enqueue_command(SleepCommand, Sleep(0), JobOptions(depends_on=delayed.id))
    await wait_state(jobs, busy.id, "Started")
    with anyio.fail_after(10):
        while True:
            data = await admin.get("/api/queue")
            running = {job["id"]: job for job in data["running"]}
            if (running.get(progress.id) or {}).get("progress"):
                break
            await anyio.sleep(0.1)
    job = running[progress.id]
    assert 0 < job["progress"] < 1 and job["status"].startswith("step ")
    assert job["elapsed_ms"] > 0 and job["progress_estimated"] is False
    assert running[busy.id]["worker"] == "serial"
    waiting = {job["id"]: job["waiting"] for job in data["queued"]}
    assert waiting[behind.id] == {"reason": "worker_busy", "worker": "serial", "job_id": busy.id}
    assert waiting[later.id] == {"reason": "worker_queue", "worker": "serial", "job_id": behind.id}
    assert waiting[delayed.id]["reason"] == "run_after"
    assert waiting[child.id] == {"reason": "depends_on", "job_id": delayed.id, "state": "Queued"}
    assert data["queued_total"] == 4 and data["running_total"] == 2
    await jobs.cancel_jobs()


async def test_queue_estimates_progress_from_recent_durations(admin: Admin) -> None:
    jobs = admin.jobs
    first = await jobs.enqueue_command(SleepCommand, Sleep(0.3))
    await wait_state(jobs, first.id, "Completed")
    slow = await jobs.enqueue_command(SleepCommand, Sleep(30))
    await wait_state(jobs, slow.id, "Started")
    await anyio.sleep(0.15)
    admin.app.api.cache.clear()
    job = next(j for j in (await admin.get("/api/queue"))["running"] if j["id"] == slow.id)
    assert job["average_ms"] >= 250 and job["eta_ms"] is not None
    assert job["progress"] is not None and 0 < job["progress"] <= 0.99
    await jobs.cancel_job(slow.id)


async def test_job_detail_by_id_and_ref_id(admin: Admin) -> None:
    ids = await seed_history(admin.jobs)
    failed = await admin.get(f"/api/jobs/{ids['xss']}")
    assert failed["state"] == "Failed" and failed["location"] == "failed"
    job = failed["job"]
    assert job["tag"] == XSS and job["ref_id"] == f"r{XSS}"
    assert job["error"]["message"] == f"error {XSS}" and job["error"]["type"] == "RuntimeError"
    assert "Traceback" in job["error"]["traceback"] and job["attempts"] == 1
    assert (
        job["request_body"]
        == '{"message":"error <script>alert(1)</script>","succeed_on_attempt":null}'
    )
    assert failed["can_requeue"] is True and failed["can_cancel"] is False
    by_ref = await admin.get(f"/api/jobs/by-ref/r{XSS}")
    assert by_ref["summary"]["id"] == ids["xss"]

    done = await admin.get(f"/api/jobs/{ids['add1']}")
    assert done["location"] == "completed" and done["job"]["response"] == "Sum"
    assert done["job"]["response_body"] == '{"total":2}' and done["can_requeue"] is False

    parent = await admin.get(f"/api/jobs/{ids['add0']}")
    assert [d["id"] for d in parent["dependents"]] == [ids["child"]] and parent["children"] == []
    child = await admin.get(f"/api/jobs/{ids['child']}")
    assert child["depends_on_job"]["id"] == ids["add0"] and child["parent"]["id"] == ids["add0"]

    queued = await admin.get(f"/api/jobs/{ids['delayed']}")
    assert queued["location"] == "queue" and queued["can_cancel"] is True
    assert queued["job"]["run_after"] is not None and queued["job"]["worker"] == "later"

    assert (await admin.get("/api/jobs/999999", 404))["error"] == "no job with id 999999"
    assert "no job with ref id" in (await admin.get("/api/jobs/by-ref/nope", 404))["error"]


async def test_job_detail_shows_callback_and_logs(admin: Admin) -> None:
    ref = await admin.jobs.enqueue_command(AddCommand, Add(2, 3), JobOptions(callback="RecordSum"))
    await wait_state(admin.jobs, ref.id, "Completed")
    job = (await admin.get(f"/api/jobs/{ref.id}"))["job"]
    assert job["callback"] == "RecordSum" and job["notified_date"] is not None
    switch = await admin.jobs.enqueue_command(SwitchCommand, Switch("logs \U0001f680"))
    await wait_state(admin.jobs, switch.id, "Completed")
    detail = await admin.get(f"/api/jobs/{switch.id}")
    logs = detail["job"]["logs"]
    assert "switch logs \U0001f680" in logs
    # Where the page's live tail starts: the database's count of the log (characters here),
    # which the page cannot take from a JS string's length (UTF-16 units)
    assert detail["log_length"] == admin.jobs.dialect.text_length(logs) == len(logs)


async def test_job_detail_hides_reply_to_credentials(admin: Admin) -> None:
    shown = {}
    for reply_to in (
        "alice:S3cret@https://hooks.example/a",
        "PUT tok_LIVE@https://hooks.example/b",
        "http.X-Api-Key:KEY-987@https://hooks.example/c",
        "bot:$HOOK_PASSWORD@https://hooks.example/d",  # a variable's name is no secret
    ):
        options = JobOptions(reply_to=reply_to)
        ref = await admin.jobs.enqueue_command(AddCommand, Add(1, 1), options)
        shown[reply_to] = (await admin.get(f"/api/jobs/{ref.id}"))["job"]["reply_to"]
    assert list(shown.values()) == [
        "alice:***@https://hooks.example/a",
        "PUT ***@https://hooks.example/b",
        "http.X-Api-Key:***@https://hooks.example/c",
        "bot:$HOOK_PASSWORD@https://hooks.example/d",
    ]


async def test_live_progress_and_log_tail(admin: Admin) -> None:
    ref = await admin.jobs.enqueue_command(ProgressCommand, Steps(20, 0.25))
    await wait_state(admin.jobs, ref.id, "Started")
    offset, logs, seen = 0, "", []
    with anyio.fail_after(15):
        while True:
            data = await admin.get(f"/api/jobs/{ref.id}/live", log_offset=offset)
            if not data["active"]:
                break
            assert data["state"] == "Started" and data["log_offset"] >= offset
            logs += data["logs"]
            offset = data["log_offset"]
            seen.append(data["progress"])
            await anyio.sleep(0.2)
    assert data == {"id": ref.id, "active": False, "state": "Completed"}
    reported = [p for p in seen if p is not None]
    assert reported == sorted(reported) and len(set(reported)) >= 2  # it moved
    final = (await admin.get(f"/api/jobs/{ref.id}"))["job"]["logs"]
    assert final.startswith(logs) and "finished step 1 of 20" in logs
    tail = await admin.get(f"/api/jobs/{ref.id}/live", log_offset=10)
    assert tail["active"] is False


async def test_live_takes_the_largest_log_offset_it_allows(admin: Admin) -> None:
    """2**31-1 (an int4's largest): past the end of a running job's log, the log comes whole;
    for a job that does not exist, a 404."""
    largest = 2**31 - 1
    ref = await admin.jobs.enqueue_command(ProgressCommand, Steps(1, 30))
    with anyio.fail_after(10):
        while not (logs := (await admin.get(f"/api/jobs/{ref.id}/live"))["logs"]):
            await anyio.sleep(0.05)
    assert "starting 1 steps" in logs  # and nothing more for 30 s
    data = await admin.get(f"/api/jobs/{ref.id}/live", log_offset=largest)
    assert data["active"] is True and data["logs"] == logs and data["log_offset"] == len(logs)
    await admin.get("/api/jobs/424242/live", 404, log_offset=largest)
    await admin.jobs.cancel_job(ref.id)


async def test_lists_filter_by_every_field(admin: Admin) -> None:
    ids = await seed_history(admin.jobs)
    cancelled = await admin.jobs.enqueue_command(
        SleepCommand, Sleep(0), JobOptions(run_after=datetime.now(UTC) + timedelta(days=1))
    )
    await admin.jobs.cancel_job(cancelled.id)

    async def found(**params: Any) -> list[int]:
        return [row["id"] for row in (await admin.get("/api/jobs", **params))["items"]]

    everything = await found()
    assert everything == sorted(everything, reverse=True) and len(everything) == 10
    assert await found(state="failed") == [ids["xss"], ids["failed"]]
    assert await found(state="Cancelled") == [cancelled.id]
    assert await found(command="Ping") == [ids["api"]]  # an API job by its request type
    assert await found(request_type="api") == [ids["api"]]
    assert len(await found(command="AddCommand")) == 5
    assert await found(worker="pinger") == [ids["api"]]
    assert await found(tag="math") == [ids["add2"], ids["add1"], ids["add0"]]
    assert await found(tag=XSS) == [ids["xss"]]
    assert await found(batch_id="batch-7") == [ids["batch"]]
    assert await found(ref_id=f"r{XSS}") == [ids["xss"]]
    assert await found(created_by="alice") == [ids["batch"]]
    assert await found(user_id="u1") == [ids["batch"]]
    assert await found(q="KAPUT") == [ids["failed"]]  # error text, any case
    assert await found(q="<script>") == [ids["xss"]]
    assert await found(q="100%") == [] and await found(q="a_b") == []  # wildcards are literal
    today = datetime.now(UTC).date()
    assert len(await found(**{"from": today.isoformat()})) == 10
    assert await found(to=(today - timedelta(days=1)).isoformat()) == []
    assert len(await found(to=today.isoformat())) == 10  # a date alone includes that day
    assert await found(**{"from": (datetime.now(UTC) + timedelta(minutes=5)).isoformat()}) == []
    # Years before 1000 (not four digits in SQLite's text, out of MySQL's DATETIME range)
    assert len(await found(**{"from": "0999-12-31"})) == 10
    assert len(await found(**{"from": "0500-01-01", "to": "9999-01-01"})) == 10
    assert await found(to="0999-12-31") == []
    month = today.strftime("%Y%m")
    assert len(await found(month=month)) == 10
    assert await found(month="2001-01") == []

    page = await admin.get("/api/jobs", limit=4, offset=0)
    assert page["has_more"] is True and len(page["items"]) == 4
    last = await admin.get("/api/jobs", limit=4, offset=8)
    assert last["has_more"] is False and len(last["items"]) == 2
    assert [r["id"] for r in page["items"] + last["items"]] == everything[:4] + everything[8:]


async def test_search_folds_the_case_of_every_letter(admin: Admin) -> None:
    """Not only ASCII: upper-case letters such as Ä and Ö are found by their lower-case form,
    and the other way round, in the summaries and in the archives."""
    tagged = await admin.jobs.enqueue_command(
        AddCommand, Add(1, 1), JobOptions(tag="Ärger im Öl-Depot")
    )
    failed = await admin.jobs.enqueue_command(
        FailCommand, Fail("ÜBEL: Straße gesperrt"), JobOptions(retry_limit=0)
    )
    await wait_state(admin.jobs, tagged.id, "Completed")
    await wait_state(admin.jobs, failed.id, "Failed")

    async def found(q: str, view: str = "summary") -> list[int]:
        return [row["id"] for row in (await admin.get("/api/jobs", q=q, view=view))["items"]]

    for q in ("Ärger im Öl-Depot", "ärger", "ÄRGER", "Öl", "öl-depot", "DEPOT"):
        assert await found(q) == [tagged.id], q
        assert await found(q, "completed") == [tagged.id], q
    for q in ("übel", "ÜBEL", "straße gesperrt"):
        assert await found(q) == [failed.id], q
        assert await found(q, "failed") == [failed.id], q
    assert await found("örger") == [] and await found("ärgerlich") == []


async def test_archive_views_read_one_month(admin: Admin) -> None:
    ids = await seed_history(admin.jobs)
    month = datetime.now(UTC).strftime("%Y%m")
    completed = await admin.get("/api/jobs", view="completed")
    assert completed["month"] == month and month in completed["months"]
    assert {r["id"] for r in completed["items"]} == {
        ids[k] for k in ("add0", "add1", "add2", "batch", "api", "child")
    }
    assert all(r["state"] == "Completed" for r in completed["items"])
    failed = await admin.get("/api/jobs", view="failed", month=month[:4] + "-" + month[4:])
    assert [r["id"] for r in failed["items"]] == [ids["xss"], ids["failed"]]
    assert failed["items"][0]["error_message"] == f"error {XSS}"
    filtered = await admin.get("/api/jobs", view="failed", q="kaput", state="failed")
    assert [r["id"] for r in filtered["items"]] == [ids["failed"]]
    on_request = await admin.get("/api/jobs", view="completed", q='"a":5')
    assert [r["id"] for r in on_request["items"]] == [ids["batch"]]  # archives search the body
    assert (await admin.get("/api/jobs", view="completed", month="200001"))["items"] == []
    assert (await admin.get("/api/months"))["months"] == completed["months"]


async def test_scheduled_tasks_and_run_now(admin: Admin) -> None:
    data = await admin.get("/api/scheduled")
    assert data["tasks"] == []
    ids = await seed_history(admin.jobs)
    last_run = datetime.now(UTC) - timedelta(hours=1)
    await insert_task(admin.dsn, "nightly", "cron:0 2 * * *|Europe/Berlin",
                      last_job_id=ids["add1"], last_run=last_run)  # fmt: skip
    await insert_task(admin.dsn, "often", "interval:90.0")
    admin.app.api.cache.clear()
    tasks = {t["name"]: t for t in (await admin.get("/api/scheduled"))["tasks"]}
    nightly = tasks["nightly"]
    assert nightly["schedule_text"] == "0 2 * * * (Europe/Berlin)"
    assert nightly["last_job_id"] == ids["add1"] and nightly["last_job_state"] == "Completed"
    assert datetime.fromisoformat(nightly["last_run"]) == last_run
    assert datetime.fromisoformat(nightly["next_run"]) > datetime.now(UTC)
    assert tasks["often"]["schedule_text"] == "every 1m 30s" and tasks["often"]["enabled"] is True
    assert nightly["can_run_now"] is True and nightly["cannot_run_now"] is None
    assert "options" not in nightly
    ran = await admin.post("/api/scheduled/nightly/run")
    assert ran["name"] == "nightly" and isinstance(ran["job_id"], int)
    ran_job = await admin.jobs.get_job(ran["job_id"])
    assert ran_job is not None and ran_job.summary.command == "PingCommand"
    await admin.post("/api/scheduled/nope/run", status=404)


async def test_run_now_says_which_tasks_cannot_run_here(make_jobs: Factory, dsn: str) -> None:
    """An admin that does not execute jobs (as `python -m asyncjobs admin` runs) cannot run a
    transient task (run_command=True), and no admin can run a task whose stored schedule this
    version cannot read: the list says so per task, and Run now is a 409 saying why."""
    jobs = admin_jobs(make_jobs(execute=False))
    app = create_app(jobs, bearer_token=TOKEN)
    async with jobs, client_for(app, authorization=f"Bearer {TOKEN}") as client:
        admin = Admin(jobs, app, client, dsn)
        await jobs.recurring_command(AddCommand, Schedule.every_minute, Add(1, 2), name="here",
                                     options=JobOptions(run_command=True))  # fmt: skip
        await jobs.recurring_command(AddCommand, Schedule.every_minute, Add(1, 2), name="queued")
        await insert_task(dsn, "broken", "cron:not a cron|UTC")
        data = await admin.get("/api/scheduled")
        tasks = {t["name"]: t for t in data["tasks"]}
        assert data["can_run_now"] is True  # the runtime has Run now; each task says if it can
        assert tasks["queued"]["can_run_now"] is True and tasks["queued"]["cannot_run_now"] is None
        assert tasks["here"]["can_run_now"] is False
        assert "does not execute jobs" in tasks["here"]["cannot_run_now"]
        assert tasks["broken"]["can_run_now"] is False
        assert "cannot read" in tasks["broken"]["cannot_run_now"]

        here = await admin.post("/api/scheduled/here/run", status=409)
        assert "does not execute jobs" in here["error"]
        broken = await admin.post("/api/scheduled/broken/run", status=409)
        assert "'broken' cannot run now" in broken["error"]
        queued = await admin.post("/api/scheduled/queued/run")
        assert isinstance(queued["job_id"], int)
        await admin.post("/api/scheduled/nope/run", status=404)


# -- actions ----------------------------------------------------------------------------------


async def test_cancel_one_several_by_worker_and_by_state(admin: Admin) -> None:
    jobs = admin.jobs
    future = datetime.now(UTC) + timedelta(hours=1)
    running = await jobs.enqueue_command(SleepCommand, Sleep(30))
    queued = [
        (await jobs.enqueue_command(SleepCommand, Sleep(0), JobOptions(run_after=future))).id
        for _ in range(6)
    ]
    on_worker = [
        (await jobs.enqueue_command(SleepCommand, Sleep(30), JobOptions(worker="w1"))).id
        for _ in range(2)
    ]
    await wait_state(jobs, running.id, "Started")
    await wait_state(jobs, on_worker[0], "Started")

    assert await admin.post(f"/api/jobs/{queued[0]}/cancel") == {"cancelled": 1, "id": queued[0]}
    assert await wait_state(jobs, queued[0], "Cancelled") == "Cancelled"
    assert await admin.post(f"/api/jobs/{running.id}/cancel") == {"cancelled": 1, "id": running.id}
    await wait_state(jobs, running.id, "Cancelled")
    assert await admin.post("/api/jobs/cancel", {"ids": queued[1:3]}) == {"cancelled": 2}
    assert await admin.post("/api/jobs/cancel", {"worker": "w1"}) == {"cancelled": 2}
    for job_id in on_worker:
        await wait_state(jobs, job_id, "Cancelled")
    assert await admin.post("/api/jobs/cancel", {"state": "queued"}) == {"cancelled": 3}
    for job_id in queued:
        assert await wait_state(jobs, job_id, "Cancelled") == "Cancelled"

    done = await jobs.enqueue_command(AddCommand, Add(1, 2))
    await wait_state(jobs, done.id, "Completed")
    conflict = await admin.post(f"/api/jobs/{done.id}/cancel", status=409)
    assert "Completed" in conflict["error"]
    await admin.post("/api/jobs/424242/cancel", status=404)


async def test_requeue_failed_and_cancelled_jobs(admin: Admin) -> None:
    jobs = admin.jobs
    FAILING.update({"a", "b", "c"})
    try:
        refs = [
            await jobs.enqueue_command(SwitchCommand, Switch(n), JobOptions(retry_limit=0))
            for n in "abc"
        ]
        for ref in refs:
            await wait_state(jobs, ref.id, "Failed")
        cancelled = await jobs.enqueue_command(
            SleepCommand, Sleep(0), JobOptions(run_after=datetime.now(UTC) + timedelta(days=1))
        )
        await jobs.cancel_job(cancelled.id)
        done = await jobs.enqueue_command(AddCommand, Add(1, 1))
        await wait_state(jobs, done.id, "Completed")
        FAILING.clear()
        assert await admin.post(f"/api/jobs/{refs[0].id}/requeue") == {
            "requeued": 1,
            "id": refs[0].id,
        }
        assert await wait_state(jobs, refs[0].id, "Completed") == "Completed"
        result = await admin.post(
            "/api/jobs/requeue", {"ids": [refs[1].id, refs[2].id, done.id, 999999]}
        )
        assert result["requeued"] == [refs[1].id, refs[2].id]
        assert "only failed or cancelled" in result["errors"][str(done.id)]
        assert "999999" in result["errors"]
        for ref in refs[1:]:
            assert await wait_state(jobs, ref.id, "Completed") == "Completed"
        # Requeued, the cancelled job runs at once (its run_after is cleared) and is archived.
        await admin.post(f"/api/jobs/{cancelled.id}/requeue")
        assert await wait_state(jobs, cancelled.id, "Completed") == "Completed"
        assert (await admin.get(f"/api/jobs/{cancelled.id}"))["location"] == "completed"
        assert (
            "only failed or cancelled"
            in (await admin.post(f"/api/jobs/{done.id}/requeue", status=409))["error"]
        )
        await admin.post("/api/jobs/999999/requeue", status=404)
    finally:
        FAILING.clear()


async def test_live_views_are_cached_and_shared(admin: Admin) -> None:
    store = admin.app.api.store
    calls = 0
    original = store.active_counts

    async def counting() -> Any:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.05)  # slow enough that the requests overlap
        return await original()

    store.active_counts = counting
    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(admin.get, "/api/overview")
    assert calls == 1  # twenty viewers, one query
    await admin.get("/api/overview")
    assert calls == 1
    await admin.post("/api/jobs/cancel", {"state": "Queued"})  # an action refreshes at once
    await admin.get("/api/overview")
    assert calls == 2


# -- security and bad input -------------------------------------------------------------------


async def test_every_route_needs_authorisation(admin: Admin) -> None:
    async with client_for(admin.app) as anonymous:
        for path in ("/", "/static/app.js", "/api/overview", "/api/jobs", "/api/jobs/1",
                     "/api/nope"):  # fmt: skip
            response = await anonymous.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Bearer")
        response = await anonymous.post("/api/jobs/1/cancel", headers=ACTION)
        assert response.status_code == 401
        wrong = await anonymous.get("/api/overview", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401


async def test_basic_auth_and_authorize_callable(admin: Admin) -> None:
    jobs = admin.jobs
    basic = create_app(jobs, basic_auth=("ops", "pa:ss"))
    good = "Basic " + base64.b64encode(b"ops:pa:ss").decode()
    bad = "Basic " + base64.b64encode(b"ops:nope").decode()
    async with client_for(basic) as client:
        assert (
            await client.get("/api/overview", headers={"authorization": good})
        ).status_code == 200
        refused = await client.get("/api/overview", headers={"authorization": bad})
        assert refused.status_code == 401 and "Basic" in refused.headers["www-authenticate"]
        garbage = await client.get("/api/overview", headers={"authorization": "Basic !!!"})
        assert garbage.status_code == 401

    seen: list[AdminRequest] = []

    async def viewers_only(request: AdminRequest) -> bool:
        seen.append(request)
        return request.headers.get("x-role") in ("viewer", "admin") and (
            not request.is_action or request.headers.get("x-role") == "admin"
        )

    async with client_for(create_app(jobs, authorize=viewers_only)) as client:
        assert (await client.get("/api/overview")).status_code == 403
        viewer = {"x-role": "viewer"}
        assert (await client.get("/api/overview", headers=viewer)).status_code == 200
        cancel = await client.post(
            "/api/jobs/cancel", json={"state": "Queued"}, headers={**viewer, **ACTION}
        )
        assert cancel.status_code == 403
        adm = {"x-role": "admin", **ACTION}
        assert (
            await client.post("/api/jobs/cancel", json={"state": "Queued"}, headers=adm)
        ).status_code == 200
    assert (
        seen[-1].is_action
        and seen[-1].path == "/api/jobs/cancel"
        and seen[-1].raw["type"] == "http"
    )

    with pytest.raises(ConfigurationError, match="needs authorisation"):
        create_app(jobs)
    with pytest.raises(ConfigurationError, match="basic_auth"):
        create_app(jobs, basic_auth="no-colon")
    with pytest.raises(ConfigurationError, match="bearer_token must be ASCII"):
        create_app(jobs, bearer_token="pässwörd")
    async with client_for(create_app(jobs, allow_unauthenticated=True)) as client:
        assert (await client.get("/api/overview")).status_code == 200
    local = create_app(jobs, allow_unauthenticated=True, allowed_hosts={"127.0.0.1", "localhost"})
    async with client_for(local) as client:
        rebound = await client.get("/api/overview", headers={"host": "evil.example:8700"})
        assert rebound.status_code == 403 and "not allowed" in rebound.json()["error"]
        ok = await client.get("/api/overview", headers={"host": "localhost:8700"})
        assert ok.status_code == 200


async def test_malformed_credentials_and_origins_are_refused_not_errors(admin: Admin) -> None:
    """A header no credential can be (not ASCII, not base64) is no credential: 401, and the
    application's authorize still decides. An Origin that is no URL is a foreign one."""

    async def by_cookie(request: AdminRequest) -> bool:
        return "session=ok" in request.headers.get("cookie", "")

    app = create_app(admin.jobs, basic_auth=("ops", "pw"), authorize=by_cookie)
    async with client_for(app) as client:
        for header in (b"Basic \xe9", b"Basic \xff\xfe", b"Bearer \xff\xfe", b"Basic =\xe9="):
            refused = await client.get("/api/overview", headers={"authorization": header})
            assert refused.status_code == 401, header
            cookie = {"authorization": header, "cookie": "session=ok"}
            assert (await client.get("/api/overview", headers=cookie)).status_code == 200
    tokens = create_app(admin.jobs, bearer_token=TOKEN)
    async with client_for(tokens) as client:
        odd = await client.get("/api/overview", headers={"authorization": b"Bearer \xff\xfe"})
        assert odd.status_code == 401
    for origin in ("http://[::1", "http://admin.test:99999999999999999999"):
        broken = await admin.client.post(
            "/api/jobs/cancel", json={"state": "Queued"}, headers={**ACTION, "origin": origin}
        )
        assert broken.status_code == 403 and "Origin" in broken.json()["error"], origin


@pytest.mark.dialects("sqlite")
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"bearer_token": 1234}, "bearer_token must be a str, got int"),
        ({"basic_auth": ("admin", 1234)}, r"user and password must be str, got \(str, int\)"),
        ({"basic_auth": (b"admin", "pw")}, r"user and password must be str, got \(bytes, str\)"),
        ({"basic_auth": ("a", "b", "c")}, "basic_auth must be"),
        ({"basic_auth": 1234}, "basic_auth must be"),
        ({"authorize": "admins", "bearer_token": "t"}, "authorize must be a callable"),
        ({"bearer_token": "t", "allowed_hosts": "localhost"}, "collection of host names"),
        ({"bearer_token": "t", "allowed_hosts": b"localhost"}, "collection of host names"),
        ({"bearer_token": "t", "allowed_hosts": 8700}, "collection of host names"),
        ({"bearer_token": "t", "allowed_hosts": ["localhost", 127]}, "as str, got int"),
    ],
)
async def test_security_settings_of_the_wrong_type_are_refused(
    make_jobs: Factory, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        create_app(make_jobs(), **settings)


@pytest.mark.dialects("sqlite")
async def test_allowed_hosts_match_in_any_case(make_jobs: Factory) -> None:
    jobs = make_jobs()
    app = create_app(jobs, allow_unauthenticated=True, allowed_hosts=[" LocalHost "])
    async with jobs, client_for(app) as client:
        ok = await client.get("/api/overview", headers={"host": "localhost:8700"})
        assert ok.status_code == 200
        other = await client.get("/api/overview", headers={"host": "l"})
        assert other.status_code == 403


async def test_actions_refuse_cross_site_requests(admin: Admin) -> None:
    client = admin.client
    url = "/api/jobs/cancel"
    body = {"state": "Queued"}
    no_header = await client.post(url, json=body)
    assert no_header.status_code == 403 and "X-Requested-With" in no_header.json()["error"]
    foreign = await client.post(
        url, json=body, headers={**ACTION, "origin": "https://evil.example"}
    )
    assert foreign.status_code == 403 and "Origin" in foreign.json()["error"]
    null = await client.post(url, json=body, headers={**ACTION, "origin": "null"})
    assert null.status_code == 403
    cross = await client.post(url, json=body, headers={**ACTION, "sec-fetch-site": "cross-site"})
    assert cross.status_code == 403
    same = {**ACTION, "origin": "http://admin.test", "sec-fetch-site": "same-origin"}
    assert (await client.post(url, json=body, headers=same)).status_code == 200
    form = await client.post(
        url,
        content=b"state=Queued",
        headers={**ACTION, "content-type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 415
    for path in ("/api/jobs/1/cancel", "/api/jobs/cancel", "/api/jobs/requeue"):
        get = await client.get(path)  # (not a job "cancel" of GET /api/jobs/{id})
        assert (get.status_code, get.headers.get("allow")) == (405, "POST"), path
    assert (await client.post("/api/overview", headers=ACTION)).status_code == 405
    # Nested past the parser's stack: a bad body, not a server error
    json_type = {**ACTION, "content-type": "application/json"}
    deep = await client.post(url, content=b"[" * 3000 + b"]" * 3000, headers=json_type)
    assert deep.status_code == 400 and "must be a JSON object" in deep.text


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/api/jobs/abc", {}, "job id must be a positive integer"),
        ("/api/jobs/0", {}, "job id must be a positive integer"),
        ("/api/jobs/-3", {}, "job id must be a positive integer"),
        ("/api/jobs/99999999999999999999", {}, "job id must be a positive integer"),
        ("/api/jobs/" + "9" * 5000, {}, "job id must be a positive integer"),
        ("/api/jobs/by-ref/a%00b", {}, "must not contain NUL"),
        ("/api/jobs", {"limit": "9" * 5000}, "limit must be an integer"),
        ("/api/jobs", {"to": "9999-12-31"}, "between the years 1 and 9999"),
        ("/api/jobs", {"from": "0001-01-01T00:00:00+01:00"}, "between the years 1 and 9999"),
        ("/api/jobs", {"q": "a\x00"}, "q must not contain NUL"),
        ("/api/jobs/1/live", {"log_offset": "x"}, "log_offset must be an integer"),
        ("/api/jobs/1/live", {"log_offset": "-1"}, "log_offset must be between"),
        ("/api/jobs", {"from": "yesterday"}, "from must be an ISO 8601 date"),
        ("/api/jobs", {"to": "2026-13-45"}, "to must be an ISO 8601 date"),
        ("/api/jobs", {"from": "2026-02-02", "to": "2026-01-01"}, "from must be before to"),
        ("/api/jobs", {"month": "2026-13"}, "month must look like"),
        ("/api/jobs", {"month": "nov"}, "month must look like"),
        ("/api/jobs", {"month": "\uff12\uff10\uff12\uff16-\uff11\uff11"}, "month must look like"),
        ("/api/jobs", {"state": "Sleeping"}, "state must be one of"),
        ("/api/jobs", {"view": "archive"}, "view must be one of"),
        ("/api/jobs", {"request_type": "RPC"}, "request_type must be CMD or API"),
        ("/api/jobs", {"limit": "0"}, "limit must be between 1 and 500"),
        ("/api/jobs", {"limit": "many"}, "limit must be an integer"),
        ("/api/jobs", {"colour": "red"}, "unknown parameter 'colour'"),
        ("/api/jobs", {"tag": "x" * 501}, "tag is longer than 500"),
        ("/api/overview", {"x": "1"}, "unknown parameter 'x'"),
    ],
)
async def test_malformed_reads_get_400(
    admin: Admin, path: str, params: dict[str, str], message: str
) -> None:
    error = await admin.get(path, 400, **params)
    assert message in error["error"] and error["status"] == 400


async def test_malformed_actions_get_400(admin: Admin) -> None:
    cases: list[tuple[str, Any, str]] = [
        ("/api/jobs/cancel", {}, "give ids, or a state"),
        ("/api/jobs/cancel", {"ids": []}, "non-empty list"),
        ("/api/jobs/cancel", {"ids": "1,2"}, "non-empty list"),
        ("/api/jobs/cancel", {"ids": [1, "2"]}, "positive integers"),
        ("/api/jobs/cancel", {"ids": [True]}, "positive integers"),
        ("/api/jobs/cancel", {"ids": [1], "worker": "w"}, "either ids"),
        ("/api/jobs/cancel", {"state": "Completed"}, "state must be one of Queued"),
        ("/api/jobs/cancel", {"worker": ""}, "worker must be a non-empty string"),
        ("/api/jobs/cancel", {"worker": "w\x00"}, "worker must not contain NUL"),
        ("/api/jobs/cancel", {"everything": True}, "unknown field 'everything'"),
        ("/api/jobs/requeue", {}, "give the ids"),
        ("/api/jobs/requeue", {"ids": list(range(1, 1002))}, "at most 1000"),
        ("/api/jobs/x/requeue", {}, "job id must be a positive integer"),
        ("/api/jobs/1/cancel", {"force": True}, "unknown field 'force'"),
    ]
    for path, body, message in cases:
        error = await admin.post(path, body, status=400)
        assert message in error["error"], (path, body)
    response = await admin.client.post(
        "/api/jobs/cancel",
        content=b"{not json",
        headers={**ACTION, "content-type": "application/json"},
    )
    assert response.status_code == 400 and "JSON object" in response.json()["error"]
    surrogate = await admin.client.post(
        "/api/jobs/cancel",
        content=b'{"worker": "\\ud800"}',  # JSON can escape a lone surrogate
        headers={**ACTION, "content-type": "application/json"},
    )
    assert surrogate.status_code == 400
    assert "worker is not valid Unicode" in surrogate.json()["error"]
    huge = await admin.client.post(
        "/api/jobs/cancel",
        content=b" " * 70_000,
        headers={**ACTION, "content-type": "application/json"},
    )
    assert huge.status_code == 413
    assert (await admin.get("/api/nowhere", 404))["error"] == "no such admin route: /api/nowhere"


async def test_pages_static_files_and_headers(admin: Admin) -> None:
    page = await admin.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and "static/app.js" in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    script = await admin.client.get("/static/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in script.text  # job data is always set as text
    again = await admin.client.get(
        "/static/app.js", headers={"if-none-match": script.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""
    assert (await admin.client.get("/static/app.css")).status_code == 200
    assert (await admin.client.get("/static/nope.js")).status_code == 404
    head = await admin.client.head("/")
    assert head.status_code == 200 and head.content == b""
    api = await admin.client.get("/api/overview")
    assert (
        api.headers["cache-control"] == "no-store"
        and api.headers["x-content-type-options"] == "nosniff"
    )


# -- mounting, lifespan and the standalone server (no database differences) -------------------


@pytest.mark.dialects("sqlite")
async def test_mount_serves_admin_under_a_prefix(admin: Admin) -> None:
    calls: list[str] = []

    async def host_app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"host"})

    app = mount(host_app, "/admin/jobs", admin.app)
    async with client_for(app, authorization=f"Bearer {TOKEN}") as client:
        assert (await client.get("/other")).text == "host"
        redirect = await client.get("/admin/jobs")
        assert redirect.status_code == 308 and redirect.headers["location"] == "/admin/jobs/"
        assert "app.js" in (await client.get("/admin/jobs/")).text
        assert (await client.get("/admin/jobs/api/overview")).json()["counts"]["Queued"] == 0
        assert (await client.get("/admin/jobsx")).text == "host"
    assert calls == ["/other", "/admin/jobsx"]


def aiohttp_admin(make_jobs: Factory) -> tuple[BackgroundJobs, Any, dict[str, str]]:
    """Jobs, an aiohttp application serving their admin under /admin/jobs/ with basic auth,
    and the header that passes it."""
    from aiohttp import web

    from asyncjobs.web import aiohttp_app

    jobs = admin_jobs(make_jobs())
    app = web.Application()
    app.add_subapp("/admin/jobs/", aiohttp_app(jobs, basic_auth="ops:pw"))
    return jobs, app, {"Authorization": "Basic " + base64.b64encode(b"ops:pw").decode()}


@pytest.mark.dialects("sqlite")
async def test_aiohttp_sub_application(make_jobs: Factory) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    jobs, app, auth = aiohttp_admin(make_jobs)
    async with jobs, TestClient(TestServer(app)) as client:
        ref = await jobs.enqueue_command(AddCommand, Add(1, 2))
        await wait_state(jobs, ref.id, "Completed")
        assert (await client.get("/admin/jobs/api/overview")).status == 401
        page = await client.get("/admin/jobs/", headers=auth)
        assert page.status == 200 and "static/app.js" in await page.text()
        bare = await client.get("/admin/jobs", headers=auth, allow_redirects=False)
        assert bare.status == 308 and bare.headers["location"] == "/admin/jobs/"
        detail = await (await client.get(f"/admin/jobs/api/jobs/{ref.id}", headers=auth)).json()
        assert detail["state"] == "Completed"
        bad = await client.get("/admin/jobs/api/jobs", params={"month": "x"}, headers=auth)
        assert bad.status == 400
        cancel = await client.post("/admin/jobs/api/jobs/cancel", json={"state": "Queued"},
                                   headers={**auth, **ACTION})  # fmt: skip
        assert cancel.status == 200 and (await cancel.json()) == {"cancelled": 0}
        cross = await client.post(
            "/admin/jobs/api/jobs/cancel", json={"state": "Queued"}, headers=auth
        )
        assert cross.status == 403


@pytest.mark.dialects("sqlite")
async def test_aiohttp_reads_a_body_that_arrives_in_parts(make_jobs: Factory) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    jobs, app, auth = aiohttp_admin(make_jobs)
    body = json.dumps({"state": "Queued"}).encode()

    async def in_parts() -> AsyncIterator[bytes]:
        yield body[:5]
        await anyio.sleep(0.1)  # the handler starts reading before the rest arrives
        yield body[5:]

    async with jobs, TestClient(TestServer(app)) as client:
        cancel = await client.post(
            "/admin/jobs/api/jobs/cancel",
            data=in_parts(),
            headers={**auth, **ACTION, "Content-Type": "application/json"},
        )
        assert cancel.status == 200, await cancel.text()
        assert (await cancel.json()) == {"cancelled": 0}


@pytest.mark.dialects("sqlite")
async def test_lifespan_can_run_the_jobs(make_jobs: Factory) -> None:
    jobs = admin_jobs(make_jobs())
    app = create_app(jobs, allow_unauthenticated=True, manage_jobs=True)
    sent: list[str] = []
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    started = anyio.Event()
    stop = anyio.Event()

    async def receive() -> Any:
        if len(sent) == 1:
            started.set()
            await stop.wait()
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message["type"])

    async with anyio.create_task_group() as tg:
        tg.start_soon(app, {"type": "lifespan"}, receive, send)
        await started.wait()
        ref = await jobs.enqueue_command(AddCommand, Add(1, 1))  # the runtime is up
        with anyio.fail_after(10):
            result = await jobs.wait_for_job(ref.id)  # ... and runs jobs
        assert result.completed is not None and result.completed.response_body == '{"total":2}'
        stop.set()
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


@pytest.mark.dialects("sqlite")
async def test_standalone_server_needs_a_credential_off_loopback(make_jobs: Factory) -> None:
    jobs = make_jobs()
    with pytest.raises(ConfigurationError, match=r"refusing to serve the jobs admin on 0\.0\.0\.0"):
        build_admin(jobs, "0.0.0.0")
    app, note = build_admin(jobs, "0.0.0.0", bearer_token="t")
    assert "bearer token" in note
    app, note = build_admin(jobs, "127.0.0.1")
    assert "loopback only" in note and app.guard.allowed_hosts is not None


@pytest.mark.dialects("sqlite")
@pytest.mark.parametrize(("host", "url_host"), [(None, "127.0.0.1"), ("[::1]", "[::1]")])
async def test_admin_cli_serves_on_loopback(
    dsn: str, tmp_path: Path, host: str | None, url_host: str
) -> None:
    (tmp_path / "cli_app.py").write_text(
        f"from asyncjobs import BackgroundJobs\njobs = BackgroundJobs({dsn!r})\n"
    )
    command = [sys.executable, "-m", "asyncjobs", "admin", "--app", "cli_app:jobs"]
    refused = await anyio.run_process([*command, "--host", "0.0.0.0"], cwd=tmp_path, check=False)
    assert refused.returncode == 2 and b"without a credential" in refused.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serving = [*command, "--port", str(port), *(["--host", host] if host else [])]
    async with await anyio.open_process(serving, cwd=tmp_path) as process:
        async with httpx.AsyncClient(base_url=f"http://{url_host}:{port}") as client:
            with anyio.fail_after(20):
                while True:
                    try:
                        response = await client.get("/api/overview")
                        break
                    except httpx.ConnectError:
                        await anyio.sleep(0.1)
            assert response.status_code == 200 and response.json()["counts"]["Queued"] == 0
            foreign = await client.get("/api/overview", headers={"host": "attacker.example"})
            assert foreign.status_code == 403
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(20):
            assert await process.wait() == 0
        assert process.stderr is not None
        stderr = (await process.stderr.receive()).decode()
    assert f"http://{url_host}:{port}/" in stderr and "loopback only" in stderr


@pytest.mark.dialects("sqlite")
async def test_api_says_when_the_runtime_is_not_running(make_jobs: Factory) -> None:
    app = create_app(make_jobs(), allow_unauthenticated=True)
    async with client_for(app) as client:
        assert (await client.get("/")).status_code == 200
        response = await client.get("/api/overview")
    assert response.status_code == 503 and "async with jobs" in response.json()["error"]


@pytest.mark.dialects("postgres")
async def test_archive_lists_read_only_the_months_partition(admin: Admin) -> None:
    import asyncpg

    from asyncjobs._sql import convert_params, load_queries
    from asyncjobs.web._admin_store import JobFilter

    month = datetime.now(UTC).strftime("%Y%m")
    params = JobFilter(month=month, text="x").params()
    server, _, query = admin.dsn.partition("?schema=")
    conn = await asyncpg.connect(server, server_settings={"search_path": query})
    try:
        for name, table in (
            ("admin_list_failed", "failed_job"),
            ("admin_list_completed", "completed_job"),
        ):
            sql, order = convert_params(load_queries("postgres")[name], "numeric")
            plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *[params[p] for p in order])
            scanned = set(_relations(json.loads(plan)))
            assert scanned == {f"{table}_{month}"}, scanned
    finally:
        await conn.close()


def _relations(node: Any) -> list[str]:
    if isinstance(node, list):
        return [name for item in node for name in _relations(item)]
    if isinstance(node, dict):
        found = [node["Relation Name"]] if "Relation Name" in node else []
        return found + [name for value in node.values() for name in _relations(value)]
    return []
