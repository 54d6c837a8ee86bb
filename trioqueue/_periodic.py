"""Periodic tasks: ``@registry.task(schedule="*/5 * * * *")`` (cron, read by
`cronsim <https://pypi.org/project/cronsim/>`_) and ``@registry.task(every=30.0)``.

One job per due time, its id ``"<task>@<due time, RFC 3339 UTC with milliseconds>"``
(``cleanup@2026-12-05T10:00:00.000Z``) and its payload ``null``.  The enqueue is
idempotent by that id, so a restart, or a second process on the same store or Redis,
never enqueues the same run twice; and since a run's job does not last for ever
(``retention``, ``result_ttl``), the backend keeps each task's latest enqueued due time
too (``Backend.periodic_marks``), written once the run's job is stored.  At start the
most recent due time at or before now is enqueued once unless it was before (one
catch-up run for whatever was missed, however many times were);
then each due time as it comes.  ``every=`` due times are the multiples of the interval
since the epoch.

The scheduler is one task of the engine's work nursery, driven by trio's clock (the
mock clock in tests), and it stops with the timer at shutdown.  A run that is being
enqueued then is carried through, its mark with it (shielded, for at most
:data:`STOP_GRACE` seconds from the stop): cut off between its job and its mark, a queue
reopened in the same period once the job is gone would run it again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import trio
from cronsim import CronSim, CronSimError

from ._exceptions import ShuttingDown, TrioQueueError
from ._job import MAX_ID_LENGTH, check_job_id

if TYPE_CHECKING:
    from ._backend import Backend
    from ._queue import JobQueue
    from ._registry import TaskSpec

log = logging.getLogger("trioqueue")

_ID_SUFFIX = len("@2026-12-05T10:00:00.000Z")
MARK_MIN_INTERVAL = 1.0
"""Seconds: an ``every=`` task at least this slow has its latest due time kept apart from
its jobs (``Backend.mark_periodic``, one write a run); a faster one relies on its run
ids alone (its last run's job outlives the interval but for ``result_ttl`` under it)."""


STOP_GRACE = 5.0
"""Seconds a run being enqueued at shutdown has to end, its mark written (a wait for room
ends at once then: the queue takes no more jobs)."""


MAX_EVERY = 1e10
"""The longest ``every=``, in seconds (about 300 years): its due times, multiples of it
since the epoch, stay dates a job's JSON can carry."""


NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
"""crontab(5)'s nicknames, as the five fields they stand for (cronsim reads only those).
Not ``@reboot``, which has no due times: a program enqueues such a job when it starts."""


def cron_fields(schedule: str) -> str:
    """``schedule`` as five cron fields (a nickname such as ``@daily`` as the fields it
    stands for; case does not count, as in crontab)."""
    return NICKNAMES.get(schedule.strip().lower(), schedule)


def check_periodic(name: str, schedule: object, every: object, tz: object) -> None:
    """Raise ``ValueError`` naming what is wrong with a periodic task's options."""
    where = f"task {name!r}"
    if schedule is not None and every is not None:
        raise ValueError(f"{where}: schedule and every: give one, not both")
    if every is not None:
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not (
            math.isfinite(every) and every > 0
        ):
            raise ValueError(f"{where}: every: expected a number of seconds > 0, got {every!r}")
        if not 0.001 <= every <= MAX_EVERY:
            # A run's id names its millisecond; and its due times must stay dates.
            raise ValueError(f"{where}: every: expected 0.001 to {MAX_EVERY:.0e} seconds, "
                             f"got {every!r}")
        if tz is not None:
            raise ValueError(f"{where}: tz: only with schedule=")
    if schedule is not None:
        if not isinstance(schedule, str):
            raise ValueError(f"{where}: schedule: expected a cron expression (str), "
                             f"got {type(schedule).__name__}")
        fields = len(cron_fields(schedule).split())
        if fields != 5:
            raise ValueError(f"{where}: schedule: expected five fields (minute, hour, day "
                             f"of month, month, day of week) or one of "
                             f"{', '.join(NICKNAMES)}, got {_got(schedule, fields)}")
        zone = _zone(where, tz)
        try:
            CronSim(cron_fields(schedule), datetime(2026, 1, 1, tzinfo=zone))
        except CronSimError as exc:
            raise ValueError(f"{where}: schedule: {schedule!r} is not a cron expression "
                             f"({exc})") from None
    try:
        check_job_id(name + "@2026-12-05T10:00:00.000Z")
    except TrioQueueError:
        raise ValueError(
            f"{where}: a periodic task's name must be usable in a job id: 1 to "
            f"{MAX_ID_LENGTH - _ID_SUFFIX} ASCII letters, digits and '_.:@-', starting "
            "with a letter or digit"
        ) from None


def _got(schedule: str, fields: int) -> str:
    """What a schedule of ``fields`` fields is, for the error: a nickname this does not
    know (``@reboot``, which means "at start" and has no due times) says so."""
    word = schedule.strip()
    if word.startswith("@") and fields == 1:
        if word.lower() == "@reboot":
            return (f"{schedule!r}, which has no due times (it means at start: enqueue its "
                    "job when your program starts)")
        return f"{schedule!r}, which is none of those nicknames"
    return f"{fields} in {schedule!r}"


def _zone(where: str, tz: object) -> ZoneInfo:
    if tz is None:
        return ZoneInfo("UTC")
    if not isinstance(tz, str):
        raise ValueError(f"{where}: tz: expected a time zone name (str), got {type(tz).__name__}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{where}: tz: unknown time zone {tz!r}") from None


def _ms(t: float) -> int:
    """A due time as its run id's millisecond (what a mark is compared by)."""
    return round(t * 1000)


def run_id(name: str, due: float) -> str:
    """The job id of ``name``'s run due at ``due`` (seconds since the epoch)."""
    ms = _ms(due)
    stamp = datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{name}@{stamp}.{ms % 1000:03d}Z"


FOLD_MARGIN = 3 * 3600.0
"""Seconds a local time can stand for more than one instant (the hour repeated when
clocks go back; two at most anywhere), with a margin: cronsim reads a time in that hour
as its first instance (it drops ``fold``), so a start handed to it may mean an instant
up to this much earlier than the one meant, and its answers are checked, not trusted."""


def last_due(spec: TaskSpec, now: float) -> float:
    """The latest due time of ``spec`` at or before ``now`` (seconds since the epoch)."""
    if spec.every is not None:
        return math.floor(now / spec.every) * spec.every
    assert spec.schedule is not None
    zone = _zone(spec.name, spec.tz)
    # cronsim's reverse iteration gives the times strictly before its start; started
    # past ``now`` by the margin, it cannot start before ``now`` whatever it makes of a
    # repeated hour, and the times after ``now`` are passed over.
    start = datetime.fromtimestamp(math.floor(now + FOLD_MARGIN), tz=zone)
    for prev in CronSim(cron_fields(spec.schedule), start, reverse=True):
        if (t := prev.timestamp()) <= now:
            return t
    raise AssertionError("unreachable: a cron expression that is due never")  # pragma: no cover


def next_due(spec: TaskSpec, after: float) -> float:
    """The first due time of ``spec`` strictly after ``after``."""
    if spec.every is not None:
        nxt = (math.floor(after / spec.every) + 1) * spec.every
        return nxt if nxt > after else nxt + spec.every
    assert spec.schedule is not None
    zone = _zone(spec.name, spec.tz)
    # In the repeated hour, cronsim reads ``after`` as an instant up to an hour earlier
    # and its first answers may not be after it (the hour's due time, once more): passed
    # over, or the scheduler would enqueue a due time in the past again and again.
    fields = cron_fields(spec.schedule)
    for when in CronSim(fields, datetime.fromtimestamp(math.floor(after), tz=zone)):
        if (t := when.timestamp()) > after:
            return t
    raise AssertionError("unreachable: a cron expression that is due never")  # pragma: no cover


class Periodic:
    """The scheduler of a queue's periodic tasks."""

    def __init__(self, specs: Sequence[TaskSpec], wall: Callable[[], float],
                 wall_offset: float, backend: Backend) -> None:
        self.specs = [s for s in specs if s.schedule is not None or s.every is not None]
        self._backend = backend
        self._wall = wall
        self._offset = wall_offset
        """wall time - trio time."""
        self._enqueuing: set[trio.CancelScope] = set()
        """The shielded scopes of the runs being enqueued (:meth:`stop` bounds them)."""
        self._stop_at = math.inf
        now = wall()
        self.next_run: dict[str, float] = {s.name: next_due(s, now) for s in self.specs}
        """Task name -> its next due time (seconds since the epoch); known from the open
        on (``run`` moves it on as runs are enqueued)."""

    async def run(self, queue: JobQueue) -> None:
        """Enqueue the catch-up runs, then each run as it comes due (the engine's task):
        one task per periodic task, so that a run waiting for room in its priority holds
        back no other task's runs."""
        if not self.specs:
            return
        try:  # what a store or Redis kept of the runs enqueued before this queue opened
            marks = await self._backend.periodic_marks()
        except TrioQueueError as exc:
            log.warning("trioqueue: periodic runs enqueued before cannot be read (%s); "
                        "their run ids still keep each run once while its job is kept", exc)
            marks = {}
        now = self._wall()
        async with trio.open_nursery() as nursery:
            for spec in self.specs:
                nursery.start_soon(self._run_task, queue, spec, marks.get(spec.name), now)

    async def _run_task(self, queue: JobQueue, spec: TaskSpec, mark: float | None,
                        now: float) -> None:
        """``spec``'s runs: the catch-up run, then each due time as it comes.  A run that
        waits for room stands for the due times that pass while it waits, as the catch-up
        run does for those missed while nothing ran (see :meth:`_enqueue`)."""
        name = spec.name
        due = last_due(spec, now)
        # The catch-up run, unless it was enqueued before: its job may be gone by now
        # (result_ttl, retention), and its id alone would let it run again.
        if mark is None or _ms(mark) < _ms(due):
            enqueued = await self._enqueue(queue, spec, due)
            if enqueued is None:
                return
            now = max(now, enqueued)
        self.next_run[name] = next_due(spec, max(now, self._wall()))
        while True:
            at = self.next_run[name]
            await trio.sleep_until(at - self._offset)
            enqueued = await self._enqueue(queue, spec, at)
            if enqueued is None:
                return
            self.next_run[name] = next_due(spec, max(enqueued, self._wall()))

    def stop(self) -> None:
        """At shutdown, with the engine's cancel of the scheduler: the runs being
        enqueued have :data:`STOP_GRACE` seconds more to end."""
        self._stop_at = trio.current_time() + STOP_GRACE
        for scope in self._enqueuing:
            scope.deadline = min(scope.deadline, self._stop_at)

    async def _enqueue(self, queue: JobQueue, spec: TaskSpec, due: float) -> float | None:
        """:meth:`_enqueue_run`, carried through a cancel (the shutdown's) but for
        :meth:`stop`'s grace: a run enqueued is marked."""
        if trio.current_time() >= self._stop_at:
            await trio.lowlevel.checkpoint()
            return None  # (a task that only got here after the grace: nothing begun)
        with trio.CancelScope(shield=True, deadline=self._stop_at) as scope:
            self._enqueuing.add(scope)
            try:
                return await self._enqueue_run(queue, spec, due)
            finally:
                self._enqueuing.discard(scope)
        log.warning("trioqueue: periodic run %s cut off at shutdown after %ss",
                    run_id(spec.name, due), STOP_GRACE)
        return None

    async def _enqueue_run(self, queue: JobQueue, spec: TaskSpec, due: float) -> float | None:
        """Enqueue ``spec``'s run due at ``due`` (a repeat returns the existing job); the
        due time enqueued, or None once the queue takes no more jobs.

        While the run waits for room in its priority, each due time that comes takes its
        place (the wait given up leaves no trace): the run enqueued is the latest due
        time's, standing for those that passed, and the nodes of one queue that wait
        wait for the same id, so that room made for one run enqueues one run, not each
        node's oldest due time."""
        while True:
            job_id = run_id(spec.name, due)
            later = next_due(spec, due)
            try:
                with trio.move_on_at(later - self._offset) as waiting:
                    await queue.enqueue(spec.name, None, job_id=job_id)
            except ShuttingDown:
                return None
            except TrioQueueError as exc:  # the store failing, an id taken by another job
                log.warning("trioqueue: periodic run %s not enqueued: %s", job_id, exc)
                return due
            if not waiting.cancelled_caught:
                break
            due = last_due(spec, max(later, self._wall()))
            self.next_run[spec.name] = due
        if spec.every is not None and spec.every < MARK_MIN_INTERVAL:
            return due  # its run ids are enough (and a write a run would be too many)
        try:
            await self._backend.mark_periodic(spec.name, due)
        except ShuttingDown:
            return None
        except TrioQueueError as exc:
            log.warning("trioqueue: periodic run %s enqueued, not marked: %s", job_id, exc)
        return due
