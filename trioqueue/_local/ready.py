"""The ready queues: one bounded deque per priority, the fair picker over them, and who
waits for what -- producers for room, idle workers for jobs, new jobs for a recovered
backlog to drain.

The deques with Trio ``ParkingLot``s are what Trio's memory channels are made of: the
picker reads three lengths, the capacity check is one comparison, and cancelling a
QUEUED job removes it from its deque.  :meth:`ReadyQueues.admit` and
:meth:`ReadyQueues.take` are the hot path of every job (an enqueue, a worker taking it):
each does its whole step inline, with one call out to the transition table.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping

import trio

from .._fairness import FairPicker
from .._ids import generated_shape
from .._job import JobStatus, Priority
from .._record import JobRecord, same_or_duplicate
from .._state import EventKind, JobEvent, edge
from .._stats import Stats
from .batches import NEVER, BatchAdmission
from .changes import Changes
from .timer import Timer

SCHEDULED = JobStatus.SCHEDULED
PROCESSING, STARTED = edge(JobStatus.QUEUED, JobEvent.START)
ENQUEUED = EventKind.ENQUEUED
_reschedule = trio.lowlevel.reschedule


class ReadyQueues(BatchAdmission):
    """Three bounded ready queues (one per :class:`Priority`) and their waiting lines."""

    def __init__(self, jobs: dict[str, JobRecord], timer: Timer, stats: Stats,
                 changes: Changes, *, capacity: int, fairness: Mapping[Priority, int],
                 wall_offset: float) -> None:
        self._jobs = jobs
        """The job table's index (:attr:`JobTable.by_id`): :meth:`admit` adds to it."""
        self._timer = timer
        self._stats = stats
        self._changes = changes
        self._wall = wall_offset
        self.capacity = capacity
        self._queues: list[deque[JobRecord]] = [deque(), deque(), deque()]
        self._picker = FairPicker(fairness)
        self._room = [trio.lowlevel.ParkingLot() for _ in range(3)]
        self._room_waiting = [0, 0, 0]
        """Producers parked in ``_room`` and not yet woken (see :meth:`_park_for_room`): an
        int :meth:`take` tests per job, where a ParkingLot's ``len()`` is a Python-level
        call."""
        self._delayed_new = [0, 0, 0]
        """New delayed jobs waiting for their due time, per priority (their own bound)."""
        self._delay_room = [trio.lowlevel.ParkingLot() for _ in range(3)]
        self._batch_room = [trio.lowlevel.ParkingLot() for _ in range(3)]
        """Batches waiting for room for all their jobs of a priority (see
        :meth:`wait_for_room_many`): all are woken once the room one of them needs is
        free, and look again.  Each counts in ``_room_waiting`` while parked, so
        :meth:`take` tests one int for both kinds of waiter."""
        self._batch_need = [NEVER, NEVER, NEVER]
        """The least free room in a ready queue that a parked batch waits for."""
        self._batch_need_delayed = [NEVER, NEVER, NEVER]
        """The same for the room of new delayed jobs."""
        self._batch_waiting = [0, 0, 0]
        """Batches parked in ``_batch_room`` (counted in ``_room_waiting`` too)."""
        self._idle: list[trio.lowlevel.Task] = []
        """Workers parked for want of work, most recently parked last (woken first: its
        cache is warm).  A plain list and ``reschedule``: a ParkingLot's ordered dict and
        outcome objects cost a measurable share of a no-op job."""
        # A recovered backlog: queued jobs still in the store, streamed in as queues drain.
        self._backlog = [0, 0, 0]
        # Its size for the gauges: the gate above stays at 1 until the streamer has read
        # to the end, this one counts the jobs still in the store (0 once all are in).
        self._backlog_left = [0, 0, 0]
        self._backlog_lot = [trio.lowlevel.ParkingLot() for _ in range(3)]
        self._refill: list[trio.Event | None] = [None, None, None]
        self._refill_low = [0, 0, 0]
        self.closed = False
        """Intake closed (shutdown): producers woken from here raise ShuttingDown."""
        self.gates: dict[str, TaskGate] = {}
        """Tasks with a ``concurrency`` limit by name (see :class:`TaskGate`); empty, as
        it usually is, :meth:`take` tests it once per job and nothing else."""
        self._aside = [0, 0, 0]
        """Jobs per priority set aside by their task's gate: still QUEUED, still counted
        against the capacity and in the depths."""
        self.stored_only: set[str] = set()
        """With a store: the ids, not of the generated shape, that may belong to a job
        only the store holds (its :attr:`Persistence.stored_only`, given by
        :meth:`beside_store`); empty in memory mode."""
        self._lookup_now: Callable[[str], JobRecord | None] | None = None
        self.max_payload = NEVER
        """With a store: the most bytes a new job's payload may take as JSON (the store's
        length limit bounds a row); :meth:`admit` refuses a larger one, raising
        ``too_big(rec)`` (an :class:`InvalidJob`), before anything changed."""
        self.too_big: Callable[[JobRecord], Exception] = Exception
        self._full_at = [capacity, capacity, capacity]
        """The length of each ready queue at which :meth:`admit` finds no room: the
        capacity less the jobs set aside, 0 while a recovered backlog waits (one
        comparison per job; :meth:`_room_changed` keeps it)."""

    def beside_store(self, stored_only: set[str],
                     lookup_now: Callable[[str], JobRecord | None], max_payload: int,
                     too_big: Callable[[JobRecord], Exception]) -> None:
        """A queue with a store: a caller's id (``job_id=``) that memory lacks may belong
        to a job only the store holds (a finished job that left memory, or any job
        stored before this open).  Admission looks it up there (``lookup_now``) when
        it is in ``stored_only`` or has the generated shape
        (:func:`~trioqueue._ids.generated_shape`), and a repeat of that job returns it
        (or raises :class:`DuplicateJob`) instead of replacing it.  A generated id is
        never looked up (it is new by construction), and a caller's id of another shape
        that is not in ``stored_only`` costs one set lookup, never a read.  A payload of
        more than ``max_payload`` bytes raises ``too_big(rec)``."""
        self.stored_only = stored_only
        self._lookup_now = lookup_now
        self.max_payload = max_payload
        self.too_big = too_big

    def _maybe_stored(self, job_id: str) -> bool:
        """Whether a caller's id that memory lacks must be looked up in the store."""
        return self._lookup_now is not None and (
            job_id in self.stored_only or generated_shape(job_id))

    def _stored(self, job_id: str) -> JobRecord | None:
        """The job only the store holds under ``job_id`` (not in memory), or ``None``:
        then the id is free, and leaves :attr:`stored_only`."""
        assert self._lookup_now is not None
        stored = self._lookup_now(job_id)
        if stored is None:
            self.stored_only.discard(job_id)
        return stored

    def limit(self, task: str, concurrency: int) -> None:
        """At most ``concurrency`` jobs of ``task`` run at once (this process)."""
        if task not in self.gates:
            self.gates[task] = TaskGate(concurrency)

    # ------------------------------------------------------------------ the hot path

    def admit(self, rec: JobRecord) -> JobRecord | None:
        """Accept a new job if its priority has room: ``rec`` itself once accepted; the
        job already holding its id if that one has the same task and payload; ``None``
        when there is no room.  Raises :class:`DuplicateJob` for an id taken by another
        job, and :class:`InvalidJob` for a payload too large for the store.

        A QUEUED job needs room in its ready queue, and no recovered backlog of its
        priority still in the store (that goes first); a SCHEDULED one needs room among
        the new delayed jobs of its priority.
        """
        jobs = self._jobs
        job_id = rec.id
        if job_id in jobs:
            return same_or_duplicate(jobs[job_id], rec)
        if rec.id_given and self._maybe_stored(job_id):
            stored = self._stored(job_id)
            if stored is not None:
                return same_or_duplicate(stored, rec)
        if len(rec.payload_json) > self.max_payload:  # its row would not fit in the store
            raise self.too_big(rec)
        p = rec.priority
        if rec.status is SCHEDULED:
            return self._admit_delayed(rec)
        queue = self._queues[p]
        if len(queue) >= self._full_at[p]:  # full, or a recovered backlog goes first
            return None
        jobs[job_id] = rec
        stats = self._stats
        stats.enqueued += 1
        stats.enqueued_p[p] += 1
        queue.append(rec)  # rec.ready_at is its creation time
        idle = self._idle
        if idle:
            _reschedule(idle.pop())
        changes = self._changes
        if changes.observed:
            changes.changed(ENQUEUED, rec, None, None)
        return rec

    def _admit_delayed(self, rec: JobRecord) -> JobRecord | None:
        p = rec.priority
        if self._delayed_new[p] >= self.capacity:
            return None
        assert rec.scheduled_for is not None
        self._jobs[rec.id] = rec
        self._stats.enqueued += 1
        self._stats.enqueued_p[p] += 1
        rec.holds_delay_slot = True
        self._delayed_new[p] += 1
        self._timer.schedule(rec, rec.scheduled_for)
        changes = self._changes
        if changes.observed:
            changes.changed(EventKind.SCHEDULED, rec, None, None)
        return rec

    def take(self, worker: int, now: float) -> JobRecord | None:
        """The job the fair picker names, started by ``worker`` at ``now`` (trio time):
        PROCESSING, its attempt counted; ``None`` when every queue is empty."""
        queues = self._queues
        h, m, lo = queues
        # The picker's fast path, inlined (a call per job is ~1 % of a no-op job): a lone
        # priority with work gets the pick, and the picker's credit is cleared.
        if h:
            i = -2 if m or lo else 0
        elif m:
            i = -2 if lo else 1
        else:
            i = 2 if lo else -1
        picker = self._picker
        if i == -2:
            i = picker.contested(queues)
        elif picker.owed:
            picker.clear()
        if i < 0:
            return None
        queue = queues[i]
        rec = queue.popleft()
        if self.gates and rec.task in self.gates:  # a task with a concurrency limit
            got = self._through_gate(rec)
            if got is None:
                return None
            rec = got
            i = rec.priority
            queue = queues[i]
        if self._room_waiting[i]:  # room for one producer
            self._wake_for_room(i)
        refill = self._refill[i]
        if refill is not None and len(queue) <= self._refill_low[i]:
            refill.set()  # the backlog streamer of this priority reads more
            self._refill[i] = None
        rec.status = PROCESSING  # the table's edge (QUEUED only are in ready queues)
        rec.attempts += 1
        rec.started_at = now + self._wall
        self._stats.started += 1
        changes = self._changes
        if changes.observed:
            dirty = changes.dirty
            if dirty:  # only the store listens: no call (see Changes)
                dirty[rec.id] = rec
            else:
                changes.changed(STARTED, rec, worker, None)
        return rec

    def _through_gate(self, rec: JobRecord) -> JobRecord | None:
        """``rec`` was picked and its task has a limit: ``rec`` if the limit lets it
        run; else set it aside (its task's line, in pick order) and pick again, until a
        job may run (``None``: none may).  Other tasks' jobs keep their fair order."""
        gates = self.gates
        queues = self._queues
        while True:
            gate = gates.get(rec.task)
            if gate is None or gate.enter(rec):
                return rec
            gate.aside.append(rec)
            self._aside[rec.priority] += 1
            self._room_changed(rec.priority)
            i = self._picker.pick(queues)
            if i < 0:
                return None
            rec = queues[i].popleft()

    def attempt_ended(self, rec: JobRecord) -> None:
        """A job of a limited task stopped running (finished, failed, retried later,
        interrupted): its slot is free; the first job set aside for the task goes back
        to the front of its priority's queue, reserved the slot."""
        gate = self.gates.get(rec.task)
        if gate is None:
            return
        gate.running -= 1
        self._let_in(gate)

    def _let_in(self, gate: TaskGate) -> None:
        back: list[JobRecord] = []
        while gate.aside and gate.running + len(gate.returned) < gate.limit:
            rec = gate.aside.popleft()
            self._aside[rec.priority] -= 1
            self._room_changed(rec.priority)
            gate.returned.add(rec.id)
            back.append(rec)
        gates = self.gates
        for rec in back:
            # To the front, behind the jobs let in before it and not yet taken.
            queue = self._queues[rec.priority]
            k = 0
            for ahead in queue:
                gate_ahead = gates.get(ahead.task)
                if gate_ahead is None or ahead.id not in gate_ahead.returned:
                    break
                k += 1
            queue.insert(k, rec)
            if self._idle:
                _reschedule(self._idle.pop())

    # ------------------------------------------------------------------ moves

    def make_ready(self, rec: JobRecord, now: float) -> None:
        """Append an accepted job (due, retried, recovered) to its queue, past the bound:
        it was accepted already."""
        rec.ready_at = now
        self._queues[rec.priority].append(rec)
        if self._idle:
            _reschedule(self._idle.pop())

    def put_front(self, rec: JobRecord) -> None:
        """An interrupted job goes back first in its queue."""
        self._queues[rec.priority].appendleft(rec)

    def remove(self, rec: JobRecord) -> bool:
        """Take a QUEUED job out of its queue (cancelled, or withdrawn); False if it was
        not there.  Its room goes to the next producer in line."""
        gate = self.gates.get(rec.task) if self.gates else None
        try:
            self._queues[rec.priority].remove(rec)
        except ValueError:
            if gate is None or rec not in gate.aside:
                return False
            gate.aside.remove(rec)
            self._aside[rec.priority] -= 1
            self._room_changed(rec.priority)
        else:
            if gate is not None and rec.id in gate.returned:  # its reserved slot is free
                gate.returned.discard(rec.id)
                self._let_in(gate)
        self._wake_for_room(rec.priority)
        return True

    def release_delay_slot(self, rec: JobRecord) -> None:
        """A new delayed job came due or left: room for another delayed job."""
        if rec.holds_delay_slot:
            rec.holds_delay_slot = False
            self._delayed_new[rec.priority] -= 1
            lot = self._delay_room[rec.priority]
            if lot:
                lot.unpark()
            p = rec.priority
            if self._batch_room[p] and (
                    self.capacity - self._delayed_new[p] >= self._batch_need_delayed[p]):
                self._wake_batches(p)

    # ------------------------------------------------------------------ waiting for room

    def _room_changed(self, p: int) -> None:
        """Jobs set aside or a backlog of priority ``p`` changed: :attr:`_full_at`."""
        self._full_at[p] = 0 if self._backlog[p] else self.capacity - self._aside[p]

    def has_room(self, p: int) -> bool:
        return len(self._queues[p]) + self._aside[p] < self.capacity

    def full_reason(self, rec: JobRecord) -> str:
        """Why :meth:`admit` found no room for ``rec`` (for :class:`QueueFull`)."""
        backlog = self._backlog[rec.priority] if rec.status is not SCHEDULED else 0
        if backlog:
            return f"{backlog} jobs recovered from the store run first"
        return f"{self.capacity} jobs already waiting" + (
            " for a due time" if rec.status is SCHEDULED else ""
        )

    async def wait_for_room(self, rec: JobRecord) -> trio.lowlevel.ParkingLot | None:
        """Wait until ``rec`` may find room: return the lot that woke this call for room
        it now holds (give it back with :meth:`pass_room_on` when leaving without taking
        it), ``None`` when every waiter was woken at once.  Shutdown wakes every waiter
        (:meth:`close`): the caller looks at whether intake closed."""
        p = rec.priority
        if rec.status is SCHEDULED:
            lot = self._delay_room[p]
            await lot.park()
        elif self._backlog[p]:
            await self._backlog_lot[p].park()  # all are woken at once
            lot = None
        else:
            await self.park_for_room(p)
            lot = self._room[p]
        return lot

    async def park_for_room(self, p: int) -> None:
        """Wait until a worker takes a job of priority ``p`` (or a queued one leaves).

        ``_room_waiting[p]`` counts the producers parked here.  Whoever wakes one takes
        it off the count at once (:meth:`_wake_for_room`), so that the next job taken
        before the woken producer runs does not try to wake it again; a producer that
        leaves without being woken (cancelled) takes itself off.
        """
        self._room_waiting[p] += 1
        try:
            await self._room[p].park()
        except BaseException:
            self._room_waiting[p] -= 1
            raise

    def _wake_for_room(self, p: int) -> None:
        """Room for one job of priority ``p``: wake one parked producer, if any, and the
        parked batches once there is the room one of them needs."""
        batches = self._batch_waiting[p]
        if self._room_waiting[p] > batches and self._room[p].unpark():
            self._room_waiting[p] -= 1
        if batches and self.capacity - self._waiting(p) >= self._batch_need[p]:
            self._wake_batches(p)

    def pass_room_on(self, lot: trio.lowlevel.ParkingLot, p: int) -> None:
        """A producer woken from ``lot`` (priority ``p``'s room, or its delayed room)
        leaves without taking the room: wake the next one, if the room is still there
        (a wake-up when it is not would only send that one to the back of the line)."""
        if lot is self._room[p]:
            if len(self._queues[p]) + self._aside[p] < self.capacity and not self._backlog[p]:
                self._wake_for_room(p)
        elif self._delayed_new[p] < self.capacity:
            lot.unpark()

    def room_lot(self, p: int) -> trio.lowlevel.ParkingLot:
        return self._room[p]

    def parked_producers(self) -> tuple[int, int, int]:
        """Producers waiting for room in each ready queue and not yet woken."""
        w = self._room_waiting
        return w[0], w[1], w[2]

    def lengths(self) -> tuple[int, int, int]:
        q, a = self._queues, self._aside
        return len(q[0]) + a[0], len(q[1]) + a[1], len(q[2]) + a[2]

    def _waiting(self, p: int) -> int:
        """QUEUED jobs of priority ``p`` in memory: its ready queue and those set aside."""
        return len(self._queues[p]) + self._aside[p]

    def delayed_waiting(self) -> tuple[int, int, int]:
        d = self._delayed_new
        return d[0], d[1], d[2]

    # ------------------------------------------------------------------ idle workers

    async def wait_for_work(self) -> None:
        """Park the calling worker until a job is made ready (or :meth:`wake_workers`)."""
        task = trio.lowlevel.current_task()
        idle = self._idle
        idle.append(task)

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            idle.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def wake_workers(self) -> None:
        """Wake every idle worker (shutdown: they look at what to do next)."""
        while self._idle:
            _reschedule(self._idle.pop())

    # ------------------------------------------------------------------ a recovered backlog

    def set_backlog(self, p: int, count: int) -> None:
        """``count`` queued jobs of priority ``p`` wait in the store: new jobs of that
        priority wait until they are all loaded."""
        self._backlog[p] = count
        self._backlog_left[p] = count
        self._room_changed(p)

    def backlog(self, p: int) -> int:
        return self._backlog[p]

    def load(self, rec: JobRecord, now: float) -> None:
        """A queued job read from the store's backlog."""
        p = rec.priority
        self._backlog[p] = max(1, self._backlog[p] - 1)
        self._backlog_left[p] = max(0, self._backlog_left[p] - 1)
        self._room_changed(p)
        self._jobs[rec.id] = rec
        self.make_ready(rec, now)

    def skip(self, p: int) -> None:
        """A row of the backlog that memory knows better (or cannot run): one fewer."""
        self._backlog[p] = max(1, self._backlog[p] - 1)
        self._backlog_left[p] = max(0, self._backlog_left[p] - 1)
        self._room_changed(p)

    def room(self, p: int) -> int:
        return self.capacity - self._waiting(p)

    def queued(self, p: int) -> int:
        return self._waiting(p)

    async def wait_for_refill(self, p: int, low_water: int) -> None:
        """Wait until priority ``p``'s queue drained to ``low_water`` (or shutdown)."""
        event = trio.Event()
        self._refill[p] = event
        self._refill_low[p] = low_water
        await event.wait()

    def end_backlog(self, p: int) -> None:
        """The backlog of ``p`` is loaded (or shutdown stopped it): let new jobs in."""
        self._backlog[p] = self._backlog_left[p] = 0
        self._room_changed(p)
        self._refill[p] = None
        self._backlog_lot[p].unpark_all()
        self._wake_batches(p)

    # ------------------------------------------------------------------ counts, shutdown

    def depths(self) -> tuple[int, int, int]:
        """Jobs waiting per priority, the recovered backlog still in the store included."""
        q, b, a = self._queues, self._backlog_left, self._aside
        return len(q[0]) + b[0] + a[0], len(q[1]) + b[1] + a[1], len(q[2]) + b[2] + a[2]

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues) + sum(self._aside)

    def drop_all(self) -> list[JobRecord]:
        """Memory mode, the workers gone: empty the queues (the jobs set aside by a gate
        included) and return what they held."""
        dropped = [rec for q in self._queues for rec in q]
        for gate in self.gates.values():
            dropped.extend(gate.aside)
            gate.aside.clear()
            gate.returned.clear()
        for q in self._queues:
            q.clear()
        self._aside = [0, 0, 0]
        for p in range(3):
            self._room_changed(p)
        return dropped

    def close(self) -> None:
        """Intake closes: wake every parked producer (they raise ShuttingDown) and stop
        the backlog streamers."""
        self.closed = True
        for p, lot in enumerate(self._room):
            self._room_waiting[p] -= len(lot.unpark_all())
        for lot in (*self._delay_room, *self._backlog_lot, *self._batch_room):
            lot.unpark_all()
        for i, event in enumerate(self._refill):
            if event is not None:
                event.set()
                self._refill[i] = None


class TaskGate:
    """A task's ``concurrency`` limit in this process: how many of its jobs run, the
    jobs set aside while it was full (in the order they were picked), and those sent
    back to the front of their queue, each holding a slot until a worker takes it."""

    __slots__ = ("aside", "limit", "returned", "running")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self.aside: deque[JobRecord] = deque()
        self.returned: set[str] = set()

    def enter(self, rec: JobRecord) -> bool:
        """Whether ``rec`` (just picked) may run now; if so it holds a slot."""
        returned = self.returned
        if returned and rec.id in returned:
            returned.discard(rec.id)
        elif self.running + len(returned) >= self.limit or self.aside:
            return False  # full, or jobs set aside before it go first
        self.running += 1
        return True
