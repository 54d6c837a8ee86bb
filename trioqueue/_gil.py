"""The interpreter's thread switch interval, lowered while a queue is open.

A thread that wants the GIL waits ``sys.getswitchinterval()`` (5 ms by default) and then
asks the holder to drop it -- unless the GIL changed hands meanwhile.  A busy Trio loop
lets go of the GIL for a moment on every scheduler pass (its ``epoll_wait(0)``) and
takes it straight back, long before a sleeping thread can wake up and take it.  Each of
those moments counts as a change of hands, so the waiting thread never asks, and waits
for as long as the loop stays busy: with this engine running no-op jobs, a
``trio.to_thread.run_sync`` round trip took a median of 37-500 ms (up to 9 s) instead of
about 2 ms.  The threads that lose are the SQLite writer (every flush) and ``sync=True``
handlers.

A switch interval shorter than a scheduler pass (a pass of this engine runs up to
64 jobs per worker, a few hundred microseconds) makes the waiting thread ask in time.
The setting is process-wide, so it is lowered only while at least one queue is open,
and put back when the last one closes unless someone else changed it meanwhile.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0
_before = 0.0  # the interval found when the first holder lowered it
_ours = 0.0  # the interval as set by the first holder (as the interpreter reports it)


@contextmanager
def lowered_switch_interval(target: float | None) -> Iterator[None]:
    """Lower ``sys.setswitchinterval`` to ``target`` seconds (never raise it) for the
    duration of the block; ``None`` leaves the interpreter alone."""
    global _holders, _before, _ours
    if target is None:
        yield
        return
    with _lock:
        if _holders == 0:
            _before = sys.getswitchinterval()
            if _before > target:
                sys.setswitchinterval(target)
            _ours = sys.getswitchinterval()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and sys.getswitchinterval() == _ours != _before:
                sys.setswitchinterval(_before)
