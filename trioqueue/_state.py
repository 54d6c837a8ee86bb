"""The job lifecycle as a transition table (no I/O, no clock).

::

    (new) ──enqueue──▶ QUEUED ◀──due── SCHEDULED ◀──enqueue_delayed── (new)
                         │  ▲              ▲  │
                    start│  │interrupt     │  │cancel
                         ▼  │        retry_│  ▼
                       PROCESSING ─later───┘  CANCELLED ──requeue──▶ QUEUED
                         │   │   │
                complete │   │   └─cancel──▶ CANCELLED
                         ▼   └─fail_final─▶ FAILED ──requeue──▶ QUEUED
                     COMPLETED

    give_up: recovery finds QUEUED or PROCESSING with no attempts left ──▶ FAILED

Each move names the :class:`EventKind` that subscribers see.  :func:`move` is the only
code that changes a record's status (tests/test_state.py checks the source for any
other): a move the table does not allow is a bug caught where it happens, with the event
and the state in the message.  A job's first status (QUEUED, or SCHEDULED with a delay)
is given when its record is made; :func:`admitted` names that event.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from ._exceptions import InvalidTransition
from ._job import JobStatus

if TYPE_CHECKING:
    from ._record import JobRecord


class JobEvent(enum.StrEnum):
    """What happens to a job: the input of the table."""

    START = "start"
    COMPLETE = "complete"
    RETRY_LATER = "retry_later"
    FAIL_FINAL = "fail_final"
    CANCEL = "cancel"
    DUE = "due"
    REQUEUE = "requeue"
    INTERRUPT = "interrupt"
    GIVE_UP = "give_up"
    """Recovery finds a job whose attempts ran out while it ran (the process died, or
    shut down under it): it ends FAILED without running again."""


class EventKind(enum.StrEnum):
    """The event subscribers see for a change of status (``Event.type``)."""

    ENQUEUED = "enqueued"
    """New and QUEUED, or SCHEDULED and now due."""
    SCHEDULED = "scheduled"
    """New and waiting for its delay."""
    STARTED = "started"
    COMPLETED = "completed"
    RETRYING = "retrying"
    """An attempt failed; the job waits for its backoff (SCHEDULED)."""
    FAILED = "failed"
    CANCELLED = "cancelled"
    REQUEUED = "requeued"
    """Back to QUEUED: by ``retry()``, or interrupted (shutdown, a crash)."""
    RECOVERED = "recovered"
    """Back to QUEUED at the front of its priority, the attempt counted: its lease ran
    out (Redis: the node running it died or lost touch)."""


Q, S, P = JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.PROCESSING
C, F, X = JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED
K = EventKind

MOVES: dict[tuple[JobStatus, JobEvent], tuple[JobStatus, EventKind]] = {
    (Q, JobEvent.START): (P, K.STARTED),
    (Q, JobEvent.CANCEL): (X, K.CANCELLED),
    (S, JobEvent.DUE): (Q, K.ENQUEUED),
    (S, JobEvent.CANCEL): (X, K.CANCELLED),
    (P, JobEvent.COMPLETE): (C, K.COMPLETED),
    (P, JobEvent.RETRY_LATER): (S, K.RETRYING),
    (P, JobEvent.FAIL_FINAL): (F, K.FAILED),
    (P, JobEvent.CANCEL): (X, K.CANCELLED),
    (P, JobEvent.INTERRUPT): (Q, K.REQUEUED),
    (P, JobEvent.GIVE_UP): (F, K.FAILED),
    (Q, JobEvent.GIVE_UP): (F, K.FAILED),
    (F, JobEvent.REQUEUE): (Q, K.REQUEUED),
    (X, JobEvent.REQUEUE): (Q, K.REQUEUED),
}
"""(status, event) -> (the status after it, the event subscribers see)."""

TRANSITIONS: dict[tuple[JobStatus, JobEvent], JobStatus] = {
    key: after for key, (after, _) in MOVES.items()
}
"""(status, event) -> the status after it."""

_BY_EVENT: dict[JobEvent, dict[JobStatus, tuple[JobStatus, EventKind]]] = {
    event: {status: to for (status, e), to in MOVES.items() if e is event} for event in JobEvent
}
""":data:`MOVES` by event, then status: two dict lookups of cached string hashes, which
:func:`move` (twice per job on the hot path) does faster than a tuple key."""


def _refuse(status: JobStatus, event: JobEvent) -> InvalidTransition:
    if event is JobEvent.REQUEUE:  # what users call it: retry()
        return cannot_retry(status)
    return InvalidTransition(f"cannot {event.value} a job that is {status.value}", status)


def cannot_retry(status: JobStatus) -> InvalidTransition:
    """:meth:`~trioqueue.JobQueue.retry` of a job in ``status`` (not FAILED or CANCELLED)."""
    return InvalidTransition(f"cannot retry a job that is {status.value} (only failed or "
                             "cancelled jobs are retried)", status)


def move(rec: JobRecord, event: JobEvent) -> EventKind:
    """Apply ``event`` to ``rec``: set its status from the table and return the event
    kind to announce.  Raises :class:`InvalidTransition` (the record unchanged) when the
    table has no such move."""
    try:
        rec.status, kind = _BY_EVENT[event][rec.status]
    except KeyError:
        raise _refuse(rec.status, event) from None
    return kind


def transition(status: JobStatus, event: JobEvent) -> JobStatus:
    """The status after ``event`` happens to a job in ``status`` (changes nothing).

    Raises :class:`InvalidTransition` naming both when the table has no such move.
    """
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        raise _refuse(status, event) from None


def allowed(status: JobStatus, event: JobEvent) -> bool:
    return (status, event) in TRANSITIONS


def edge(status: JobStatus, event: JobEvent) -> tuple[JobStatus, EventKind]:
    """The table's move of ``event`` from ``status``: (the status after, its event kind).

    For the local backend's two hot moves (a worker starting a job, and completing it),
    which apply the edge they looked up here once instead of calling :func:`move` per job:
    a call is ~850 instructions, two per job 4 % of a no-op job (callgrind).  Raises
    :class:`InvalidTransition` for a move the table lacks, at import.
    """
    try:
        return MOVES[(status, event)]
    except KeyError:
        raise _refuse(status, event) from None


def admitted(status: JobStatus) -> EventKind:
    """The event of a new job accepted in ``status``: QUEUED, or SCHEDULED (delayed)."""
    return K.SCHEDULED if status is S else K.ENQUEUED
