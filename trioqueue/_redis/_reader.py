"""A Redis node's events reader: :class:`EventsReader`, the part of
:class:`~trioqueue._redis._node.NodeCore` that hands every node's events to this node's
subscribers and waiters, and tells Redis which event types to write for them.

It reads the stream only while this node has subscribers (or the debug log) or tasks in
``wait``, and for :data:`READER_LINGER` s after the last one left; otherwise it reads
nothing.  No script writes an event of a type that no node reads (``readers`` and
``readers:types``, docs/redis-design.md, "Events").
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Protocol

import trio

from .._backend import ChangeHook
from .._events import Broadcaster
from .._exceptions import ShuttingDown
from .._job import JobStatus
from .._record import JobRecord
from .._state import EventKind
from ._client import RedisUnavailable
from ._state import EventReader, RedisState, StreamEvent

log = logging.getLogger("trioqueue")

READER_BLOCK_MS = 250
"""How long the events reader's ``XREAD BLOCK`` waits for new events.  The call is never
cancelled (see BACKENDS.md's client rules), so this bounds how long a node's close waits
for its reader; a reading node that sees no events makes four round trips a second for it."""

EVENTS_MARGIN_MS = 50
"""How far before a subscriber or waiter arrived (Redis' clock, as this node estimates it)
a starting events reader begins."""

CATCH_UP_MAX = 1.0
"""Longest a ``wait`` that saw its job finished waits for this node's events reader to
hand the job's events to the subscribers here (:meth:`EventsReader.events_caught_up`)."""

READER_LINGER = 1.0
"""Seconds the events reader goes on reading after the last subscriber or waiter left
(a next ``wait`` soon after does not restart it)."""

READER_TTL = 60.0
"""Seconds (Redis' clock) for which a reading node has events written after it last said
it reads them (:meth:`RedisState.read_events`): the scripts write no events while no
node reads them, and a node that died reading costs at most this long of unread ones."""

READER_REFRESH = 2.0
"""Seconds between two such calls of a node that goes on reading: short, since a Redis
that restarted (it may keep nothing) has forgotten every reader, and a reader whose
connection came back without a failed read would not know."""

PRIO_BY_LABEL = {"high": 0, "medium": 1, "low": 2}
_STATUSES = {s.value: s for s in JobStatus}
_TERMINAL_EVENTS = frozenset(("completed", "failed", "cancelled"))
_ATTEMPT_ENDS = frozenset(("retrying", "completed", "failed", "cancelled", "requeued"))
_KIND_OF: dict[str, EventKind] = {kind.value: kind for kind in EventKind}
"""A stream event's type as the :class:`EventKind` the local backends publish."""
_MAX_WORKER_OF = 100_000


def stream_position(entry_id: str) -> tuple[int, int]:
    """A stream entry's id (``"<ms>-<n>"``) as a pair that compares in stream order."""
    ms, _, n = entry_id.partition("-")
    return int(ms), int(n or 0)


class Waker(Protocol):
    """What a job's watcher is: set once the stream shows the job ended (a
    :class:`trio.Event`, or :meth:`RedisBackend.watch_with`'s own)."""

    def set(self) -> None: ...


class EventsReader:
    """The events reader of a node (a base of :class:`NodeCore`, which runs
    :meth:`_read_events` as one of its tasks)."""

    # The node's state (set in RedisBackend.__init__, which documents it).
    _clock: trio.abc.Clock
    node: str
    _hook: ChangeHook | None
    _state: RedisState | None
    _disconnected: bool
    _events: Broadcaster | None
    _worker_of: dict[str, int]
    _started_events: dict[str, StreamEvent]
    _watchers: dict[str, list[Waker]]
    _want_events: trio.Event
    _stop_reading: bool
    reader_starts: int
    _reading: bool
    _read_to: tuple[int, int]
    _read_done: trio.Event
    _registered: bool
    _registered_types: frozenset[str] | None
    _register_lock: trio.Lock
    _events_from: int | None
    _redis_offset: float
    _events_after_seq: int
    _read_seq: int

    @property
    def state(self) -> RedisState:
        if self._state is None or self._disconnected:
            raise ShuttingDown("the queue is closed: this node is no longer connected to "
                               "redis")
        return self._state

    def _wants_events(self) -> bool:
        """Something on this node needs the stream: subscribers (or the debug log), or
        tasks in ``wait``."""
        return self._hook is not None or bool(self._watchers)

    def _events_wanted(self) -> None:
        """A subscriber or a waiter arrived: the reader starts (if it was idle), at the
        events written from about now on (Redis' clock, less :data:`EVENTS_MARGIN_MS`),
        so what happens after ``subscribe()`` or ``wait()`` returns to the caller is seen
        even if the reader's first call is sent later."""
        if not self._reading and self._events_from is None:
            self._events_from = int((time.time() + self._redis_offset) * 1000) \
                - EVENTS_MARGIN_MS
        self._want_events.set()

    def _set_redis_offset(self, sent: float, redis_now: float) -> None:
        """Redis' clock less this process' (``redis_now`` was answered to a call sent at
        ``sent``, by :func:`time.time`)."""
        self._redis_offset = redis_now - (sent + time.time()) / 2

    async def _read_events(self) -> None:
        """Read the stream while something here wants it (:meth:`_wants_events`), and
        until :data:`READER_LINGER` s after the last one left; read nothing otherwise.
        Each start first tells Redis that this node reads events, and of which types
        (:meth:`_register`; no script writes an event of a type no node reads; renewed
        every :data:`READER_REFRESH` s while it reads, and withdrawn when it stops), then
        reads from the events written since the first subscriber or waiter arrived
        (:meth:`_events_wanted`: no backlog is parsed), and wakes the waiters there are,
        so they look at their job again."""
        state = self.state
        clock = self._clock
        while not self._stop_reading:
            if not self._wants_events():
                self._want_events = trio.Event()
                await self._want_events.wait()
                continue
            try:
                await self._register()
            except RedisUnavailable:
                await trio.sleep(0.5)
                continue
            told = clock.current_time()
            start, self._events_from = self._events_from, None
            if start is not None:
                reader = EventReader(state, f"{max(0, start)}-0", 0)
            else:
                try:
                    reader = await state.event_reader()
                except RedisUnavailable:
                    await trio.sleep(0.5)
                    continue
            self.reader_starts += 1
            self._reading = True
            self._read_seq = -1
            self._read_to = stream_position(reader.last_id)  # (nothing before is read)
            for events in list(self._watchers.values()):
                for event in events:
                    event.set()
            unwanted_since: float | None = None
            while not self._stop_reading:
                # The read is shielded: a cancelled node must see it here.
                await trio.lowlevel.checkpoint_if_cancelled()
                now = clock.current_time()
                if self._wants_events():
                    unwanted_since = None
                elif unwanted_since is None:
                    unwanted_since = now
                elif now - unwanted_since >= READER_LINGER:
                    break
                try:
                    if now - told >= READER_REFRESH or not self._covered():
                        await self._register()
                        told = now
                    batch = await reader.read(block_ms=READER_BLOCK_MS)
                except RedisUnavailable:
                    told = -math.inf  # a Redis that restarted has forgotten this node
                    await trio.sleep(0.5)
                    continue
                for exc in batch.unreadable:
                    log.error("trioqueue: passed over an entry of the events stream that "
                              "is not a trioqueue event: %s", exc)
                if batch.events:
                    # The stream's numbers increase entry after entry while Redis keeps
                    # the queue's data: after a lower one, skip none of the new events.
                    if batch.events[0].seq <= self._read_seq:
                        await self._stream_went_back()
                    self._read_seq = batch.events[-1].seq
                self._handle_events(batch.events)
                self._read_to = stream_position(reader.last_id)
                self._read_done.set()
                self._read_done = trio.Event()
            self._reading = False
            self._read_done.set()
            self._read_done = trio.Event()
            self._worker_of.clear()
            self._started_events.clear()
            async with self._register_lock:
                # Not closing (removing the node withdraws it), and nobody arrived since
                # the reader decided to stop (one who did registered, or waits to).
                if not self._stop_reading and not self._wants_events():
                    self._registered = False
                    with contextlib.suppress(RedisUnavailable):
                        await state.stop_reading_events(self.node)

    async def _stream_went_back(self) -> None:
        """The stream's event numbers went back: Redis lost the queue's data (its new
        events are not to be taken for old ones), or a script that failed half way left
        numbers that the next one wrote again.  Decided by the queue's own number, before
        the events are handed on (the node's)."""
        raise NotImplementedError

    def _event_types(self) -> frozenset[str] | None:
        """The event types something on this node needs (``None``: every type): its
        subscribers' (every type for the debug log), and the ends of jobs for the tasks
        in ``wait``."""
        hook = self._hook
        events = self._events
        kinds: frozenset[str] = frozenset()
        if hook is not None:
            if events is None or hook != events.announce:
                return None  # the debug log shows every change
            if events.kinds is None:
                return None
            kinds = events.kinds
        if self._watchers:
            kinds |= _TERMINAL_EVENTS
        return kinds

    def _covered(self) -> bool:
        """Whether Redis writes every event type this node needs now."""
        if not self._registered:
            return False
        have = self._registered_types
        if have is None:
            return True
        need = self._event_types()
        return need is not None and need <= have

    async def _register(self) -> None:
        """Tell Redis that this node reads events, of the types it needs now (raises
        :class:`RedisUnavailable`)."""
        async with self._register_lock:
            types = self._event_types()
            await self.state.read_events(self.node, READER_TTL, types)
            self._registered = True
            self._registered_types = types

    async def events_flowing(self) -> None:
        """Return once Redis writes every event type this node's subscribers and waiters
        need (it said so, :meth:`_register`), so that whatever happens from then on is in
        the stream: at once if it does already, else after one call (at most
        :data:`CATCH_UP_MAX` s: with Redis not answering, ``wait`` looks at its job again
        on its own)."""
        if self._covered():
            await trio.lowlevel.checkpoint()
            return
        with trio.move_on_after(CATCH_UP_MAX):
            with contextlib.suppress(RedisUnavailable):
                await self._register()

    async def events_caught_up(self) -> None:
        """Return once this node's subscribers were handed every event in the stream at
        the call (at once if nothing here subscribes; at most :data:`CATCH_UP_MAX`
        seconds).  ``wait`` calls it when it saw a job finished by looking rather than by
        its event, so that a subscriber has the job's events by the time ``wait``
        returns, as with a local backend."""
        if self._hook is None:
            return
        try:
            last = await self.state.last_event_id()
        except RedisUnavailable:
            return
        if last is None:
            return
        target = stream_position(last)
        with trio.move_on_after(CATCH_UP_MAX):
            while self._read_to < target and not self._stop_reading:
                if not self._reading and not self._wants_events():
                    return  # nothing here subscribes any more
                await self._read_done.wait()

    def _handle_events(self, batch: list[StreamEvent]) -> None:
        """Hand ``batch`` on; events numbered :attr:`_events_after_seq` or less (older
        than the first subscriber) only wake waiters."""
        hook = self._hook
        skip = self._events_after_seq
        events = self._events
        for ev in batch:
            if events is not None:
                events.origin = ev.node or None  # the ``node`` of the events published
            if ev.type == "cancel_requested":
                continue  # the node running it acts on its cancel list
            if ev.type in _TERMINAL_EVENTS:
                for event in self._watchers.pop(ev.job_id, ()):
                    event.set()
            if ev.seq <= skip:
                continue
            worker = None
            if ev.node == self.node:
                if ev.type == "started":
                    worker = self._worker_of.get(ev.job_id)
                    if worker is None:
                        # No worker took the job yet (the claim's reply may not even
                        # be here): told when one does (claim()).
                        self._started_events[ev.job_id] = ev
                        continue
                else:
                    early = self._started_events.pop(ev.job_id, None)
                    if early is not None and hook is not None:
                        hook(EventKind.STARTED, self._event_record(early), None, None)
                    if ev.type in _ATTEMPT_ENDS:
                        worker = self._worker_of.pop(ev.job_id, None)
                    else:
                        worker = self._worker_of.get(ev.job_id)
            if ev.type == "progress":
                self._publish_progress(ev, worker)
            elif hook is not None:
                kind = _KIND_OF.get(ev.type)
                if kind is not None:  # else a type a newer node writes: not this one's
                    hook(kind, self._event_record(ev), worker, ev.duration)
        if events is not None:
            events.origin = None

    def _took(self, rec: JobRecord, worker: int) -> JobRecord:
        """A worker takes ``rec``: its events from now on name that worker, and its
        ``started`` event, if the stream showed it already, goes out now."""
        if not self._reading and not self._wants_events():
            return rec  # nothing reads this job's events here
        # (Also while the reader starts: its ``started`` event, read then, would wait
        # here for a take that was over, shown only with the job's next event, which a
        # subscriber of ``started`` alone has nobody write.)
        worker_of = self._worker_of
        worker_of[rec.id] = worker
        if len(worker_of) > _MAX_WORKER_OF:  # end events missed (stream trimmed)
            del worker_of[next(iter(worker_of))]
        if self._started_events:
            ev = self._started_events.pop(rec.id, None)
            if ev is not None and self._hook is not None:
                if self._events is not None:
                    self._events.origin = ev.node or None
                self._hook(EventKind.STARTED, self._event_record(ev), worker, None)
                if self._events is not None:
                    self._events.origin = None
        return rec

    def _publish_progress(self, ev: StreamEvent, worker: int | None) -> None:
        events = self._events
        if events is None or not events:
            return
        rec = self._event_record(ev)
        rec.progress = None if ev.progress is None else dict(ev.progress)
        events.announce_progress(rec, worker, ev.at)

    def _event_record(self, ev: StreamEvent) -> JobRecord:
        rec = JobRecord(ev.job_id, ev.task, None, "", PRIO_BY_LABEL.get(ev.priority, 1),
                        _STATUSES.get(ev.status, JobStatus.QUEUED), 0, None, ev.at, None,
                        None, 0.0)
        rec.attempts = ev.attempt
        rec.error = ev.error
        return rec
