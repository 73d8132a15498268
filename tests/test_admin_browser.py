"""The admin UI in a real browser: Debian's Chromium, headless, driven by Playwright (never a
downloaded browser). The app runs on SQLite behind basic auth in a uvicorn server on a background
event loop; screenshots of every page go to tests/artifacts/."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright import sync_api as playwright_api

from asyncjobs import BackgroundJobs, JobOptions
from asyncjobs.web import create_app
from tests.admin_support import (
    FAILING,
    XSS,
    ProgressCommand,
    Steps,
    Switch,
    SwitchCommand,
    admin_jobs,
    insert_past_summaries,
    insert_task,
    seed_history,
    wait_state,
)
from tests.conftest import FAST

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(__file__).parent / "artifacts"
USER, PASSWORD = "admin", "browser-test"
PAST_JOBS = 1200


def _install_chromium() -> None:
    """apt-get install chromium (Debian's package), as root or through passwordless sudo."""
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if prefix and shutil.which("sudo") is None:
        pytest.fail(f"{CHROMIUM} is missing and this user cannot install it (no root, no sudo)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, "apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    result = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:  # the package lists may be missing or stale
        subprocess.run([*prefix, "apt-get", "update"], capture_output=True, env=env, check=False)
        result = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0 or not CHROMIUM.exists():
        pytest.fail(
            f"could not install Debian's chromium with {' '.join(install)!r}:\n"
            f"{result.stderr[-2000:]}"
        )


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        _install_chromium()
    return CHROMIUM


@dataclass
class Server:
    url: str
    jobs: BackgroundJobs
    dsn: str
    call: Callable[..., Any]
    #: the made-up history of the last day, by final state
    past: Counter[str]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from anyio.from_thread import start_blocking_portal

    dsn = f"sqlite:///{tmp_path_factory.mktemp('admin') / 'jobs.db'}"
    jobs = admin_jobs(BackgroundJobs(dsn, **FAST))
    app = create_app(jobs, basic_auth=(USER, PASSWORD))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    with start_blocking_portal("asyncio") as portal, portal.wrap_async_context_manager(jobs):
        web = uvicorn.Server(
            uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
        )
        serving = portal.start_task_soon(web.serve, [sock])
        portal.call(_wait_started, web)
        past = insert_past_summaries(dsn, PAST_JOBS)
        try:

            def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
                return portal.call(functools.partial(fn, *args, **kwargs))

            yield Server(f"http://127.0.0.1:{port}/", jobs, dsn, call, past)
        finally:
            web.should_exit = True
            serving.result(timeout=10)


async def _wait_started(web: Any) -> None:
    import anyio

    with anyio.fail_after(10):
        while not web.started:
            await anyio.sleep(0.02)


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    context = browser.new_context(
        viewport={"width": 1440, "height": 900},
        http_credentials={"username": USER, "password": PASSWORD},
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(10_000)
    yield page
    context.close()
    assert errors == [], errors


def shot(page: Any, name: str, *, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def test_dashboard_loads_with_data(page: Any, server: Server) -> None:
    ids = server.call(seed_history, server.jobs)
    server.call(insert_task, server.dsn, "Nightly report", "cron:0 2 * * *|Europe/Berlin",
                last_job_id=ids["add1"])  # fmt: skip
    server.call(insert_task, server.dsn, "Check URLs", "interval:90.0")
    server.call(
        server.jobs.enqueue_command, ProgressCommand, Steps(60, 0.5), JobOptions(tag="import")
    )
    page.goto(server.url)
    completed = page.locator("[data-stat=completed] .value")
    playwright_api.expect(completed).to_have_text(f"{6 + server.past['Completed']:,}")
    failed = page.locator("[data-stat=failed] .value")
    playwright_api.expect(failed).to_have_text(f"{2 + server.past['Failed']:,}")
    playwright_api.expect(page.locator("svg.chart rect.bar-completed").first).to_be_visible()
    playwright_api.expect(page.get_by_role("cell", name="AddCommand")).to_be_visible()
    playwright_api.expect(page.get_by_role("cell", name="pinger")).to_be_visible()
    playwright_api.expect(page.locator("#live")).to_have_text("Live")
    page.wait_for_timeout(600)  # let the running job show some progress
    shot(page, "dashboard", full_page=True)
    page.goto(server.url + "#/scheduled")
    playwright_api.expect(page.get_by_text("Nightly report")).to_be_visible()
    playwright_api.expect(page.get_by_text("0 2 * * * (Europe/Berlin)")).to_be_visible()
    playwright_api.expect(page.get_by_text("every 1m 30s")).to_be_visible()
    shot(page, "scheduled")


def test_running_jobs_progress_bar_moves(page: Any, server: Server) -> None:
    # long enough to be seen moving on a slow machine; cancelled at the end
    ref = server.call(server.jobs.enqueue_command, ProgressCommand, Steps(100, 0.3))
    server.call(wait_state, server.jobs, ref.id, "Started")
    page.goto(server.url + "#/queue")
    bar = page.locator(f'tr[data-job="{ref.id}"] [role=progressbar]')
    playwright_api.expect(bar).to_be_visible()
    page.wait_for_function(
        f"() => Number(document.querySelector('tr[data-job=\"{ref.id}\"] [role=progressbar]')"
        ".getAttribute('aria-valuenow')) > 0"
    )
    first = float(bar.get_attribute("aria-valuenow") or 0)
    page.wait_for_function(
        f"() => Number(document.querySelector('tr[data-job=\"{ref.id}\"] [role=progressbar]')"
        f".getAttribute('aria-valuenow')) > {first}"
    )
    status = page.locator(f'tr[data-job="{ref.id}"] .status-line')
    playwright_api.expect(status).to_contain_text("step ")
    shot(page, "queue")
    server.call(server.jobs.cancel_job, ref.id)


def test_cancel_a_running_job_from_its_panel(page: Any, server: Server) -> None:
    ref = server.call(
        server.jobs.enqueue_command, ProgressCommand, Steps(200, 0.25), JobOptions(tag="import")
    )
    server.call(wait_state, server.jobs, ref.id, "Started")
    page.goto(server.url + f"#/queue?job={ref.id}")
    panel = page.locator("#panel")
    playwright_api.expect(panel.locator(".panel-title .badge")).to_have_text("Started")
    logs = panel.locator(f'pre[data-logs="{ref.id}"]')
    playwright_api.expect(logs).to_contain_text("finished step 3 of 200")  # logs update live
    shot(page, "job")
    panel.locator("[data-action=cancel]").click()
    page.locator(".modal .btn.danger").click()
    playwright_api.expect(panel.locator(".panel-title .badge")).to_have_text("Cancelled")
    playwright_api.expect(panel.locator(".error-box .message")).to_contain_text("cancelled")
    assert server.call(wait_state, server.jobs, ref.id, "Cancelled") == "Cancelled"
    shot(page, "job-cancelled")


def test_requeue_a_failed_job_from_the_failed_tab(page: Any, server: Server) -> None:
    FAILING.add("browser")
    try:
        ref = server.call(
            server.jobs.enqueue_command, SwitchCommand, Switch("browser"), JobOptions(retry_limit=0)
        )
        server.call(wait_state, server.jobs, ref.id, "Failed")
    finally:
        FAILING.discard("browser")
    page.goto(server.url + "#/history/failed")
    row = page.locator(f'tr[data-job="{ref.id}"]')
    playwright_api.expect(row).to_contain_text("switch browser is off")
    shot(page, "history-failed")
    row.locator(f'button[data-requeue="{ref.id}"]').click()
    assert server.call(wait_state, server.jobs, ref.id, "Completed") == "Completed"
    playwright_api.expect(row).to_have_count(0)  # it left the failed archive
    page.goto(server.url + f"#/history/completed?job={ref.id}")
    playwright_api.expect(page.locator("#panel .panel-title .badge")).to_have_text("Completed")
    playwright_api.expect(page.locator(f'#main tr[data-job="{ref.id}"]')).to_be_visible()
    shot(page, "history-completed")


def test_job_values_render_as_text(page: Any, server: Server) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    result = server.call(server.jobs.get_job_by_ref_id, f"r{XSS}")
    assert result is not None
    page.goto(server.url + "#/history")
    tag = page.locator(".tag", has_text=XSS)
    playwright_api.expect(tag).to_have_text(XSS)
    shot(page, "history")
    page.goto(server.url + f"#/history?job={result.summary.id}")
    panel = page.locator("#panel")
    playwright_api.expect(panel.locator(".error-box .message")).to_have_text(f"error {XSS}")
    playwright_api.expect(panel.get_by_text(f"r{XSS}").first).to_be_visible()
    assert page.evaluate("document.querySelectorAll('script').length") == 1  # only app.js
    assert dialogs == []
    shot(page, "job-failed")
