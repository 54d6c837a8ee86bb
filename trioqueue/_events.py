"""Job events and their fan-out to subscribers that can never slow the queue."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._record import LABELS, JobRecord
from ._state import EventKind

if TYPE_CHECKING:
    from ._backend import ChangeHook

log = logging.getLogger("trioqueue")

EVENT_TYPES = frozenset({*EventKind, "lagged", "metrics", "progress"})
"""Every ``Event.type``: a job's change of status (:class:`EventKind`; ``requeued`` is a
job put back to QUEUED by ``retry()`` or after an interrupted run), and the ``lagged``
and ``metrics`` markers, and ``progress`` (a running job's ``report_progress``)."""
_WITH_ERROR = frozenset({EventKind.RETRYING, EventKind.FAILED})


@attrs.frozen(slots=False)  # built per state change: a __dict__ init is 3x faster
class Event:
    """One state change of one job (or a ``lagged`` / ``metrics`` marker).

    ``at`` is seconds since the epoch.  ``duration`` is the run time of the attempt for
    ``completed``, ``retrying`` and ``failed``.  ``dropped`` is set on ``lagged`` only,
    ``metrics`` on ``metrics`` only.
    """

    seq: int
    type: str
    at: float
    job_id: str | None = None
    task: str | None = None
    priority: str | None = None
    status: str | None = None
    attempt: int | None = None
    worker: int | None = None
    error: str | None = None
    duration: float | None = None
    dropped: int | None = None
    metrics: dict[str, Any] | None = None
    fraction: float | None = None
    """``progress`` only: the fraction reported."""
    note: str | None = None
    """``progress`` only: the note reported."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; ``lagged`` and ``metrics`` carry only their own fields."""
        if self.type == "lagged":
            return {"seq": self.seq, "type": "lagged", "at": self.at, "dropped": self.dropped}
        if self.type == "metrics":
            return {"seq": self.seq, "type": "metrics", "at": self.at, "metrics": self.metrics}
        if self.type == "progress":
            return {"seq": self.seq, "type": "progress", "job_id": self.job_id,
                    "task": self.task, "priority": self.priority, "status": self.status,
                    "attempt": self.attempt, "at": self.at, "worker": self.worker,
                    "fraction": self.fraction, "note": self.note}
        return {
            "seq": self.seq,
            "type": self.type,
            "job_id": self.job_id,
            "task": self.task,
            "priority": self.priority,
            "status": self.status,
            "attempt": self.attempt,
            "at": self.at,
            "worker": self.worker,
            "error": self.error,
            "duration": self.duration,
        }


@attrs.define(eq=False)
class _Subscriber:
    send: trio.MemorySendChannel[Event]
    receive: trio.MemoryReceiveChannel[Event]
    """The subscriber's end, by which :meth:`Broadcaster.remove` knows it."""
    metrics: bool = False
    dropped: int = 0
    max_rate: float | None = None
    """Job events a second at most (a token bucket holding one second's worth)."""
    tokens: float = 0.0
    refilled: float = 0.0

    def has_token(self, now: float) -> bool:
        if self.tokens < 1.0:
            assert self.max_rate is not None
            self.tokens = min(self.max_rate, self.tokens + (now - self.refilled) * self.max_rate)
            self.refilled = now
        return self.tokens >= 1.0

    def next_token(self) -> float:
        """When :meth:`has_token` will next say yes (just refilled, it said no)."""
        assert self.max_rate is not None
        return self.refilled + (1.0 - self.tokens) / self.max_rate


class Broadcaster:
    """Hands each event to every subscriber's own bounded channel without waiting.

    A subscriber whose buffer is full loses the event and is owed a ``lagged`` marker,
    delivered (with the count) before the next event that fits.  So does one over its
    ``max_rate``; and when every subscriber is over it, :meth:`takes` says so, and the
    queue does not even build the event.  Until the first of them has a token again
    (a time :meth:`takes` works out once), a job event costs one clock reading and one
    count (the live dashboard's subscription costs the queue almost nothing per job at
    thousands of jobs a second); the count is each subscriber's ``dropped`` when the
    gate reopens or anything is published.
    """

    def __init__(self, now: Callable[[], float],
                 on_change: Callable[[], None] | None = None) -> None:
        self._subs: list[_Subscriber] = []
        self._seq = 0
        self._unlimited = 0
        """Subscribers without a ``max_rate``."""
        self._now = now
        """Seconds since the epoch, by the queue's clock (the ``at`` of events)."""
        self.on_change = on_change
        """Called after a subscriber is added or removed."""
        self._dry = False
        """Every subscriber is over its ``max_rate`` until :attr:`_reopen_at`."""
        self._reopen_at = 0.0
        """Trio time when the first subscriber has a token again."""
        self._skipped = 0
        """Job events dropped for every subscriber while :attr:`_dry`, not yet added to
        their ``dropped`` (:meth:`_settle`)."""
        self._clock: Callable[[], float] = trio.current_time
        """Trio's clock (the run's own, read without the lookups of
        :func:`trio.current_time`)."""

    def _changed(self) -> None:
        self._unlimited = sum(sub.max_rate is None for sub in self._subs)
        if self.on_change is not None:
            self.on_change()

    def _settle(self) -> None:
        """Open the gate: count what it skipped as dropped by every subscriber."""
        self._dry = False
        skipped = self._skipped
        if skipped:
            self._skipped = 0
            for sub in self._subs:
                sub.dropped += skipped

    def __bool__(self) -> bool:
        """Whether anyone subscribes."""
        return bool(self._subs)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def add(self, buffer: int, metrics: bool = False, max_rate: float | None = None
            ) -> trio.MemoryReceiveChannel[Event]:
        send, receive = trio.open_memory_channel[Event](buffer)
        sub = _Subscriber(send, receive, metrics)
        if max_rate is not None:
            sub.max_rate = sub.tokens = float(max_rate)
            sub.refilled = trio.current_time()
        self._settle()  # the new subscriber has tokens (or no rate): the gate opens
        self._clock = trio.lowlevel.current_clock().current_time
        self._subs.append(sub)
        self._changed()
        return receive

    def takes(self) -> bool:
        """Whether a job event published now would reach any subscriber.

        If every subscriber is over its ``max_rate``, each counts the event as dropped
        (it is told in its next ``lagged``) and the answer is no: the event need not be
        built.  Until the first of them has a token again, that is all it costs.
        """
        if self._dry:
            if self._clock() < self._reopen_at:
                self._skipped += 1
                return False
            self._settle()
        if self._unlimited:
            return True
        subs = self._subs
        for sub in subs:
            if sub.tokens >= 1.0:
                return True
        now = trio.current_time()
        for sub in subs:
            if sub.has_token(now):
                return True
        if not subs:
            return False
        # Every subscriber is over its max_rate (all have one): the first to have a
        # token again has it at this time.
        self._reopen_at = min(sub.next_token() for sub in subs)
        self._dry = True
        self._skipped += 1
        return False

    @property
    def wants_metrics(self) -> bool:
        """Whether any subscriber asked for periodic ``metrics`` events."""
        return any(sub.metrics for sub in self._subs)

    def announce(self, kind: EventKind, rec: JobRecord, worker: int | None = None,
                 duration: float | None = None) -> None:
        """Publish ``rec``'s change of status (the event its move named), unless every
        subscriber is over its ``max_rate`` (:meth:`takes`)."""
        if self._dry and self._clock() < self._reopen_at:  # takes()' hot path, inline
            self._skipped += 1
            return
        if not self.takes():
            return
        self.publish(
            Event(
                seq=self.next_seq(),
                type=kind,
                at=self._now(),
                job_id=rec.id,
                task=rec.task,
                priority=LABELS[rec.priority],
                status=rec.status.value,
                attempt=rec.attempts,
                worker=worker,
                error=rec.error if kind in _WITH_ERROR else None,
                duration=duration,
            )
        )

    def announce_progress(self, rec: JobRecord, worker: int | None,
                          at: float | None = None) -> None:
        """Publish ``rec``'s ``progress`` event (its :attr:`JobRecord.progress`), made
        ``at`` (default: now), unless every subscriber is over its ``max_rate``."""
        if not self.takes():
            return
        progress: dict[str, Any] = rec.progress or {}
        self.publish(Event(
            seq=self.next_seq(),
            type="progress",
            at=self._now() if at is None else at,
            job_id=rec.id,
            task=rec.task,
            priority=LABELS[rec.priority],
            status=rec.status.value,
            attempt=rec.attempts,
            worker=worker,
            fraction=progress.get("fraction"),
            note=progress.get("note"),
        ))

    def publish(self, event: Event) -> None:
        if self._skipped or self._dry:
            self._settle()  # a ``lagged`` goes first, with every event skipped so far
        metrics_only = event.type == "metrics"
        dead = None
        for sub in self._subs:
            if metrics_only:
                if not sub.metrics:
                    continue
            elif sub.max_rate is not None:
                if not sub.has_token(trio.current_time()):
                    sub.dropped += 1
                    continue
                sub.tokens -= 1.0
            try:
                if sub.dropped:
                    sub.send.send_nowait(
                        Event(seq=event.seq, type="lagged", at=event.at, dropped=sub.dropped)
                    )
                    sub.dropped = 0
                sub.send.send_nowait(event)
            except trio.WouldBlock:
                sub.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                dead = dead or []
                dead.append(sub)
        if dead:
            for sub in dead:
                self._subs.remove(sub)
            self._changed()

    def remove(self, receive: trio.MemoryReceiveChannel[Event]) -> None:
        """Forget the subscriber that :meth:`add` gave ``receive`` to."""
        self._settle()  # the others' counts first; the gate is worked out again
        for sub in self._subs:
            if sub.receive is receive:
                sub.send.close()
                self._subs.remove(sub)
                self._changed()
                return

    def close(self) -> None:
        self._settle()
        for sub in self._subs:
            sub.send.close()
        self._subs.clear()
        self._changed()


def change_hook(events: Broadcaster, debug: bool) -> ChangeHook | None:
    """What a backend tells of each state change: the subscribers of ``events``, the
    debug log (``debug``), both, or nobody (``None``: it skips the work of telling)."""
    if events and debug:
        def announce_and_log(kind: EventKind, rec: JobRecord, worker: int | None = None,
                             duration: float | None = None) -> None:
            events.announce(kind, rec, worker, duration)
            log_change(kind, rec)
        return announce_and_log
    if events:
        return events.announce
    return log_change if debug else None


def log_change(kind: EventKind, rec: JobRecord, worker: int | None = None,
               duration: float | None = None) -> None:
    """A state change as a line of the debug log."""
    log.debug(
        "job %s %s task=%s priority=%s attempt=%d%s",
        rec.id, kind, rec.task, LABELS[rec.priority], rec.attempts,
        f" error={rec.error!r}" if kind in _WITH_ERROR else "",
    )
