"""Commands used by the tests, importable by child processes (``tests.worker``)."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field

import anyio

from asyncjobs import (
    AsyncCommand,
    AsyncCommandWithResult,
    AsyncNoRequestCommand,
    AsyncNoRequestCommandWithResult,
    SyncCommand,
    SyncCommandWithResult,
    SyncNoRequestCommand,
    SyncNoRequestCommandWithResult,
    cancellation_requested,
    current_job,
)

#: what commands did in this process: (event, label, monotonic time)
EVENTS: list[tuple[str, str, float]] = []


@dataclass
class Add:
    a: int
    b: int


@dataclass
class Sum:
    total: int


@dataclass
class Nested:
    name: str
    tags: list[str] = field(default_factory=list)
    inner: Add | None = None


@dataclass
class Sleep:
    seconds: float
    label: str = ""
    log_file: str | None = None  # cross-process tests append "start/end label time" here


@dataclass
class Fail:
    message: str = "boom"
    succeed_on_attempt: int | None = None  # fail until this attempt, then succeed


class AddCommand(AsyncCommandWithResult[Add, Sum]):
    async def run(self, request: Add) -> Sum:
        return Sum(request.a + request.b)


class NestedCommand(AsyncCommandWithResult[Nested, Nested]):
    async def run(self, request: Nested) -> Nested:
        return request


def _record(event: str, request: Sleep) -> None:
    EVENTS.append((event, request.label, time.monotonic()))
    if request.log_file:
        line = f"{event} {request.label} {time.time():.6f} {os.getpid()} {current_job().id}\n"
        with open(request.log_file, "a", encoding="utf-8") as out:
            out.write(line)


class SleepCommand(AsyncCommand[Sleep]):
    async def run(self, request: Sleep) -> None:
        _record("start", request)
        await anyio.sleep(request.seconds)
        _record("end", request)


class SerialSleepCommand(SleepCommand):
    worker = "serial"


class FailCommand(AsyncCommand[Fail]):
    async def run(self, request: Fail) -> None:
        if request.succeed_on_attempt is not None and (
            current_job().attempts >= request.succeed_on_attempt
        ):
            return
        raise RuntimeError(request.message)


class SyncAddCommand(SyncCommandWithResult[Add, Sum]):
    def run(self, request: Add) -> Sum:
        return Sum(request.a + request.b)


class SyncRecordCommand(SyncCommand[Add]):
    def run(self, request: Add) -> None:
        EVENTS.append(("sync", str(request.a + request.b), time.monotonic()))


class PingCommand(AsyncNoRequestCommand):
    async def run(self) -> None:
        EVENTS.append(("ping", "", time.monotonic()))


class AnswerCommand(AsyncNoRequestCommandWithResult[int]):
    async def run(self) -> int:
        return 42


class SyncPingCommand(SyncNoRequestCommand):
    def run(self) -> None:
        EVENTS.append(("sync-ping", "", time.monotonic()))


class SyncAnswerCommand(SyncNoRequestCommandWithResult[str]):
    def run(self) -> str:
        return "forty-two"


ALL_COMMANDS = [
    AddCommand, NestedCommand, SleepCommand, SerialSleepCommand, FailCommand, SyncAddCommand,
    SyncRecordCommand, PingCommand, AnswerCommand, SyncPingCommand, SyncAnswerCommand,
]  # fmt: skip


class FirstAttemptHangsCommand(AsyncCommand[Sleep]):
    """Sleeps on its first attempt (so a test can kill the process), returns on later ones."""

    async def run(self, request: Sleep) -> None:
        _record("start", request)
        if current_job().attempts == 1:
            await anyio.sleep(request.seconds)
        _record("end", request)


ALL_COMMANDS.append(FirstAttemptHangsCommand)


class EchoSleepCommand(AsyncCommandWithResult[Sleep, Sleep]):
    """Records its start and returns its request: a result for a callback."""

    async def run(self, request: Sleep) -> Sleep:
        _record("start", request)
        return request


class CallbackHangsFirstCommand(AsyncCommand[Sleep]):
    """A callback that hangs on the job's first attempt (so a test can stop the process while
    the job is Executed) and returns on later ones."""

    async def run(self, request: Sleep) -> None:
        _record("callback", request)
        if current_job().attempts == 1:
            await anyio.sleep(request.seconds)


class NoResultCallbackHangsFirstCommand(AsyncNoRequestCommand):
    """The same for a command that returns nothing (the callback takes no request)."""

    async def run(self) -> None:
        EVENTS.append(("callback", str(current_job().id), time.monotonic()))
        if current_job().attempts == 1:
            await anyio.sleep(60)


class BlocksItsLoopFirstCommand(AsyncCommand[Sleep]):
    """On its first attempt blocks the event loop for ``seconds`` (its process misses its
    lease), then sleeps as long again; later attempts return at once. Events are labelled with
    the attempt."""

    async def run(self, request: Sleep) -> None:
        attempt = current_job().attempts
        labelled = dataclasses.replace(request, label=f"{request.label}#{attempt}")
        _record("start", labelled)
        if attempt == 1:
            time.sleep(request.seconds)  # noqa: ASYNC251 - the point: a blocked event loop
            await anyio.sleep(request.seconds)
        _record("end", labelled)


ALL_COMMANDS += [
    EchoSleepCommand, CallbackHangsFirstCommand, NoResultCallbackHangsFirstCommand,
    BlocksItsLoopFirstCommand,
]  # fmt: skip


class SyncIgnoresCancelFirstCommand(SyncCommand[Sleep]):
    """A sync command that, on its first attempt, blocks for ``seconds`` and never looks at
    its cancel request (a blocking call with no timeout); later attempts return at once."""

    def run(self, request: Sleep) -> None:
        _record("start", request)
        if current_job().attempts == 1:
            time.sleep(request.seconds)
        _record("end", request)


class SyncStopsWhenAskedCommand(SyncCommand[Sleep]):
    """A sync command that works for ``seconds`` unless asked to stop, then returns."""

    def run(self, request: Sleep) -> None:
        _record("start", request)
        deadline = time.monotonic() + request.seconds
        while not cancellation_requested() and time.monotonic() < deadline:
            time.sleep(0.01)
        _record("end", request)


ALL_COMMANDS += [SyncIgnoresCancelFirstCommand, SyncStopsWhenAskedCommand]
