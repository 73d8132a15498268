"""The job every system runs: a no-op that only reports when it started.

A job carries ``Tick(n, t)``: its number and, for latency runs, the ``time.monotonic()`` at
which the producer called enqueue (CLOCK_MONOTONIC is one clock for every process on the
machine, so a worker process can subtract it). Whoever hosts the workers sets :data:`hooks`
to hear about job starts: the worker process prints them, the harness records them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from asyncjobs import AsyncCommand


@dataclass(slots=True)
class Tick:
    n: int
    t: float = 0.0


class Hooks:
    """Where job starts are reported; ``None`` callbacks cost one attribute read."""

    __slots__ = ("on_first", "on_start", "started")

    def __init__(self) -> None:
        #: called once, with the monotonic time of the first job start in this process
        self.on_first: Callable[[float], None] | None = None
        #: called for every job with its tick and the monotonic time it started
        self.on_start: Callable[[int, float, float], None] | None = None
        self.started = False

    def start(self, n: int, t: float) -> None:
        if not self.started:
            self.started = True
            if self.on_first is not None:
                self.on_first(time.monotonic())
        if self.on_start is not None:
            self.on_start(n, t, time.monotonic())

    def reset(self) -> None:
        self.on_first = self.on_start = None
        self.started = False


hooks = Hooks()


class NoopCommand(AsyncCommand[Tick]):
    """asyncjobs' job: do nothing but report the start."""

    async def run(self, request: Tick) -> None:
        hooks.start(request.n, request.t)


#: the named worker of the strictly serial drain
SERIAL_WORKER = "serial"
#: pgqueuer entrypoints and procrastinate task names
ENTRYPOINT = "noop"
SERIAL_ENTRYPOINT = "noop_serial"


def encode_tick(n: int, t: float = 0.0) -> bytes:
    """pgqueuer's payload is bytes: ``n,t``."""
    return f"{n},{t!r}".encode()


def decode_tick(payload: bytes | None) -> tuple[int, float]:
    n, _, t = (payload or b"0,0.0").decode().partition(",")
    return int(n), float(t or 0.0)
