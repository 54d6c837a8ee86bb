"""The engine: a running queue's tasks, and the order in which they stop.

Everything here runs in tasks of the nurseries :func:`open_queue` opens::

    open_queue(registry, config)
    └── root nursery                 cancelled last
        ├── backend task             (with persist_path) the store's writer, group commit
        └── work nursery             cancelled first
            ├── timer task           due delays and retry backoff; periodic metrics events
            └── worker 0..N-1        take the next job from the backend, run it

Leaving the ``async with`` block is the graceful shutdown, in this order: intake closes
(producers waiting for room are refused), the timer stops, in-flight jobs get
``shutdown_timeout`` seconds, the work nursery is cancelled (interrupted jobs go back to
QUEUED, attempt counted; in memory mode they end FAILED, ``"aborted: shutdown timeout"``),
waiters are woken, and the backend writes its last state.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn

import trio

from ._backend import Backend
from ._config import QueueConfig
from ._events import Broadcaster
from ._exceptions import TrioQueueError
from ._intake import Intake
from ._local.backend import LocalBackend
from ._periodic import Periodic
from ._progress import Progress
from ._queue import JobQueue, QueueCore
from ._registry import TaskRegistry
from ._stats import Stats
from ._workers import ABORTED_AT_ONCE, Lifecycle, Workers

log = logging.getLogger("trioqueue")

__all__ = ["JobQueue", "open_queue"]  # JobQueue: the handle open_queue gives


class _UsedAsTheQueue(AttributeError, TypeError):
    """A queue's attribute looked up on :class:`QueueOpening`: a ``TypeError`` that is an
    ``AttributeError`` too, so that ``hasattr`` and ``getattr(x, name, default)`` answer
    as for any object without it."""


def _misused(not_: str, then: str, kind: type[TypeError] = TypeError) -> TypeError:
    return kind(f"open_queue() returns an async context manager, not {not_}: write "
                f"`async with trioqueue.open_queue(registry, config) as q:`{then}")


class QueueOpening:
    """What :func:`open_queue` returns: ``async with`` it opens the queue and gives its
    :class:`JobQueue`.  Awaited, entered with a plain ``with``, or used as the queue
    itself, it raises ``TypeError`` saying to write ``async with`` (Python's own errors
    for these name only the context manager's type; the queue's attributes raise one
    that is an ``AttributeError`` too, so ``hasattr`` says ``False``)."""

    __slots__ = ("_opening",)

    def __init__(self, opening: AbstractAsyncContextManager[JobQueue]) -> None:
        self._opening = opening

    async def __aenter__(self) -> JobQueue:
        return await self._opening.__aenter__()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        return await self._opening.__aexit__(exc_type, exc, tb)

    if not TYPE_CHECKING:  # mypy flags these mistakes itself: it must not see these

        def __getattr__(self, name: str) -> NoReturn:
            if not name.startswith("_") and hasattr(JobQueue, name):
                raise _misused("the queue", f" and use q.{name} in that block",
                               _UsedAsTheQueue)
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

        def __enter__(self) -> NoReturn:
            raise _misused("a context manager for `with`", "")

        def __exit__(self, *exc_info: object) -> NoReturn:  # (`with` looks up both first)
            raise _misused("a context manager for `with`", "")

        def __await__(self) -> NoReturn:
            raise _misused("an awaitable", " (not `await`)")


def open_queue(registry: TaskRegistry, config: QueueConfig | None = None) -> QueueOpening:
    """Open a job queue for the duration of an ``async with`` block.

    ::

        async with trioqueue.open_queue(registry, config) as q:
            job = await q.enqueue("send_email", {"to": "a@example.com"})

    Leaving the block is the graceful shutdown: new jobs are refused, the timer stops,
    in-flight jobs get ``shutdown_timeout`` seconds to finish, the rest are interrupted
    and recorded as QUEUED (memory mode: FAILED, ``"aborted: shutdown timeout"``), and
    (with ``persist_path``) the last snapshot is written.

    Errors while opening (a bad store file, ``StoreError``; on Redis,
    ``RedisUnavailable`` naming the URL) and exceptions from the body come out as
    themselves, not wrapped in an ``ExceptionGroup``; an engine task that crashes raises
    an ``ExceptionGroup`` holding its error (and the body's, if the body raised too).
    """
    return QueueOpening(_open_queue(registry, config))


@asynccontextmanager
async def _open_queue(
    registry: TaskRegistry, config: QueueConfig | None
) -> AsyncIterator[JobQueue]:
    if not isinstance(registry, TaskRegistry):
        raise TypeError(f"registry: expected a TaskRegistry, got {type(registry).__name__}")
    config = QueueConfig() if config is None else config
    if not isinstance(config, QueueConfig):
        raise TypeError(f"config: expected a QueueConfig, got {type(config).__name__}")
    async with _Run(registry, config).open() as q:
        yield q


class _Run:
    """One queue from open to close: builds its parts, runs its tasks, stops them."""

    def __init__(self, registry: TaskRegistry, config: QueueConfig) -> None:
        self._registry = registry
        self._config = config
        self._body_exc: BaseException | None = None
        self._timer_scope = trio.CancelScope()
        self._periodic_scope = trio.CancelScope()

    @asynccontextmanager
    async def open(self) -> AsyncIterator[JobQueue]:
        config, registry = self._config, self._registry
        store = None
        if config.persist_path is not None:
            from ._local.snapshot import Persistence

            store = await Persistence.open(config, registry)
        clock = trio.lowlevel.current_clock()
        # The run's clock, looked up once: trio.current_time() costs three lookups a call.
        wall = time.time() - clock.current_time()
        stats = Stats()
        life = Lifecycle()
        backend: Backend
        if config.redis_url is not None:
            from ._redis.backend import RedisBackend  # imports coredis: only when asked

            remote = RedisBackend(config, registry, stats, clock=clock, wall_offset=wall)
            backend = remote
        else:
            backend = local = LocalBackend(config, registry, stats, clock=clock,
                                           wall_offset=wall, store=store)
        workers = Workers(backend, stats, life, config, clock, wall)
        if config.redis_url is not None:
            remote.bind(workers.cancel)
        events = Broadcaster(lambda: clock.current_time() + wall)
        workers.progress = Progress(events, clock.current_time,
                                    lambda: clock.current_time() + wall,
                                    None if store is None else local.progress_changed)
        self._periodic = Periodic([registry.get(name) for name in registry],
                                  lambda: clock.current_time() + wall, wall, backend)
        core = QueueCore(registry, config, clock, wall, stats, backend,
                         Intake(registry, config, clock, wall), workers, events, life,
                         self._periodic.next_run)
        q = JobQueue(core)
        if config.redis_url is None:
            local.attach(q)
        self._core = core
        self._queue = q
        opened = False
        try:
            async with trio.open_nursery() as root:
                try:
                    await root.start(backend.run)
                except BaseException as exc:
                    if store is not None and store.store.was_clean and _stopped_by_hand(exc):
                        # Cancelled (or a Ctrl+C) as it opened: nothing read or written,
                        # the file is closed as clean as it was (else the next open
                        # recovers "after a crash").  One not clean keeps its recovery due.
                        await store.close()
                    named = self._named(exc)
                    if named is None:
                        raise
                    raise named from None
                # Said once the backend runs (Redis answered): a queue that could not
                # open says only why.
                opened = True
                log.info(
                    "trioqueue open: %s, capacity %d per priority, %s",
                    _counted(config.workers, "worker"), config.capacity,
                    f"store {config.persist_path} ({config.durability})" if store
                    else f"redis queue {config.queue_name!r}" if config.redis_url
                    else "memory only",
                )
                try:
                    async with trio.open_nursery() as work:
                        work.start_soon(self._run_timer)
                        work.start_soon(workers.progress.run)
                        try:
                            try:
                                await backend.recover()
                            except BaseException:
                                workers.done.set()  # none started: nothing to wait for
                                raise
                            # The workers once the queue is open: a job the store gave
                            # back starts no sooner than the body could close the
                            # queue (a server told to stop as it started).
                            for slot in workers.slots:
                                work.start_soon(workers.run, slot)
                            work.start_soon(self._run_periodic)
                            yield q
                        except BaseException as exc:  # re-raised below, outside the nurseries
                            self._body_exc = exc
                        finally:
                            await self._shutdown(work.cancel_scope)
                finally:
                    # The workers are gone, however the work nursery ended (even cancelled
                    # from outside): wake waiters, then write the final snapshot (shielded).
                    # close() runs whatever _closed_down() does: the backend's own tasks
                    # (in `root`) end only when it has.
                    try:
                        self._closed_down()
                    finally:
                        await backend.close()
        except BaseExceptionGroup as group:
            self._raise_from_group(group)
        finally:
            backend.abandon()  # only does something when close() never ran
            if opened:
                log.info("trioqueue closed")
        if self._body_exc is not None:
            raise self._body_exc

    def _named(self, exc: BaseException) -> BaseException | None:
        """A Redis that could not be opened (``exc``, alone or the one error in a group
        of the connection's nursery) as an error naming the URL; else ``None``."""
        config = self._config
        leaves = _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
        if config.redis_url is None or len(leaves) != 1:
            return None
        from ._redis._client import at_open

        return at_open(leaves[0], config.redis_url, config.queue_name)

    # ------------------------------------------------------------------ tasks

    async def _run_periodic(self) -> None:
        """Periodic tasks' runs (``schedule=``, ``every=``), started once the store's
        jobs are back; stopped with the timer."""
        with self._periodic_scope:
            await self._periodic.run(self._queue)

    async def _run_timer(self) -> None:
        with self._timer_scope:
            await self._timer()

    async def _timer(self) -> None:
        """Move due jobs (delays, retry backoff) into their ready queues, and send the
        periodic ``metrics`` events to the subscribers that asked."""
        core = self._core
        backend, events, clock = core.backend, core.events, core.clock
        interval = self._config.metrics_interval
        next_metrics = math.inf
        while True:
            now = clock.current_time()
            if not events.wants_metrics:
                next_metrics = math.inf
            elif next_metrics == math.inf:
                next_metrics = now + interval
            elif now >= next_metrics:
                events.publish(self._queue.metrics_event())
                next_metrics = now + interval
            next_due = await backend.promote(now)
            await backend.wait_timer(min(next_due, next_metrics))

    # ------------------------------------------------------------------ shutdown

    async def _shutdown(self, work_scope: trio.CancelScope) -> None:
        """Close intake, stop the timer, let in-flight work finish, then cancel."""
        core = self._core
        life, backend, workers, config = core.life, core.backend, core.workers, self._config
        life.closing = True
        life.stopping.set()
        backend.close_intake()  # parked producers see closing and raise ShuttingDown
        self._timer_scope.cancel()
        self._periodic_scope.cancel()
        self._periodic.stop()  # a run being enqueued is carried through, with its mark
        if config.drain and not backend.persistent:
            life.draining = True
        else:
            life.stop_taking = True
        backend.wake_workers()
        log.info(
            "trioqueue shutting down: %d in flight, %d queued, %d scheduled%s",
            workers.busy(), sum(backend.depths()), core.stats.scheduled,
            " (draining)" if life.draining else "",
        )
        with trio.move_on_after(config.shutdown_timeout) as waited:
            await workers.done.wait()
        if waited.cancelled_caught and workers.busy():
            log.warning(
                "trioqueue: %s still running after shutdown_timeout=%ss; interrupting "
                "them (%s)", _counted(workers.busy(), "job"), config.shutdown_timeout,
                "recorded as queued, the attempt counted: each runs again unless that "
                "attempt was its last, then it ends failed" if backend.persistent
                else "failed: aborted: shutdown timeout",
            )
        life.cutting_off = True
        work_scope.cancel()

    def _closed_down(self) -> None:
        """The workers are gone: wake everyone still waiting for a job to finish, count
        what memory mode drops, end the subscribers' channels."""
        core = self._core
        core.life.closed = True
        if core.workers.cut_at_once:  # (the shutdown's own log counted none of them)
            log.warning(
                "trioqueue: %s interrupted at once, without shutdown_timeout (the code "
                "around the queue was cancelled, or an engine task failed): %s",
                _counted(core.workers.cut_at_once, "running job"),
                "recorded as queued, the attempt counted" if core.backend.persistent
                else f"failed: {ABORTED_AT_ONCE}")
        core.backend.wake_all_waiters()
        queued, scheduled = core.backend.drop_leftovers()
        if queued or scheduled:
            core.life.dropped = frozenset((*queued, *scheduled))
            log.warning(
                "trioqueue (memory mode) dropped %s at shutdown: %d queued, %d scheduled "
                "(%s)", _counted(len(core.life.dropped), "job"), len(queued), len(scheduled),
                "drain=True runs queued jobs only within shutdown_timeout, and never "
                "scheduled ones; use persist_path to keep them" if self._config.drain
                else "use persist_path to keep them, or drain=True to run queued ones first",
            )
        core.events.close()

    def _raise_from_group(self, group: BaseExceptionGroup[BaseException]) -> None:
        """What comes out when an engine task raised.  The body's exception (caught
        apart) is never lost: alone if the group holds only the cancellation the error
        caused, else in a group with the tasks' errors."""
        leaves = _leaves(group)
        body = self._body_exc
        if body is not None and not _cancelled_only(body):
            if not leaves:
                return  # only Cancelled inside: raised below as the body's exception
            if isinstance(body, KeyboardInterrupt) and all(
                    isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
                return  # Ctrl+C, then again during the shutdown: one KeyboardInterrupt
            self._body_exc = None
            raise BaseExceptionGroup(
                "open_queue: the body raised, and an engine task failed", [body, *leaves]
            ) from None
        # An engine task's error (a store that fails to write; a Ctrl+C that another
        # SIGINT handler raised in a worker) cancels the body: the body's Cancelled is
        # then that error's doing, and the error is what comes out, by itself when it is
        # alone and ours or a KeyboardInterrupt.  Only Cancelled inside: an outer scope
        # cancelled us, and the body's Cancelled is raised below.
        if len(leaves) == 1 and isinstance(leaves[0], (TrioQueueError, KeyboardInterrupt)):
            self._body_exc = None
            raise leaves[0] from None
        if leaves or body is None:
            self._body_exc = None
            raise group

    _core: QueueCore
    _queue: JobQueue
    _periodic: Periodic


def _counted(n: int, noun: str) -> str:
    """``1 job``, ``2 jobs``: for the log."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _cancelled_only(exc: BaseException) -> bool:
    """``exc`` is a cancellation: ``Cancelled``, or a group of nothing else (what a
    nursery of the body's own raises when it is cancelled)."""
    return isinstance(exc, trio.Cancelled) or (
        isinstance(exc, BaseExceptionGroup) and not _leaves(exc))


def _stopped_by_hand(exc: BaseException) -> bool:
    """``exc`` is a cancel or a Ctrl+C (alone, or a group of nothing else)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(isinstance(leaf, KeyboardInterrupt) for leaf in _leaves(exc))
    return isinstance(exc, (trio.Cancelled, KeyboardInterrupt))


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        elif not isinstance(exc, trio.Cancelled):
            out.append(exc)
    return out
