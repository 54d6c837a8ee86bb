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

The engine asks :func:`transition` for every change, so a change that the table does not
allow is a bug caught where it happens, with the event and the state in the message.
"""

from __future__ import annotations

import enum

from ._exceptions import InvalidTransition
from ._job import JobStatus


class JobEvent(enum.StrEnum):
    START = "start"
    COMPLETE = "complete"
    RETRY_LATER = "retry_later"
    FAIL_FINAL = "fail_final"
    CANCEL = "cancel"
    DUE = "due"
    REQUEUE = "requeue"
    INTERRUPT = "interrupt"


Q, S, P = JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.PROCESSING
C, F, X = JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED

TRANSITIONS: dict[tuple[JobStatus, JobEvent], JobStatus] = {
    (Q, JobEvent.START): P,
    (Q, JobEvent.CANCEL): X,
    (S, JobEvent.DUE): Q,
    (S, JobEvent.CANCEL): X,
    (P, JobEvent.COMPLETE): C,
    (P, JobEvent.RETRY_LATER): S,
    (P, JobEvent.FAIL_FINAL): F,
    (P, JobEvent.CANCEL): X,
    (P, JobEvent.INTERRUPT): Q,
    (F, JobEvent.REQUEUE): Q,
    (X, JobEvent.REQUEUE): Q,
}


def transition(status: JobStatus, event: JobEvent) -> JobStatus:
    """The status after ``event`` happens to a job in ``status``.

    Raises :class:`InvalidTransition` naming both when the table has no such move.
    """
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        raise InvalidTransition(
            f"cannot {event.value} a job that is {status.value}", status
        ) from None


def allowed(status: JobStatus, event: JobEvent) -> bool:
    return (status, event) in TRANSITIONS
