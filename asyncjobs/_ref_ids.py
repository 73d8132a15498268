"""Random ref ids: 128 bits from the OS as 32 hex digits, like ``uuid4().hex``.

Drawn from a buffer of OS randomness filled 256 ids at a time: one ``os.urandom`` system call
per id cost as much as the rest of building a job in ``enqueue_many``. A lock keeps threads
(e.g. event loops in two threads) from taking the same slice, and a forked child starts with an
empty buffer, so parent and child never hand out the same id.
"""

from __future__ import annotations

import os
import threading

_IDS_PER_FILL = 256
_lock = threading.Lock()
_buffer = b""
_position = 0


def new_ref_id() -> str:
    global _buffer, _position
    with _lock:
        if _position >= len(_buffer):
            _buffer, _position = os.urandom(16 * _IDS_PER_FILL), 0
        start = _position
        _position = start + 16
        chunk = _buffer[start : start + 16]
    return chunk.hex()


def _forget_buffer() -> None:
    global _buffer, _position, _lock
    _lock = threading.Lock()  # a lock held by another thread at the fork would stay held
    _buffer, _position = b"", 0


os.register_at_fork(after_in_child=_forget_buffer)
