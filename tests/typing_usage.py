"""User code as the docs show it; `mypy --strict` checks that it type-checks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from asyncjobs import (
    AsyncCommand,
    AsyncCommandWithResult,
    BackgroundJob,
    BackgroundJobs,
    JobOptions,
    JobRef,
    JobResult,
    SyncCommandWithResult,
    current_job,
    job_logger,
    update_status,
)


@dataclass
class SendEmail:
    to: str


@dataclass
class Summary:
    words: int


class Mailer:
    async def send(self, to: str) -> None: ...


class SendEmailCommand(AsyncCommand[SendEmail]):
    worker = "smtp"

    def __init__(self, mailer: Mailer) -> None:
        self.mailer = mailer

    async def run(self, request: SendEmail) -> None:
        job: BackgroundJob = current_job()
        job_logger().info("sending to %s (attempt %d)", request.to, job.attempts)
        update_status(progress=0.5, status="sending")
        await self.mailer.send(request.to)


class Summarise(AsyncCommandWithResult[str, Summary]):
    async def run(self, request: str) -> Summary:
        return Summary(len(request.split()))


class CountWords(SyncCommandWithResult[str, int]):
    def run(self, request: str) -> int:
        return len(request.split())


jobs = BackgroundJobs(
    "sqlite:///jobs.db",
    commands=[SendEmailCommand, Summarise, CountWords],
    services={Mailer: Mailer()},
    default_retry_limit=2,
    default_timeout=timedelta(minutes=10),
)


async def usage() -> None:
    async with jobs:
        ref: JobRef = await jobs.enqueue_command(
            SendEmailCommand, SendEmail(to="a@b.c"), JobOptions(worker="smtp")
        )
        result: JobResult | None = await jobs.get_job(ref.id)
        final: JobResult = await jobs.wait_for_job(ref.id)
        print(result, final.state)
        await jobs.cancel_job(ref.id)
        words = await jobs.run_command_async(Summarise, "a b c")
        print(words)
