"""The threads sync commands run in: daemon threads, so that a command that never returns
cannot keep the process from exiting (anyio's worker threads are joined at exit), and a
shutdown can stop waiting for it (see BackgroundJobs._abandon_threads)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

from .context import current_context

# Private to anyio: what makes anyio.from_thread work in its own worker threads. (Should a
# later anyio move it, from_thread in a sync command needs token=, and nothing else changes.)
_claim_worker_thread: Callable[[Any, object], AbstractContextManager[Any]] | None
try:
    from anyio._core._eventloop import claim_worker_thread as _claim_worker_thread
except ImportError:  # pragma: no cover
    _claim_worker_thread = None

#: an idle thread ends after this long without work
IDLE_SECONDS = 10.0


class _Call:
    """One run of a sync command: what it returned or raised, and when it ended."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class SyncThreads:
    """A bounded pool of daemon threads, kept for reuse (starting a thread per job cost a
    fifth of a no-op sync job's throughput)."""

    def __init__(self, max_threads: int) -> None:
        self._limiter = anyio.CapacityLimiter(max_threads)
        #: runs to make, and a None for each idle thread that is to end (see close)
        self._work: queue.SimpleQueue[tuple[Callable[[], None], Callable[[], object]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        #: threads waiting for work that no queued item is promised to
        self._idle = 0
        #: the event loop the jobs run in (known at the first run)
        self._token: anyio.lowlevel.EventLoopToken | None = None

    async def run(self, function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """Run ``function(*args)`` in a thread, with the job's context (current_job() and
        friends). A thread cannot be interrupted: the job's timeout or cancel reaches it as a
        cancel request, and the job waits for it, holding its slot. Only a shutdown stops
        waiting, by cancelling the job context's ``thread_wait``."""
        job_context = current_context()
        context = contextvars.copy_context()
        if self._token is None:
            self._token = anyio.lowlevel.current_token()
        call = _Call()
        notify = _notifier(self._token, call.done.set)

        def work() -> None:
            try:
                call.result = context.run(function, *args)
            except BaseException as exc:  # the job's outcome, raised again in the event loop
                call.error = exc

        async def raise_flag_when_cancelled() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                if not call.done.is_set():
                    job_context.cancel_event.set()

        async with self._limiter:
            self._submit(work, notify)
            async with anyio.create_task_group() as tg:
                tg.start_soon(raise_flag_when_cancelled)
                # Shielded: a cancel of the job's scope only raises the flag (the task above).
                with anyio.CancelScope(shield=True) as job_context.thread_wait:
                    await call.done.wait()
                job_context.thread_wait = None
                tg.cancel_scope.cancel()
        # A run the job's scope cancelled meanwhile ends as cancelled, even though the command
        # returned (it saw the request: its work may be undone); so does an abandoned one.
        await anyio.lowlevel.checkpoint_if_cancelled()
        if not call.done.is_set():
            raise RuntimeError("abandoned a sync command that did not return")
        if call.error is not None:
            raise call.error
        return call.result

    def _submit(self, work: Callable[[], None], notify: Callable[[], object]) -> None:
        self._work.put((work, notify))
        with self._lock:
            if self._idle:
                self._idle -= 1  # that thread is promised this item
                return
        threading.Thread(target=self._serve, name="asyncjobs sync command", daemon=True).start()

    def close(self) -> None:
        """The runtime stops: idle threads end now, not after IDLE_SECONDS (one still running
        a command a shutdown left to it ends that long after it returns)."""
        with self._lock:
            idle, self._idle = self._idle, 0  # each is promised an end
        for _ in range(idle):
            self._work.put(None)

    def _serve(self) -> None:
        # A sync command may call async code with anyio.from_thread, as in anyio's threads.
        if _claim_worker_thread is not None and self._token is not None:
            with _claim_worker_thread(self._token.backend_class, self._token.native_token):
                self._serve_work()
        else:  # pragma: no cover
            self._serve_work()

    def _serve_work(self) -> None:
        while True:
            try:
                item = self._work.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle:  # no item is promised to this thread: it may end
                        self._idle -= 1
                        return
                continue  # an item was promised to an idle thread just now: take it
            if item is None:
                return
            work, notify = item
            work()
            # Idle before the job hears it ended: its next call finds this thread free.
            with self._lock:
                self._idle += 1
            # RuntimeError: the event loop has ended (the call was abandoned; nobody waits)
            with contextlib.suppress(RuntimeError):
                notify()


def _notifier(
    token: anyio.lowlevel.EventLoopToken, callback: Callable[[], None]
) -> Callable[[], object]:
    """What a thread calls to have ``callback`` run in the event loop of ``token``. On asyncio
    it does not wait for the loop to run it (anyio's from_thread waits: a round trip that cost
    a third of a no-op sync job's throughput)."""
    if isinstance(token.native_token, asyncio.AbstractEventLoop):
        return partial(token.native_token.call_soon_threadsafe, callback)
    return partial(anyio.from_thread.run_sync, callback, token=token)
