"""What a :class:`~trioqueue.JobQueue` does differently on a shared backend (Redis).

``enqueue`` admits with one script call and polls for room; ``wait`` is woken by the
job's terminal event in the events stream; progress and the worker figures of the
metrics go through Redis.  :class:`JobQueue` puts :meth:`RemotePaths.enqueue` and
:meth:`RemotePaths.wait` in place of its own on the instance whose backend is remote;
``enqueue_nowait`` and ``enqueue_many_nowait`` stay, since the backend's ``admit`` and
``admit_many`` answer from the node's view of room (docs/redis-design.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import trio

from .._backend import Backend
from .._batch import Batches, admit_polling
from .._created import repeated
from .._events import Broadcaster
from .._exceptions import JobNotFound, QueueFull, ShuttingDown
from .._intake import Intake
from .._job import Job, Priority
from .._metrics import Metrics
from .._record import LABELS, JobRecord
from .._workers import Lifecycle, Workers
from .backend import RedisBackend
from .progress import RedisProgress

REMOTE_WAIT_POLL = 1.0
"""Seconds between two looks of :meth:`RemotePaths.wait` when no event woke it."""


class RemotePaths:
    """The Redis side of one :class:`JobQueue`.  Made by the queue; it wires progress,
    the events reader and the node's metrics to the backend as it is made."""

    def __init__(self, backend: Backend, intake: Intake, batches: Batches,
                 life: Lifecycle, workers: Workers, events: Broadcaster,
                 clock: trio.abc.Clock, wall_offset: float,
                 get: Callable[[str], Awaitable[Job]],
                 node_metrics: Callable[[], Metrics]) -> None:
        assert isinstance(backend, RedisBackend)
        self._backend = backend
        self._build = intake.build
        self._batches = batches
        self._life = life
        self._get = get
        """:meth:`JobQueue.get`."""
        workers.progress = RedisProgress(backend.send_progress, events, clock, wall_offset)
        backend.use_events(events)
        # Worker figures summed over the live nodes (docs/redis-design.md).
        backend.use_metrics(node_metrics)
        self.cluster_metrics = backend.cluster_metrics
        """:meth:`JobQueue.metrics`: this node's metrics with the queue's figures."""

    async def enqueue(
        self,
        task: str,
        payload: Any = None,
        *,
        priority: Priority | str | None = None,
        job_id: str | None = None,
        delay: float = 0.0,
        max_retries: int | None = None,
        timeout: float | None = None,
        wait_for_room: bool = True,
    ) -> Job:
        """:meth:`JobQueue.enqueue`: one script call admits the job; waiting for room
        polls (:func:`~trioqueue._batch.admit_polling`), the job made anew each time."""
        await trio.lowlevel.checkpoint_if_cancelled()
        backend = self._backend
        rec: JobRecord | None = None

        async def attempt() -> JobRecord | None:
            nonlocal rec
            rec = self._build(task, payload, priority, job_id, delay, max_retries, timeout)
            return await backend.admit_async(rec, count_rejected=not wait_for_room,
                                             given=job_id is not None)

        def full() -> QueueFull:
            assert rec is not None
            return QueueFull(f"priority {LABELS[rec.priority]}: {backend.full_reason(rec)}")

        got = await admit_polling(attempt, wait_for_room=wait_for_room,
                                  check=self._batches.check_intake, full=full)
        if got is not rec:  # Redis answered EXISTING: the job already holding the id
            repeated()
        return got.snapshot()

    async def wait_many(self, job_ids: Iterable[str]) -> list[Job]:
        """:meth:`JobQueue.wait_many`: every id watched at once and each job read as soon
        as the stream shows it ended (its result expires after ``result_ttl``: read at
        the end of a slower job, it could be gone), one script call for those that ended
        together; the jobs still waited for are all looked at every
        :data:`REMOTE_WAIT_POLL` seconds in case an event was missed."""
        ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
        backend = self._backend
        life = self._life
        if not ids:
            await trio.lowlevel.checkpoint()
            return []
        done: dict[str, Job] = {}
        ended = _Ended()
        watched = {job_id: _Watch(job_id, ended) for job_id in ids}
        for job_id, watch in watched.items():
            backend.watch_with(job_id, watch)
        try:
            await backend.events_flowing()
            look = list(watched)  # first, every job
            while True:
                if life.closed:
                    raise ShuttingDown(f"the queue closed before jobs {_few(ids, done)} "
                                       f"finished")
                for job_id in look:
                    # Watched afresh before the look, as wait() does, so that an end after
                    # the look (it was put back, or had not ended) wakes this again.
                    watch = watched[job_id]
                    backend.unwatch(job_id, watch)
                    watch.woken = False
                    backend.watch_with(job_id, watch)
                for job_id, rec in zip(look, await backend.find_many(look), strict=True):
                    if rec is None:
                        raise JobNotFound(f"job {job_id!r} not found")
                    if rec.status.terminal:
                        done[job_id] = rec.snapshot()
                if len(done) == len(watched):
                    break
                if not ended.ids:
                    with trio.move_on_after(REMOTE_WAIT_POLL):
                        await ended.event.wait()
                if ended.ids:
                    look = [job_id for job_id in dict.fromkeys(ended.ids)
                            if job_id not in done]
                else:  # the poll: every job still waited for
                    look = [job_id for job_id in watched if job_id not in done]
                ended.ids = []
                ended.event = trio.Event()
            if not all(watch.woken for watch in watched.values()):
                # Some were seen by looking, maybe before this node read their events:
                # the subscribers here get them first, as with a local backend.
                await backend.events_caught_up()
        finally:
            for job_id, watch in watched.items():
                backend.unwatch(job_id, watch)
        return [done[job_id] for job_id in ids]

    async def wait(self, job_id: str) -> Job:
        """:meth:`JobQueue.wait`: woken by the job's terminal event in the events stream
        (any node's), with a look every :data:`REMOTE_WAIT_POLL` seconds in case an
        event was missed (the stream was trimmed, or the reader reconnected)."""
        backend = self._backend
        life = self._life
        while True:
            if life.closed:  # what Redis still says of it, if it can be asked
                try:
                    job = await self._get(job_id)
                except ShuttingDown:
                    pass
                else:
                    if job.status.terminal:
                        return job
                raise ShuttingDown(f"the queue closed before job {job_id!r} finished")
            woken = backend.watch(job_id)
            try:
                await backend.events_flowing()  # the job's end is in the stream from now
                job = await self._get(job_id)
                if job.status.terminal:
                    if not woken.is_set():
                        # Seen by looking, maybe before this node read its events: the
                        # subscribers here get them first, as with a local backend.
                        await backend.events_caught_up()
                    return job
                if life.closed:
                    raise ShuttingDown(f"the queue closed before job {job_id!r} finished "
                                       f"(it is {job.status.value})")
                with trio.move_on_after(REMOTE_WAIT_POLL):
                    await woken.wait()
            finally:
                backend.unwatch(job_id, woken)


class _Ended:
    """``wait_many``'s jobs that the stream showed ended since its last look."""

    __slots__ = ("event", "ids")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.event = trio.Event()


class _Watch:
    """One job's watcher in ``wait_many``: its end is noted in :class:`_Ended`.  (The
    reader setting every watcher as it starts reads here as every job ended: each is
    looked at again.)"""

    __slots__ = ("ended", "job_id", "woken")

    def __init__(self, job_id: str, ended: _Ended) -> None:
        self.job_id = job_id
        self.ended = ended
        self.woken = False

    def set(self) -> None:
        self.woken = True
        self.ended.ids.append(self.job_id)
        self.ended.event.set()


def _few(ids: list[str], done: Mapping[str, Job]) -> str:
    """The ids not done yet, a few of them, for an error message."""
    left = [job_id for job_id in dict.fromkeys(ids) if job_id not in done]
    return ", ".join(map(repr, left[:5])) + (", ..." if len(left) > 5 else "")
