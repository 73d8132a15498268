"""A short tour: real jobs on the embedded SQLite default (``python -m asyncjobs demo``)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio

from . import (
    AsyncCommand,
    AsyncCommandWithResult,
    BackgroundJobs,
    JobOptions,
    current_job,
    job_logger,
)
from .dialects._dsn import redact_dsn
from .models import JobResult


@dataclass
class Order:
    order_id: int
    amount_cents: int


@dataclass
class Receipt:
    order_id: int
    text: str


class ChargeCard(AsyncCommandWithResult[Order, Receipt]):
    """Succeeds at once."""

    async def run(self, request: Order) -> Receipt:
        job_logger().info("charging order %s", request.order_id)
        return Receipt(request.order_id, f"charged {request.amount_cents / 100:.2f}")


class FlakyWebhook(AsyncCommand[Order]):
    """Fails on its first attempt, as a remote service sometimes does, then succeeds."""

    async def run(self, request: Order) -> None:
        if current_job().attempts == 1:
            raise ConnectionError("webhook endpoint unavailable")


class SendReceipt(AsyncCommand[Order]):
    """Runs after ChargeCard (depends_on) and reads its parent's result."""

    async def run(self, request: Order) -> None:
        parent = current_job().parent_job
        job_logger().info("receipt for %s", parent.response_body if parent else "?")


class PrintLabel(AsyncCommand[Order]):
    """Jobs of the one "printer" worker run one at a time, in order."""

    worker = "printer"

    async def run(self, request: Order) -> None:
        await anyio.sleep(0.2)


def describe(name: str, result: JobResult) -> str:
    job = result.job
    assert job is not None
    line = f"{name:<34} {result.state:<10} attempts={job.attempts}"
    if job.started_date is not None:
        line += f" started=+{(job.started_date - job.created_date).total_seconds():.2f}s"
    if job.response_body:
        line += f" result={job.response_body}"
    if job.error is not None and result.state != "Completed":
        line += f" error={job.error.message!r}"
    elif job.error is not None:
        line += f" (earlier error: {job.error.message!r})"
    return line


async def run_demo(dsn: str | None = None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        dsn = dsn or f"sqlite:///{Path(folder) / 'demo.db'}"
        print(f"asyncjobs demo on {redact_dsn(dsn)}\n")
        jobs = BackgroundJobs(
            dsn,
            commands=[ChargeCard, FlakyWebhook, SendReceipt, PrintLabel],
            retry_delay=timedelta(milliseconds=200),
            poll_interval=timedelta(milliseconds=100),
        )
        async with jobs:
            charge = await jobs.enqueue_command(ChargeCard, Order(1, 4999))
            flaky = await jobs.enqueue_command(FlakyWebhook, Order(2, 100))
            delayed = await jobs.enqueue_command(
                ChargeCard,
                Order(3, 1500),
                JobOptions(run_after=datetime.now(UTC) + timedelta(seconds=1)),
            )
            receipt = await jobs.enqueue_command(
                SendReceipt, Order(1, 4999), JobOptions(depends_on=charge.id)
            )
            label_a = await jobs.enqueue_command(PrintLabel, Order(4, 0))
            label_b = await jobs.enqueue_command(PrintLabel, Order(5, 0))
            named = {
                "charge card (succeeds)": charge,
                "webhook (fails once, retried)": flaky,
                "charge card (run_after +1s)": delayed,
                "send receipt (depends_on charge)": receipt,
                "print label A (worker=printer)": label_a,
                "print label B (worker=printer)": label_b,
            }
            results = {name: await jobs.wait_for_job(ref.id) for name, ref in named.items()}
        for name, result in results.items():
            print(describe(name, result))
        a = results["print label A (worker=printer)"].job
        b = results["print label B (worker=printer)"].job
        if a and b and a.completed_date and b.started_date:
            in_order = b.started_date >= a.completed_date
            print(f"\nprinter worker ran A then B without overlap: {in_order}")
        logs = results["send receipt (depends_on charge)"].job
        print(f"receipt job log: {(logs.logs or '').strip() if logs else ''}")
        print("\ndone.")


def main(dsn: str | None = None) -> None:
    anyio.run(run_demo, dsn)
