"""The seam between the engine and where a queue's state lives.

The engine (:mod:`trioqueue._engine`, :mod:`trioqueue._workers`, :mod:`trioqueue._lifecycle`)
keeps what is the same for every backend: the nursery tree and the shutdown order,
intake checks, the workers with a cancel scope per job, timeouts, the retry policy,
event fan-out and metrics.  It reaches the queue's state only through :class:`Backend`.

The local backend (:class:`trioqueue._local.backend.LocalBackend`: memory, and memory
plus the SQLite snapshot) implements it in this process.  A shared backend (Redis, in
:mod:`trioqueue._redis`) implements the same operations with one script call per batch:
its claims and acks go through a local buffer that its own tasks fill and flush
(``finish_and_claim``), so the per-job methods below stay synchronous calls for the
workers whatever the backend.  docs/architecture.md draws the seam with each operation
and how each backend does it.

Every state change is a move of the transition table (:func:`trioqueue._state.move`),
made by the backend, which then calls the engine's :class:`ChangeHook` (installed with
:meth:`Backend.observe`) when someone listens.
"""

from __future__ import annotations

from typing import Protocol

import trio

from ._exceptions import StoreError
from ._job import Job, JobStatus
from ._record import JobRecord
from ._state import EventKind, JobEvent


class ChangeHook(Protocol):
    """``changed(kind, rec, worker, duration)``: ``rec`` made the move ``kind`` names
    (``worker`` and ``duration`` for ``started`` and the ends of an attempt)."""

    def __call__(self, kind: EventKind, rec: JobRecord, worker: int | None = None,
                 duration: float | None = None) -> None: ...


class Backend(Protocol):
    """Where one queue's jobs live: the operations the engine needs, no more.

    Times are trio times (the queue's clock) unless a name says ``wall``.
    """

    persistent: bool
    """Jobs outlive this process's memory: ids may be found by :meth:`find` when
    :meth:`get_nowait` does not know them."""
    durable: bool
    """An accepted job is not acknowledged until :meth:`wait_committed` returns."""
    lagging: bool
    """Not durable, but the store is too far behind: a job is acknowledged only once
    :meth:`wait_committed` returns, and ``enqueue_nowait`` is refused."""
    refusal: StoreError | None
    """Why new jobs are refused right now (the storage fails to write), else ``None``.
    A plain attribute: the engine reads it per enqueue."""

    def unavailable(self) -> str | None:
        """Why new jobs cannot be taken now (the storage fails to write; a shared
        backend does not answer), else ``None``: read per readiness probe, not per job."""

    def observe(self, hook: ChangeHook | None) -> None:
        """Call ``hook`` after every move from now on (``None``: nobody listens, and the
        backend skips the work of telling)."""

    async def events_flowing(self) -> None:
        """Return once ``hook`` is told of every move from now on, this node's and the
        others' (a shared backend's stream may start to be written only when someone
        reads it)."""

    # ------------------------------------------------------------------ lifecycle

    async def run(self, task_status: trio.TaskStatus[None] = ...) -> None:
        """The backend's own task (a store's writer, a Redis node's heartbeat and event
        reader), started in the root nursery before anything else and stopped by
        :meth:`close`; ``task_status.started()`` once it can serve."""

    async def recover(self) -> None:
        """Recovery at open: put back what the storage holds (called once, with the
        workers running)."""

    def close_intake(self) -> None:
        """Shutdown begins: wake every producer waiting for room (the engine refuses
        them) and stop loading work from storage."""

    def drop_leftovers(self) -> tuple[list[str], list[str]]:
        """At the end: the ids of the (queued, scheduled) jobs that end with the queue
        because nothing keeps them (memory mode), gone from it now; none when the storage
        keeps them."""

    def wake_all_waiters(self) -> None:
        """The workers are gone: wake every task in :meth:`JobQueue.wait`."""

    async def close(self) -> None:
        """The last step of shutdown (shielded): write what is left, release storage."""

    def abandon(self) -> None:
        """Release storage without writing (opening failed)."""

    # ------------------------------------------------------------------ intake

    def admit(self, rec: JobRecord) -> JobRecord | None:
        """Admit a new job: ``rec`` itself once accepted (QUEUED, or SCHEDULED with a
        delay; announced), the job holding ``rec.id`` if it has the same task and payload
        (existing), ``None`` when its priority is full.  Raises
        :class:`~trioqueue.DuplicateJob` when the id is taken by another job."""

    def admit_many(self, recs: list[JobRecord]) -> list[JobRecord] | None:
        """All or nothing (``enqueue_many``, ``POST /jobs/batch``): admit every new job of
        ``recs`` if each priority has room for all of them, else nothing and ``None``.
        The result holds, in order, each record as accepted or the job already holding
        its id (same task and payload).  Raises :class:`~trioqueue.DuplicateJob`, with
        nothing admitted, when an id is taken by another job."""

    async def wait_for_room_many(self, recs: list[JobRecord]) -> None:
        """Wait until :meth:`admit_many` may find room for all of ``recs`` (or intake
        closed); holds no room for the caller, who tries again."""

    def full_reason_many(self, recs: list[JobRecord]) -> str:
        """Why :meth:`admit_many` had no room for ``recs`` (the QueueFull message)."""

    async def wait_for_room(self, rec: JobRecord) -> trio.lowlevel.ParkingLot | None:
        """Wait until :meth:`admit` may find room for ``rec``; return what to hand to
        :meth:`pass_room_on` if the caller then leaves without admitting it."""

    def pass_room_on(self, lot: trio.lowlevel.ParkingLot, p: int) -> None:
        """A producer woken for room leaves without taking it: wake the next one."""

    def full_reason(self, rec: JobRecord) -> str:
        """Why :meth:`admit` had no room for ``rec`` (the QueueFull message)."""

    async def periodic_marks(self) -> dict[str, float]:
        """Per periodic task, the latest due time (wall seconds) enqueued for it, kept
        beyond its run's job (empty where nothing outlives the process)."""

    async def mark_periodic(self, name: str, due: float) -> None:
        """Keep ``due`` as ``name``'s latest enqueued due time (once its job is stored)."""

    async def wait_committed(self, rec: JobRecord | None = None) -> None:
        """Return once ``rec`` (every accepted change, for ``None``) is durable.  Raises
        :class:`~trioqueue.StoreError` when the write failed."""

    def not_confirmed(self, exc: StoreError) -> bool:
        """Whether the write that raised ``exc`` may still succeed (it timed out)."""

    def withdraw(self, rec: JobRecord) -> bool:
        """Take back a job whose commit failed if nobody started it; True if taken."""

    def repeat_of(self, stored: JobRecord, rec: JobRecord) -> JobRecord:
        """``stored`` if ``rec`` repeats it, else raise DuplicateJob."""

    # ------------------------------------------------------------------ workers

    def claim(self, worker: int, now: float) -> JobRecord | None:
        """The next job by the fair order, now PROCESSING for ``worker`` (attempt
        counted, ``started_at`` set, announced); ``None`` when nothing is ready."""

    async def wait_for_work(self) -> None:
        """Park the calling worker until :meth:`claim` may find a job."""

    def wake_workers(self) -> None:
        """Wake every parked worker (shutdown)."""

    def finish(self, rec: JobRecord, event: JobEvent, now: float, worker: int | None = None,
               duration: float | None = None) -> None:
        """End a job by ``event``: COMPLETE (``rec.result`` set), FAIL_FINAL
        (``rec.error`` set) or CANCEL; announce it and wake its waiters."""

    def retry_later(self, rec: JobRecord, due_wall: float, worker: int | None,
                    duration: float | None, *, timer_running: bool = True) -> None:
        """A failed attempt with retries left: SCHEDULED until ``due_wall``."""

    def release(self, rec: JobRecord, worker: int | None) -> None:
        """An interrupted job goes back to the front of its priority, QUEUED, its
        attempt counted."""

    def attempt_ended(self, rec: JobRecord) -> None:
        """A job of a task with a ``concurrency`` limit stopped running here (ended,
        failed, retried later, interrupted): its slot is free for the next job of the
        task.  The workers call it for limited tasks only, after the move."""

    async def commit_start(self, rec: JobRecord) -> None:
        """``rec.durable_start``: make this start durable before the handler runs."""

    # ------------------------------------------------------------------ the timer

    async def promote(self, now: float) -> float:
        """Move the SCHEDULED jobs due at ``now`` to their ready queues; return when the
        next one comes due (``inf``: none known)."""

    async def wait_timer(self, deadline: float) -> None:
        """Sleep until ``deadline``, or sooner when an earlier due time is scheduled or
        :meth:`wake_timer` is called."""

    def wake_timer(self) -> None: ...

    # ------------------------------------------------------------------ queries, control

    def get_nowait(self, job_id: str) -> JobRecord | None:
        """The job if this process holds it now (no I/O)."""

    async def find(self, job_id: str) -> JobRecord | None:
        """The job wherever it is (memory, then storage); ``None`` if nowhere."""

    async def list(self, status: JobStatus | None, limit: int, task: str | None = None,
                   before: str | None = None) -> tuple[list[Job], str | None]:
        """Up to ``limit`` jobs, newest first, only those in ``status``, of ``task`` and
        created before the job ``before`` if given; and the ``before`` of the next page
        (``None`` on the last).  Redis: the state layer's ``list_jobs(status, task,
        limit, before)`` answers the same pair."""

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a QUEUED or SCHEDULED job and return it; a PROCESSING job is returned
        as it is (the engine interrupts its handler).  Raises JobNotFound,
        InvalidTransition."""

    async def retry(self, job_id: str) -> JobRecord:
        """Re-queue a FAILED or CANCELLED job with fresh attempts, waiting for room.
        Raises JobNotFound, InvalidTransition, ShuttingDown."""

    def check_intake(self) -> None:
        """Raise ShuttingDown once intake closed, StoreError while storage fails."""

    def depths(self) -> tuple[int, int, int]:
        """Jobs waiting per priority (high, medium, low)."""
