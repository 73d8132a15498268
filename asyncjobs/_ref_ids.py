"""Ref ids: 32 hex digits, like ``uuid4().hex``, laid out like a UUIDv7: the first 12 digits
are the creation time in milliseconds, the other 20 are 80 bits from the OS.

Time first, because ref ids are unique through a B-tree index: ids that grow with time are
added at its right edge, where the pages are already in memory, instead of at a random page
(PostgreSQL: 500 jobs' summaries in 0.5 ms less). 80 random bits keep them unguessable and
unique among the ids of one millisecond.

The random part comes from a buffer of OS randomness filled 256 ids at a time: one
``os.urandom`` system call per id cost as much as the rest of building a job in
``enqueue_many``. A lock keeps threads (e.g. event loops in two threads) from taking the same
slice, and a forked child starts with an empty buffer, so parent and child never hand out the
same id.
"""

from __future__ import annotations

import os
import threading
import time

_RANDOM_BYTES = 10
_IDS_PER_FILL = 256
_lock = threading.Lock()
_buffer = b""
_position = 0


def new_ref_id() -> str:
    global _buffer, _position
    with _lock:
        if _position >= len(_buffer):
            _buffer, _position = os.urandom(_RANDOM_BYTES * _IDS_PER_FILL), 0
        start = _position
        _position = start + _RANDOM_BYTES
        chunk = _buffer[start : start + _RANDOM_BYTES]
    return f"{time.time_ns() // 1_000_000:012x}{chunk.hex()}"


def _forget_buffer() -> None:
    global _buffer, _position, _lock
    _lock = threading.Lock()  # a lock held by another thread at the fork would stay held
    _buffer, _position = b"", 0


os.register_at_fork(after_in_child=_forget_buffer)
