"""The workers: tasks that take jobs from the backend and run their handlers, each job
in its worker's cancel scope, under its timeout; and what an attempt's end means
(completed, retried after a backoff, failed, cancelled, interrupted).

The hot path avoids a scheduler round trip per job: a worker takes ready jobs without
waiting while there are any and checkpoints every :data:`CHECKPOINT_EVERY` jobs (or
sooner when a job took long).  Per job it makes three calls into the backend (take,
finish, and the enqueue's admit on the producer's side), each a part's own method.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import sys
import threading
import traceback as tb_module
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ._backend import Backend
from ._config import QueueConfig
from ._gil import lowered_switch_interval
from ._job import check_json, clean_text
from ._progress import Progress, Reporter, in_thread
from ._record import JobRecord
from ._state import JobEvent
from ._stats import Stats
from ._submit import NEVER_RUNS

log = logging.getLogger("trioqueue")

CHECKPOINT_EVERY = 64
"""A worker that keeps finding ready jobs yields to the scheduler at least this often."""
CHECKPOINT_AFTER = 0.001
"""... and whenever this many seconds passed since its last yield."""

COMPLETE = JobEvent.COMPLETE
ABORTED = "aborted: shutdown timeout"
"""The error of a job that memory mode's shutdown cut off."""
ABORTED_AT_ONCE = "aborted: the queue was cancelled"
"""Memory mode: the error of a job running when the code around ``open_queue`` was
cancelled (a second Ctrl+C, a deadline): the shutdown did not wait."""
_SIMPLE_RESULT = frozenset({type(None), str, bool})
"""Results kept without being checked (a store or Redis encodes them itself), and so
are ints smaller than :data:`_BIG_INT`."""
_BIG_INT = 10 ** sys.int_info.str_digits_check_threshold
"""An int of this size or more (641 digits and more) is checked like any result:
Python writes an int of more than ``sys.get_int_max_str_digits()`` digits (4,300 by
default, never less than 640) in no JSON, so ``return 10**5000`` must fail its attempt
(``InvalidJob: result: not JSON-serializable``) rather than reach a store's writer or
Redis' and take the queue down.  Two comparisons, for ints only."""


@attrs.define(eq=False)
class Lifecycle:
    """The queue's shutdown flags, in the order shutdown sets them."""

    closing: bool = False
    """Intake closed: new jobs are refused with ShuttingDown."""
    stopping: trio.Event = attrs.Factory(trio.Event)
    """Set when shutdown begins (a worker that passed on a Ctrl+C waits for it)."""
    draining: bool = False
    """Memory mode with ``drain=True``: workers run the queues empty, then stop."""
    stop_taking: bool = False
    """Workers take no new job."""
    cutting_off: bool = False
    """``shutdown_timeout`` passed: the work nursery is being cancelled under the jobs
    still running (memory mode ends them FAILED, a store puts them back QUEUED)."""
    closed: bool = False
    """The workers are gone."""
    dropped: frozenset[str] = frozenset()
    """Memory mode, once closed: the ids of the jobs dropped then (still queued or
    scheduled), which the queue no longer holds."""


class _ThreadAttempt:
    """A limited task's ``sync=True`` attempt in its thread.  Its task's slot stays taken
    until the thread ends, even when the worker lets go of the job first (a timeout,
    ``cancel()``, the shutdown: trio abandons the thread, which runs on), so that
    ``concurrency`` bounds the handlers really running.  ``state`` moves under ``lock``:
    WAITING (the thread has not started the handler), RUNNING, LET_GO (the worker let go
    while it ran: the thread's end frees the slot), ENDED (the thread is done, or the
    worker let go before it started: then the handler does not run at all)."""

    __slots__ = ("lock", "state")
    WAITING, RUNNING, LET_GO, ENDED = range(4)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = self.WAITING


@attrs.define(eq=False)
class WorkerSlot:
    index: int
    scope: trio.CancelScope | None = None
    current: JobRecord | None = None
    cancel_requested: bool = False
    started: float = 0.0


class Workers:
    """``config.workers`` worker tasks (started by :meth:`run`, one per slot)."""

    def __init__(self, backend: Backend, stats: Stats, life: Lifecycle, config: QueueConfig,
                 clock: trio.abc.Clock, wall_offset: float) -> None:
        self.slots = [WorkerSlot(i) for i in range(config.workers)]
        self._backend = backend
        self._stats = stats
        self._life = life
        self._clock = clock
        self._wall = wall_offset
        self._policy = config.retry_policy()
        self._random = random.Random()
        self._threads = lowered_switch_interval(config.switch_interval)
        """Around ``sync=True`` handlers: their thread gets the GIL from a busy loop."""
        self._alive = 0
        self._in_threads: dict[JobRecord, _ThreadAttempt] = {}
        """Limited tasks' ``sync=True`` attempts whose worker has not let go yet."""
        self.progress: Progress | None = None
        """``report_progress`` calls' state (the engine sets it)."""
        self.done = trio.Event()
        """Set when the last worker has returned."""
        self.cut_at_once = 0
        """Jobs interrupted by a cancel of the queue from outside, not by the shutdown's
        ``shutdown_timeout`` (a deadline around ``open_queue``, a second Ctrl+C)."""
        if not self.slots:  # workers=0: a Redis node that runs no jobs
            self.done.set()

    # ------------------------------------------------------------------ views

    def busy(self) -> int:
        """Workers running a job now."""
        return sum(1 for s in self.slots if s.current is not None)

    def running_priorities(self) -> list[int]:
        """The priority of each running job."""
        return [s.current.priority for s in self.slots if s.current is not None]

    def running_for(self, now: float) -> list[float]:
        """How long each busy worker has been running its job (trio time ``now``)."""
        return [now - s.started for s in self.slots if s.current is not None]

    def cancel(self, rec: JobRecord) -> None:
        """Interrupt the handler running ``rec`` (``cancel()`` of a PROCESSING job): its
        worker records it CANCELLED, unless the handler returned first."""
        for slot in self.slots:
            if slot.current is rec and slot.scope is not None:
                slot.cancel_requested = True
                slot.scope.cancel()
                return

    # ------------------------------------------------------------------ the tasks

    async def run(self, slot: WorkerSlot) -> None:
        """One worker task."""
        life = self._life
        if self.progress is not None:
            Reporter(self.progress, slot).install()  # this task's context: once, not per job
        self._alive += 1
        try:
            while not life.stop_taking:
                slot.cancel_requested = False
                with trio.CancelScope() as scope:
                    slot.scope = scope
                    await self._work(slot, scope)
                    return
                # Only our own scope's cancellation lands here: cancel() or a timeout.
                self._interrupted(slot)
        except BaseException:
            # Shutdown (or a crash) interrupts the job: never leave it PROCESSING.  In
            # memory mode it ends FAILED (put back, it would be dropped with the queued
            # jobs, the attempt it began lost without a trace); otherwise back to QUEUED
            # with the attempt counted.
            if slot.current is not None and not life.cutting_off:
                self.cut_at_once += 1  # cancelled from outside: said in the log at close
            if not self._backend.persistent:
                self._abort(slot, ABORTED if life.cutting_off else ABORTED_AT_ONCE)
            else:
                self._put_back(slot)
            raise
        finally:
            slot.scope = None
            self._alive -= 1
            if self._alive == 0:
                self.done.set()

    async def _work(self, slot: WorkerSlot, scope: trio.CancelScope) -> None:
        backend = self._backend
        claim = backend.claim
        finish = backend.finish
        life = self._life
        stats = self._stats
        # A latency sample goes to its priority's sampler (the totals merge the three).
        wait_adds = [s.add for s in stats.wait_p]
        run_adds = [s.add for s in stats.run_p]
        current_time = self._clock.current_time
        checkpoint = trio.lowlevel.checkpoint
        threads = self._threads
        index = slot.index
        every, after = CHECKPOINT_EVERY, CHECKPOINT_AFTER
        simple, big, below_big = _SIMPLE_RESULT, _BIG_INT, -_BIG_INT
        since = 0
        last_yield = current_time()
        now: float | None = None
        """The time the last job ended, while nothing has been awaited since: the next
        job's start (one clock read per job instead of two)."""
        failure: BaseException | None = None
        while True:
            if life.stop_taking:
                return
            start = current_time() if now is None else now
            rec = claim(index, start)
            if rec is None:
                if life.draining and not sum(backend.depths()):
                    # Nothing left: the workers parked for a set-aside job (its task's
                    # slot held by another attempt) look again, find none and stop too.
                    backend.wake_workers()
                    return
                await backend.wait_for_work()
                since = 0
                now = None
                last_yield = math.inf  # restarted by the next job's start time
                continue
            if last_yield > start:
                last_yield = start
            p = rec.priority
            wait_adds[p](start - rec.ready_at)
            slot.current = rec
            slot.started = start
            if rec.durable_start:
                await backend.commit_start(rec)
            spec = rec.spec
            assert spec is not None
            timeout = rec.timeout
            if timeout is not None:
                scope.deadline = start + timeout
            job = rec.snapshot()
            try:
                if spec.sync:
                    with threads:
                        result = await trio.to_thread.run_sync(
                            in_thread(rec, spec.handler if spec.concurrency is None
                                      else self._holding_the_slot(rec, spec.handler)), job,
                            abandon_on_cancel=True,
                        )
                else:
                    result = await spec.handler(job)
                kind = result.__class__
                if kind is int:
                    result_json = (None if below_big < result < big
                                   else check_json("result", result))
                else:
                    result_json = None if kind in simple else check_json("result", result)
            except BaseException as exc:  # whatever the handler raised fails the attempt
                if not isinstance(exc, Exception):  # ... but our scope's Cancelled, Ctrl+C
                    cancelled, ctrl_c = _passing_through(exc)
                    if cancelled is exc:
                        raise
                    if cancelled is not None:
                        raise cancelled from exc
                    if ctrl_c is not None:
                        await self._ctrl_c(slot, scope)
                        since = 0
                        now = None
                        last_yield = math.inf
                        continue
                failure = exc
            end = current_time()
            duration = end - start
            if rec.progress is not None:
                self._progress_ended(rec)
            slot.current = None
            stats.busy_time += duration
            run_adds[p](duration)
            if timeout is not None:
                scope.deadline = math.inf
            if failure is None:
                rec.result = result
                rec.result_json = result_json
                finish(rec, COMPLETE, end, index, duration)
            else:
                self._attempt_failed(slot, rec, failure, end, duration)
                failure = None
            if spec.concurrency is not None:  # a limited task: its next job may run
                self._slot_freed(rec)
            if (timeout is not None or slot.cancel_requested) and scope.cancel_called:
                # cancel() or the deadline arrived after the handler had returned: leave
                # this scope (slot.current is None, so nothing is interrupted) so that the
                # next job starts in a fresh one.
                await checkpoint()
                end = current_time()
            since += 1
            if since >= every or end - last_yield >= after:
                since = 0
                await checkpoint()
                last_yield = now = current_time()
            else:
                now = end

    # ------------------------------------------------------------------ an attempt's end

    def _attempt_failed(self, slot: WorkerSlot, rec: JobRecord, exc: BaseException,
                        end: float, duration: float) -> None:
        """The retry policy: SCHEDULED after a backoff while retries are left (waiting in
        the store, or dropped, when the queue is closing), else FAILED."""
        try:
            text = str(exc)
        except Exception:  # a broken __str__ must not take the worker down
            text = "<str() failed>"
        # The type's name first, so that an exception without a message is still named.
        # Lone surrogates escaped: SQLite (and Redis) keep UTF-8, and one of them in a
        # message made the store's write fail.
        rec.error = clean_text(f"{type(exc).__name__}: {text}" if text
                               else type(exc).__name__)
        rec.traceback = clean_text(
            "".join(tb_module.format_exception(type(exc), exc, exc.__traceback__)))
        backend = self._backend
        if rec.attempts > rec.max_retries or (  # (or a submitted call that never runs)
                exc.__class__ is TypeError and getattr(exc, NEVER_RUNS, False)):
            backend.finish(rec, JobEvent.FAIL_FINAL, end, slot.index, duration)
            # A dead letter: said at the default level (its retries are debug lines).
            log.warning("trioqueue: job %s (task %s) failed after %d attempt%s: %.200r",
                        rec.id, rec.task, rec.attempts, "" if rec.attempts == 1 else "s",
                        rec.error)
        elif not self._life.closing:
            delay = self._policy.delay(rec.attempts, self._random.random())
            backend.retry_later(rec, end + self._wall + delay, slot.index, duration)
        else:
            # Shutting down: the timer is stopped, so the retry waits as SCHEDULED in the
            # store (persistence) or is dropped with the other scheduled jobs (memory).
            delay = self._policy.delay(rec.attempts, 0.5)
            backend.retry_later(rec, end + self._wall + delay, slot.index, duration,
                                timer_running=False)

    def _interrupted(self, slot: WorkerSlot) -> None:
        """Our scope was cancelled under a job: ``cancel()`` (CANCELLED) or its timeout
        (a failed attempt)."""
        stopped = self._stop_attempt(slot)
        if stopped is None:
            return
        rec, end, duration = stopped
        if slot.cancel_requested:
            slot.cancel_requested = False
            self._backend.finish(rec, JobEvent.CANCEL, end, slot.index, duration)
        else:
            exc = TimeoutError(f"job exceeded its timeout of {rec.timeout} s")
            self._attempt_failed(slot, rec, exc, end, duration)
        self._slot_freed(rec)

    def _stop_attempt(self, slot: WorkerSlot) -> tuple[JobRecord, float, float] | None:
        """Take the worker's job off it when its attempt stops short (cancelled, timed
        out, aborted): held-back progress goes out, the run time is counted.  Returns
        ``(rec, end, duration)``, or ``None`` when the worker had no job."""
        rec = slot.current
        if rec is None:
            return None
        if rec.progress is not None:
            self._progress_ended(rec)
        slot.current = None
        end = self._clock.current_time()
        duration = end - slot.started
        self._stats.busy_time += duration
        self._stats.run_p[rec.priority].add(duration)
        return rec, end, duration

    def _slot_freed(self, rec: JobRecord) -> None:
        """The worker let go of ``rec``: a limited task's next job may run, once the
        thread of a ``sync=True`` handler has ended too."""
        if rec.spec is not None and rec.spec.concurrency is not None:
            attempt = self._in_threads.pop(rec, None)
            if attempt is not None:
                with attempt.lock:
                    if attempt.state == attempt.RUNNING:
                        attempt.state = attempt.LET_GO
                        return  # _thread_let_go frees it
                    attempt.state = attempt.ENDED
            self._backend.attempt_ended(rec)

    def _holding_the_slot(self, rec: JobRecord, handler: Callable[[Any], Any]
                          ) -> Callable[[Any], Any]:
        """``handler`` for its thread, telling the worker when it ends (_ThreadAttempt)."""
        attempt = self._in_threads[rec] = _ThreadAttempt()
        token = trio.lowlevel.current_trio_token()

        def run(job: Any) -> Any:
            with attempt.lock:
                if attempt.state == attempt.ENDED:
                    return None  # let go of before it started: not run (nobody waits)
                attempt.state = attempt.RUNNING
            try:
                return handler(job)
            finally:
                with attempt.lock:
                    let_go = attempt.state == attempt.LET_GO
                    attempt.state = attempt.ENDED
                if let_go:
                    try:
                        token.run_sync_soon(self._thread_let_go, rec)
                    except trio.RunFinishedError:
                        pass  # the program's trio.run is over: nothing to free

        return run

    def _thread_let_go(self, rec: JobRecord) -> None:
        """The thread of an attempt its worker let go of has ended: free its slot."""
        if not self._life.closed:
            self._backend.attempt_ended(rec)

    def _progress_ended(self, rec: JobRecord) -> None:
        """``rec``'s attempt ended: its held-back progress goes out now."""
        if self.progress is not None:
            self.progress.ended(rec)

    def _put_back(self, slot: WorkerSlot) -> None:
        """The worker's job was interrupted (not failed): back to the front of its queue
        as QUEUED, the attempt counted."""
        rec = slot.current
        if rec is not None:
            slot.current = None
            self._slot_freed(rec)  # first: the interrupted job goes back in front of any
            self._backend.release(rec, slot.index)  # job of its task let in here

    def _abort(self, slot: WorkerSlot, error: str) -> None:
        """Memory mode, the shutdown interrupts a running job: it ends FAILED with
        ``error`` (and its ``failed`` event)."""
        stopped = self._stop_attempt(slot)
        if stopped is None:
            return
        rec, end, duration = stopped
        rec.error = error
        rec.traceback = None
        self._backend.finish(rec, JobEvent.FAIL_FINAL, end, slot.index, duration)
        self._slot_freed(rec)

    async def _ctrl_c(self, slot: WorkerSlot, scope: trio.CancelScope) -> None:
        """A Ctrl+C landed in this worker's handler (trio raises it in whichever task
        runs when the signal comes): hand it to trio's main task, and put the job back
        once the shutdown begins.

        The Ctrl+C is the program's, not the job's: it must start the graceful shutdown
        (as when it reaches the main task, the body of ``open_queue`` usually) and must
        not count as the job's failure.  Until the shutdown begins the job stays this
        worker's, as PROCESSING, so that no worker starts it again meanwhile (a handler
        that computes without yielding would hold the event loop again, and the main
        task would never see the Ctrl+C); then it goes back to the front of its queue as
        QUEUED, the attempt counted, like every job a shutdown interrupts.  A program
        that catches the KeyboardInterrupt and carries on has this worker and job held
        until the queue closes.  With a SIGINT handler other than trio's, the
        ``KeyboardInterrupt`` comes out of here and the worker ends with it: the queue
        then closes at once, every running job put back the same way.
        """
        _sigint_again()
        scope.deadline = math.inf
        await self._life.stopping.wait()  # cancel() of the job ends it CANCELLED (run)
        self._put_back(slot)


def _from_sigint(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by the process's SIGINT handler: a Ctrl+C, not a
    ``raise KeyboardInterrupt`` in the code it went through.

    A Python signal handler runs on top of whatever frame was running when the signal
    came, so what it raises has the handler's own frame as the last entry of its
    traceback.  Trio's handler (``trio.run`` installs it in the main thread) raises
    ``KeyboardInterrupt`` that way when the signal lands in code that is not
    KI-protected, such as a job's handler; a handler's own ``raise KeyboardInterrupt``
    ends in the handler's frame.  A handler written in C (``signal.default_int_handler``)
    leaves no frame, but trio replaces that one while it runs.
    """
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    handler = signal.getsignal(signal.SIGINT)
    return tb.tb_frame.f_code is getattr(handler, "__code__", None)


def _passing_through(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """What of a handler's ``BaseException`` that is not an ``Exception`` is not the
    attempt's failure: ``(cancelled, ctrl_c)``.

    ``cancelled`` is a ``trio.Cancelled``, or the part of an exception group that is
    (a handler's nursery cancelled by our scope: cancel(), the timeout, shutdown);
    ``ctrl_c`` a ``KeyboardInterrupt`` from the SIGINT handler (see :func:`_from_sigint`),
    or the part of a group that is.  Both ``None``: the handler's own, a failure.
    """
    if isinstance(exc, trio.Cancelled):
        return exc, None
    if isinstance(exc, KeyboardInterrupt):
        return None, exc if _from_sigint(exc) else None
    if isinstance(exc, BaseExceptionGroup):
        cancelled = exc.split(trio.Cancelled)[0]
        if cancelled is not None:
            return cancelled, None
        return None, exc.split(lambda e: isinstance(e, KeyboardInterrupt) and _from_sigint(e))[0]
    return None, None


@trio.lowlevel.enable_ki_protection
def _sigint_again() -> None:
    """Raise SIGINT again, from KI-protected code.

    Trio's SIGINT handler, finding the signal in protected code, does what it does with
    a Ctrl+C that arrives while trio's own code runs: it raises ``KeyboardInterrupt`` in
    the main task at its next checkpoint (the body of ``open_queue``, typically, whose
    exit is the graceful shutdown).  Any other SIGINT handler raises here again.
    """
    signal.raise_signal(signal.SIGINT)
