"""``trioqueue.report_progress(fraction, note)``: a handler says how far its job got.

Each worker task sets :data:`_REPORTER` once, to its slot's :class:`Reporter`: an async
handler runs in the worker's own task (and the tasks it starts inherit the context), so
it finds the reporter with no per-job cost.  A ``sync=True`` handler runs in a thread
that ``trio.to_thread.run_sync`` starts with a copy of the worker's context; the call
goes back to the event loop with ``trio.from_thread.run_sync``.

A job's progress is on its record (``job.progress``).  Each change is a ``progress``
event, at most one per :data:`INTERVAL` seconds per job: a change within the interval
after the last event is held, and the last value held is sent when the interval ends
(by :meth:`Progress.run`, a task of the engine's work nursery) or when the job ends.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import trio

from ._events import Broadcaster
from ._record import JobRecord

if TYPE_CHECKING:
    from ._workers import WorkerSlot

INTERVAL = 0.1
"""Seconds between two ``progress`` events of one job, at least."""
MAX_NOTE = 1000
"""Characters a note may have."""

_REPORTER: ContextVar[Reporter | None] = ContextVar("trioqueue_reporter", default=None)
_THREAD_JOB: ContextVar[tuple[JobRecord, int] | None] = ContextVar(
    "trioqueue_thread_job", default=None)
"""In a ``sync=True`` handler's thread: its job and attempt (:func:`in_thread`).  The
worker's current job will not do there: a thread abandoned at a timeout or ``cancel()``
runs on while its worker takes the next job."""


def in_thread(rec: JobRecord, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn`` (a ``sync=True`` handler) bound, in the thread that runs it, to ``rec``'s
    attempt now: :func:`report_progress` there reports for that attempt or raises once
    it ended, whatever its worker runs by then."""
    attempt = rec.attempts

    def bound(job: Any) -> Any:
        _THREAD_JOB.set((rec, attempt))  # the thread's own copy of the context
        return fn(job)

    return bound


def report_progress(fraction: float, note: str | None = None) -> None:
    """Record how far the running job got: ``fraction`` from 0 to 1, and an optional
    ``note``.  Call it from a handler (async, or ``sync=True`` in its thread).

    Raises :class:`ValueError` or :class:`TypeError` naming the bad argument, and
    :class:`RuntimeError` outside a job's handler.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"fraction: expected a number from 0 to 1, got {type(fraction).__name__}")
    if not (0.0 <= fraction <= 1.0):  # NaN too; an int of any size (isfinite overflows)
        shown = (repr(fraction) if isinstance(fraction, float) or abs(fraction) < 10**20
                 else "an integer of more than 20 digits")
        raise ValueError(f"fraction: expected a number from 0 to 1, got {shown}")
    if note is not None:
        if not isinstance(note, str):
            raise TypeError(f"note: expected a string or None, got {type(note).__name__}")
        if len(note) > MAX_NOTE:
            raise ValueError(f"note: at most {MAX_NOTE} characters, got {len(note)}")
    reporter = _REPORTER.get()
    if reporter is None:
        raise RuntimeError(
            "report_progress() called outside a job's handler (call it from the handler "
            "a worker runs, or from a thread it runs in)"
        )
    if _in_trio_task():
        reporter.report(reporter.slot.current, float(fraction), note)
        return
    # A sync handler's thread: the state lives on the event loop.
    bound = _THREAD_JOB.get()
    if bound is None:  # a thread the handler started itself: the worker's job
        trio.from_thread.run_sync(reporter.report, reporter.slot.current, float(fraction),
                                  note)
    else:
        trio.from_thread.run_sync(reporter.report, bound[0], float(fraction), note,
                                  bound[1])


def _in_trio_task() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


class Reporter:
    """One worker's way in to :class:`Progress`."""

    __slots__ = ("progress", "slot")

    def __init__(self, progress: Progress, slot: WorkerSlot) -> None:
        self.progress = progress
        self.slot = slot

    def install(self) -> None:
        """In the worker's task: make :func:`report_progress` find this reporter."""
        _REPORTER.set(self)

    def report(self, rec: JobRecord | None, fraction: float, note: str | None,
               attempt: int | None = None) -> None:
        if rec is None or self.slot.current is not rec or (
                attempt is not None and rec.attempts != attempt):
            raise RuntimeError("report_progress(): the job this handler ran has ended")
        self.progress.report(rec, fraction, note, self.slot.index)


class Progress:
    """Every job's latest progress event time, and the values held back."""

    def __init__(self, events: Broadcaster, now: Callable[[], float],
                 wall: Callable[[], float],
                 on_change: Callable[[JobRecord], None] | None = None) -> None:
        self._events = events
        self._now = now
        """trio time."""
        self._wall = wall
        """Seconds since the epoch (an event's ``at``)."""
        self._on_change = on_change
        """Told of each change (the store writes the record)."""
        self._last: dict[str, float] = {}
        """Job id -> when its last progress event was sent (trio time), while it runs."""
        self._held: dict[str, JobRecord] = {}
        """Jobs whose latest change is not sent yet."""
        self._worker: dict[str, int | None] = {}
        """Job id -> the worker that reported the held change."""
        self._wake = trio.Event()

    def report(self, rec: JobRecord, fraction: float, note: str | None,
               worker: int | None = None) -> None:
        value = {"fraction": fraction, "note": note}
        if rec.progress == value:
            return
        rec.progress = value
        if self._on_change is not None:
            self._on_change(rec)
        now = self._now()
        last = self._last.get(rec.id)
        if last is None or now - last >= INTERVAL:
            self._held.pop(rec.id, None)
            self._send(rec, now, worker)
        else:
            if not self._held:
                self._wake.set()
            self._held[rec.id] = rec
            self._worker[rec.id] = worker

    def ended(self, rec: JobRecord) -> None:
        """``rec``'s attempt ended: send what it held back, forget its timing."""
        if self._last.pop(rec.id, None) is not None:
            held = self._held.pop(rec.id, None)
            if held is not None:
                self._send(held, self._now(), self._worker.pop(rec.id, None), keep=False)

    def _send(self, rec: JobRecord, now: float, worker: int | None, *,
              keep: bool = True) -> None:
        if keep:
            self._last[rec.id] = now
        if self._events:
            self._events.announce_progress(rec, worker, self._wall())

    async def run(self) -> None:
        """Send each held change when its job's interval ends (the engine's task)."""
        while True:
            if not self._held:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            due = min(self._last[job_id] for job_id in self._held) + INTERVAL
            now = self._now()
            if now < due:
                await trio.sleep_until(due)
                continue
            for job_id, rec in list(self._held.items()):
                if self._last[job_id] + INTERVAL <= now:
                    del self._held[job_id]
                    self._send(rec, now, self._worker.pop(job_id, None))
