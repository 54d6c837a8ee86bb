"""Job events and their fan-out to subscribers that can never slow the queue."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._exceptions import ShuttingDown
from ._record import LABELS, JobRecord
from ._state import EventKind

if TYPE_CHECKING:
    from ._backend import ChangeHook

log = logging.getLogger("trioqueue")

EVENT_TYPES = frozenset({*EventKind, "lagged", "metrics", "progress"})
"""Every ``Event.type``: a job's change of status (:class:`EventKind`; ``requeued`` is a
job put back to QUEUED by ``retry()`` or after an interrupted run), and the ``lagged``
and ``metrics`` markers, and ``progress`` (a running job's ``report_progress``)."""
JOB_EVENT_TYPES = frozenset({*EventKind, "progress"})
"""The types of the events about one job (what ``subscribe(types=...)`` chooses among)."""
_WITH_ERROR = frozenset({EventKind.RETRYING, EventKind.FAILED})


@attrs.frozen(slots=False)  # built per state change: a __dict__ init is 3x faster
class Event:
    """One state change of one job (or a ``lagged`` / ``metrics`` marker).

    ``at`` is seconds since the epoch.  ``duration`` is the run time of the attempt for
    ``completed``, ``retrying`` and ``failed``.  ``dropped`` is set on ``lagged`` only,
    ``metrics`` on ``metrics`` only.  ``priority`` and ``status`` are the JSON spellings
    (``"high"``, ``"completed"``): compare ``event.priority == Priority.HIGH.label``
    (a :class:`Priority` is a number; a :class:`JobStatus` is its own string).
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
    node: str | None = None
    """Redis: the id of the node that made the change (the one running the job for
    ``started``, ``progress`` and the ends of an attempt); ``None`` (and not in the JSON)
    for a queue of one process."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; ``lagged`` and ``metrics`` carry only their own fields, and
        ``node`` is there only when set (Redis)."""
        if self.type == "lagged":
            return {"seq": self.seq, "type": "lagged", "at": self.at, "dropped": self.dropped}
        if self.type == "metrics":
            return {"seq": self.seq, "type": "metrics", "at": self.at, "metrics": self.metrics}
        if self.type == "progress":
            out = {"seq": self.seq, "type": "progress", "job_id": self.job_id,
                   "task": self.task, "priority": self.priority, "status": self.status,
                   "attempt": self.attempt, "at": self.at, "worker": self.worker,
                   "fraction": self.fraction, "note": self.note}
        else:
            out = {
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
        if self.node is not None:
            out["node"] = self.node
        return out


@attrs.define(eq=False)
class _Subscriber:
    send: trio.MemorySendChannel[Event]
    receive: trio.MemoryReceiveChannel[Event]
    """The buffer's end, which its :class:`Subscription` reads."""
    metrics: bool = False
    dropped: int = 0
    types: frozenset[str] | None = None
    """The job event types it takes (``None``: all); the others never reach it, nor count
    as dropped."""
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


class Subscription(trio.abc.ReceiveChannel[Event]):
    """A subscriber's end (what :meth:`JobQueue.subscribe` gives): a receive channel of
    what its bounded buffer holds, then of the ``lagged`` it is owed for the events lost
    after those, before anything else.

    The count of events still being lost cannot wait in the full buffer: the ``lagged``
    is built when the subscriber reads the buffer empty (or ended), with the count up
    to then, whether or not an event came since (an event that fits in the meantime is
    put after a ``lagged`` with the count so far, by :meth:`Broadcaster.publish`).  A
    subscriber with a ``max_rate`` gets its ``lagged`` once it has a token again, as an
    event would (``1 / max_rate`` s later at most).  When the queue closes, the channel
    ends after the buffer and the last ``lagged``.  Like a
    :class:`trio.MemoryReceiveChannel`, it has :meth:`receive_nowait`, and ``with``
    closes it.
    """

    __slots__ = ("_hub", "_receive", "_sub")

    def __init__(self, hub: Broadcaster, sub: _Subscriber) -> None:
        self._hub = hub
        self._sub = sub
        self._receive = sub.receive

    def __repr__(self) -> str:
        return f"<trioqueue subscription, {self._receive.statistics()}>"

    @property
    def subscriber(self) -> _Subscriber:
        """The queue's record of this subscriber (its buffer's ends, its counts)."""
        return self._sub

    def receive_nowait(self) -> Event:
        """The next event without waiting: what the buffer holds, then the ``lagged``
        owed; :class:`trio.WouldBlock` if neither, :class:`trio.EndOfChannel` once the
        queue closed and both were read."""
        try:
            return self._receive.receive_nowait()
        except trio.WouldBlock:
            lagged = self._hub.lagged_for(self._sub, ended=False)
            if lagged is None:
                raise
            return lagged
        except trio.EndOfChannel:
            lagged = self._hub.lagged_for(self._sub, ended=True)
            if lagged is None:
                raise
            return lagged

    async def receive(self) -> Event:
        """The next event, waiting for one if need be (:meth:`receive_nowait`)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                event = self.receive_nowait()
            except trio.WouldBlock:
                pass
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return event
            # The buffer is empty, and nothing is owed that may go now.  An event that
            # comes goes straight to this wait; events lost meanwhile (only over a
            # ``max_rate``) are told when a token is due, by looking again then.
            due = self._hub.lagged_due(self._sub)
            try:
                if due == math.inf:
                    return await self._receive.receive()
                with trio.move_on_at(due):
                    return await self._receive.receive()
            except trio.EndOfChannel:
                pass  # the queue closed: a lagged still owed goes first (above)

    def statistics(self) -> trio.MemoryChannelStatistics:
        """The buffer's :class:`trio.MemoryChannelStatistics`."""
        return self._receive.statistics()

    def close(self) -> None:
        """Stop receiving: the queue hands this subscriber nothing more."""
        self._receive.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Broadcaster:
    """Hands each event to every subscriber's own bounded channel without waiting.

    A subscriber whose buffer is full loses the event and is owed a ``lagged`` marker
    with the count: put ahead of the next event that fits, or built by its
    :class:`Subscription` when it reads its buffer empty (or ended), whichever comes
    first (:meth:`lagged_for`).  So does one over its
    ``max_rate``; and when every subscriber is over it, :meth:`takes` says so, and the
    queue does not even build the event.  Until the first of them has a token again
    (a time :meth:`takes` works out once), a job event costs one clock reading and one
    count (the live dashboard's subscription costs the queue almost nothing per job at
    thousands of jobs a second); the count is each subscriber's ``dropped`` when the
    gate reopens or anything is published.  A subscriber that takes only some types
    (``trioqueue monitor``: failures and metrics) is never handed the others, and a job
    event of a type no subscriber takes is not built at all.
    """

    def __init__(self, now: Callable[[], float],
                 on_change: Callable[[], None] | None = None) -> None:
        self._subs: list[_Subscriber] = []
        self._seq = 0
        self._unlimited: frozenset[str] | None = frozenset()
        """The job event types some subscriber without a ``max_rate`` takes (``None``:
        all of them): those always reach someone."""
        self._kinds: frozenset[str] | None = frozenset()
        """The job event types some subscriber takes (``None``: all of them)."""
        self._now = now
        """Seconds since the epoch, by the queue's clock (the ``at`` of events)."""
        self.on_change = on_change
        """Called after a subscriber is added or removed."""
        self._dry = False
        """Every subscriber is over its ``max_rate`` until :attr:`_reopen_at`."""
        self._reopen_at = 0.0
        """Trio time when the first subscriber has a token again."""
        self._skipped: dict[str, int] = {}
        """Job events (by type) dropped for every subscriber that takes them while
        :attr:`_dry`, not yet added to their ``dropped`` (:meth:`_settle`)."""
        self._clock: Callable[[], float] = trio.current_time
        """Trio's clock (the run's own, read without the lookups of
        :func:`trio.current_time`)."""
        self.origin: str | None = None
        """The node whose change is being announced: set by a Redis node's events reader
        while it hands on an event of the queue's stream (the ``node`` of the events
        built meanwhile); ``None`` in a queue of one process."""
        self._closed = False
        """:meth:`close` ended every subscriber's channel: no one subscribes any more."""

    def _changed(self) -> None:
        self._unlimited = _union(sub.types for sub in self._subs if sub.max_rate is None)
        self._kinds = _union(sub.types for sub in self._subs)
        if self.on_change is not None:
            self.on_change()

    def _settle(self) -> None:
        """Open the gate: count what it skipped as dropped by every subscriber that takes
        it."""
        self._dry = False
        skipped = self._skipped
        if skipped:
            self._skipped = {}
            for sub in self._subs:
                types = sub.types
                sub.dropped += sum(n for kind, n in skipped.items()
                                   if types is None or kind in types)

    @property
    def kinds(self) -> frozenset[str] | None:
        """The job event types some subscriber takes (``None``: every type)."""
        return self._kinds

    def __bool__(self) -> bool:
        """Whether anyone subscribes."""
        return bool(self._subs)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def add(self, buffer: int, max_rate: float | None = None,
            types: frozenset[str] | None = None,
            metrics: bool = False) -> Subscription:
        """A new subscriber's end; :class:`ShuttingDown` once :meth:`close` ended the
        others' (its channel would never end)."""
        if self._closed:
            raise ShuttingDown("the queue is closed: its events have ended")
        send, receive = trio.open_memory_channel[Event](buffer)
        sub = _Subscriber(send, receive, metrics, types=types)
        if max_rate is not None:
            sub.max_rate = sub.tokens = float(max_rate)
            sub.refilled = trio.current_time()
        self._settle()  # the new subscriber has tokens (or no rate): the gate opens
        self._clock = trio.lowlevel.current_clock().current_time
        self._subs.append(sub)
        self._changed()
        return Subscription(self, sub)

    def takes(self, kind: str) -> bool:
        """Whether a job event of type ``kind`` published now would reach any subscriber.

        If no subscriber takes ``kind``, no.  If every subscriber that takes it is over
        its ``max_rate``, each counts the event as dropped (it is told in its next
        ``lagged``) and the answer is no: the event need not be built.  Until the first
        subscriber has a token again, that is all such an event costs.
        """
        unlimited = self._unlimited
        if unlimited is None or kind in unlimited:
            return True
        kinds = self._kinds
        if kinds is not None and kind not in kinds:
            return False
        if self._dry:
            if self._clock() < self._reopen_at:
                self._skipped[kind] = self._skipped.get(kind, 0) + 1
                return False
            self._settle()
        subs = [sub for sub in self._subs if sub.types is None or kind in sub.types]
        for sub in subs:
            if sub.tokens >= 1.0:
                return True
        now = trio.current_time()
        for sub in subs:
            if sub.has_token(now):
                return True
        # Every subscriber is over its max_rate (the others have one, or take none of
        # the types that get this far): the first to have a token again has it then.
        self._reopen_at = min(sub.next_token() for sub in self._subs
                              if sub.max_rate is not None)
        self._dry = True
        self._skipped[kind] = self._skipped.get(kind, 0) + 1
        return False

    @property
    def wants_metrics(self) -> bool:
        """Whether any subscriber asked for periodic ``metrics`` events."""
        return any(sub.metrics for sub in self._subs)

    def announce(self, kind: EventKind, rec: JobRecord, worker: int | None = None,
                 duration: float | None = None) -> None:
        """Publish ``rec``'s change of status (the event its move named), unless no
        subscriber takes it or every one that does is over its ``max_rate``
        (:meth:`takes`)."""
        kinds = self._kinds
        if kinds is not None and kind not in kinds:
            return  # nobody takes it: not even counted
        if self._dry and self._clock() < self._reopen_at:  # takes()' hot path, inline
            unlimited = self._unlimited
            if unlimited is not None and kind not in unlimited:
                self._skipped[kind] = self._skipped.get(kind, 0) + 1
                return
        if not self.takes(kind):
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
                node=self.origin,
            )
        )

    def announce_progress(self, rec: JobRecord, worker: int | None,
                          at: float | None = None) -> None:
        """Publish ``rec``'s ``progress`` event (its :attr:`JobRecord.progress`), made
        ``at`` (default: now), unless no subscriber takes it (:meth:`takes`)."""
        if not self.takes("progress"):
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
            node=self.origin,
        ))

    def publish(self, event: Event) -> None:
        if self._skipped or self._dry:
            self._settle()  # a ``lagged`` goes first, with every event skipped so far
        kind = event.type
        metrics_only = kind == "metrics"
        dead = None
        for sub in self._subs:
            if metrics_only:
                if not sub.metrics:
                    continue
            elif sub.types is not None and kind not in sub.types:
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

    def lagged_for(self, sub: _Subscriber, ended: bool) -> Event | None:
        """The ``lagged`` that ``sub``, its buffer read (or ``ended``, the queue closed),
        is owed now, if any: the count of the events it lost since it was last told.  A
        subscriber with a ``max_rate`` is told once it has a token (not spent), as the
        next event would be, unless its channel ended."""
        if sub.max_rate is not None and not ended:
            if not sub.has_token(trio.current_time()):
                return None
            skipped = self._skipped
            if skipped and (sub.types is None or not sub.types.isdisjoint(skipped)):
                self._settle()  # events it lost while every subscriber was over its rate
        if not sub.dropped:
            return None
        lagged = Event(seq=self._seq + 1, type="lagged", at=self._now(), dropped=sub.dropped)
        sub.dropped = 0  # (the seq: shared with the next event, as in publish)
        return lagged

    def lagged_due(self, sub: _Subscriber) -> float:
        """When ``sub``, waiting on an empty buffer with no ``lagged`` it may be told now
        (:meth:`lagged_for`), must look again (trio time): when its next token is due, if
        it is out of them (events are lost meanwhile, and no event will come to tell
        it); else never (the next event goes straight to its wait)."""
        now = trio.current_time()
        if sub.max_rate is None or sub.has_token(now):
            return math.inf
        # Not before a microsecond from now: a token due within the float rounding of
        # the refill would have it look again at once, and again (the mock clock stands).
        return max(sub.next_token(), now + 1e-6)

    def remove(self, subscription: Subscription) -> None:
        """Forget the subscriber that :meth:`add` gave ``subscription`` to."""
        self._settle()  # the others' counts first; the gate is worked out again
        for sub in self._subs:
            if sub is subscription.subscriber:
                sub.send.close()
                self._subs.remove(sub)
                self._changed()
                return

    def close(self) -> None:
        """End every subscriber's channel (each reads what it holds and the ``lagged``
        it is owed first), and refuse new ones."""
        self._closed = True
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


def _union(sets: Iterable[frozenset[str] | None]) -> frozenset[str] | None:
    """The union of some subscribers' types (``None``, all types, if one takes all)."""
    out: frozenset[str] = frozenset()
    for types in sets:
        if types is None:
            return None
        out |= types
    return out


def check_subscription(buffer: object, max_rate: object, types: object
                       ) -> tuple[int, float | None, frozenset[str] | None]:
    """:meth:`JobQueue.subscribe`'s ``buffer``, ``max_rate`` and ``types``, checked
    (:class:`ValueError` naming the bad one); ``types`` as a frozenset (a single str is
    one type)."""
    if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
        raise ValueError(f"buffer: expected a positive integer, got {buffer!r}")
    if max_rate is not None and (
        isinstance(max_rate, bool) or not isinstance(max_rate, (int, float))
        or not 0 < max_rate < float("inf")
    ):
        raise ValueError(f"max_rate: expected events a second > 0, got {max_rate!r}")
    if types is None:
        return buffer, max_rate, None
    if isinstance(types, str):
        types = (types,)
    try:
        wanted = frozenset(types)  # type: ignore[call-overload]
    except TypeError:
        raise ValueError(f"types: expected job event types, got {types!r}") from None
    bad = sorted(map(repr, wanted - JOB_EVENT_TYPES))
    if bad:
        raise ValueError(f"types: unknown job event type {bad[0]} (expected some of "
                         f"{', '.join(sorted(JOB_EVENT_TYPES))})")
    return buffer, max_rate, wanted
