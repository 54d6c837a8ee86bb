"""The values the Redis state layer takes and answers (:mod:`._state` runs the scripts).

Validated inputs (:class:`NewJob`, :class:`Outcome`), what the scripts answer
(:class:`Admitted`, :class:`FinishClaim`, :class:`Counts`, :class:`StreamEvent`...), and
how a record in script replies (:data:`RECORD_FIELDS` order) becomes a
:class:`~trioqueue.Job`.  Times in Redis are milliseconds of Redis' clock; the values
here carry seconds.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import attrs

from .._exceptions import InvalidJob, StoreError
from .._job import Job, JobStatus, Priority, canonical_json, check_job_id, check_json, clean_text

log = logging.getLogger("trioqueue")

MAX_BATCH = 1000
"""Most jobs one :meth:`RedisState.enqueue` call takes (a script blocks Redis while it
runs)."""
MAX_CLAIM = 1000
"""Most claims (and most outcomes) one :meth:`RedisState.finish_and_claim` call takes."""

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,99}\Z")
_LABELS = ("high", "medium", "low")
_STATUSES = {s.value: s for s in JobStatus}
_PRIORITIES = (Priority.HIGH, Priority.MEDIUM, Priority.LOW)

RECORD_FIELDS = (
    "id", "task", "payload", "prio", "status", "attempts", "max_retries", "timeout",
    "created_at", "scheduled_for", "started_at", "finished_at", "result", "error",
    "traceback", "fence", "owner", "cancel_requested", "progress",
)
"""The order of a record's fields in script replies (``FIELDS`` in common.lua)."""


def check_name(field: str, value: object) -> str:
    """A queue or node name: 1-100 ASCII letters, digits and ``_ . : -``."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(
            f"{field}: expected 1-100 ASCII letters, digits and '_.:-' (starting with a "
            f"letter or digit), got {value!r}"
        )
    return value


class CorruptRecord(ValueError):
    """A record read from Redis does not have the shape trioqueue writes."""

    def store_error(self) -> StoreError:
        """What the queue's callers get for it: a :class:`StoreError` naming it."""
        return StoreError(f"redis: {self}")


# ---------------------------------------------------------------------------- values


def canonical_digest(task: str, payload: Any) -> str:
    """sha1 of the task name and the payload as canonical JSON (sorted keys, compact):
    the same body gives the same digest whatever the key order or the node."""
    canonical = canonical_json(payload)
    return hashlib.sha1(f"{len(task)}:{task}:{canonical}".encode()).hexdigest()


@attrs.frozen
class NewJob:
    """A job to enqueue, validated.  Build it with :meth:`build`."""

    id: str
    task: str
    payload: Any = attrs.field(eq=False)
    payload_json: str
    digest: str
    priority: Priority
    max_retries: int
    timeout: float | None
    delay_ms: int

    @classmethod
    def build(
        cls,
        job_id: str,
        task: str,
        payload: Any = None,
        *,
        priority: Priority | str = Priority.MEDIUM,
        max_retries: int = 3,
        timeout: float | None = None,
        delay: float = 0.0,
    ) -> NewJob:
        """Validate every field; raise :class:`InvalidJob` naming the bad one."""
        check_job_id(job_id)
        if not isinstance(task, str) or not task or clean_text(task) != task:
            raise InvalidJob(f"task: expected a non-empty string, got {task!r}")
        prio = Priority.coerce(priority)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidJob(f"max_retries: expected an integer >= 0, got {max_retries!r}")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or not (timeout > 0 and math.isfinite(timeout))
        ):
            raise InvalidJob(f"timeout: expected a number of seconds > 0, got {timeout!r}")
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not (
            delay >= 0 and math.isfinite(delay)
        ):
            raise InvalidJob(f"delay: expected a number of seconds >= 0, got {delay!r}")
        payload_json = check_json("payload", payload)
        return cls(
            job_id, task, payload, payload_json, canonical_digest(task, payload), prio,
            max_retries, None if timeout is None else float(timeout),
            math.ceil(delay * 1000) if delay else 0,
        )


class Admission(enum.StrEnum):
    """What :meth:`RedisState.enqueue` did with one job."""

    ACCEPTED = "accepted"
    """Stored, QUEUED (or SCHEDULED when delayed)."""
    EXISTING = "existing"
    """A job with this id and the same task and payload exists: that one is returned."""
    DUPLICATE = "duplicate"
    """A job with this id exists with another task or payload: nothing changed."""
    FULL = "full"
    """Its priority had no room: nothing stored."""
    ABORTED = "aborted"
    """All-or-nothing batch refused because of another job's duplicate id."""


@attrs.frozen
class Admitted:
    code: Admission
    job: Job | None
    """The stored job (ACCEPTED, EXISTING), else ``None``."""


@attrs.frozen
class RoomView:
    """A priority's fill as an enqueue left it: what a node's ``enqueue_nowait`` checks."""

    ready: tuple[int, int, int]
    """Per priority (high, medium, low): its queued jobs (the ready list's length, and
    those set aside for their task's ``concurrency``): a new ready job fits while this is
    below the capacity."""
    delayed: tuple[int, int, int]
    """New delayed jobs waiting, per priority (their own bound)."""
    seq: int = 0
    """The queue's last event number when this was read: of two views, the one with the
    higher ``seq`` is the newer."""

    @classmethod
    def parse(cls, v: Sequence[Any]) -> RoomView | None:
        if not v:
            return None
        return cls((int(v[0]), int(v[1]), int(v[2])), (int(v[3]), int(v[4]), int(v[5])),
                   int(v[6]))


@attrs.frozen
class Admissions:
    jobs: list[Admitted]
    """One answer per job, in order."""
    view: RoomView | None
    """The room after the call (``None``: no call was made)."""


class StoredJob(NamedTuple):
    """A job as Redis holds it, with what only the Redis backend tracks (a named tuple:
    one is built per claimed job)."""

    job: Job
    fence: int
    """Incremented at every claim and reap: acks and renewals must carry the current one."""
    owner: str | None
    """The node that claimed it last."""
    cancel_requested: bool


OutcomeKind = Literal["completed", "failed", "retry", "cancelled", "released", "unstarted",
                      "progress"]
_KINDS = frozenset(("completed", "failed", "retry", "cancelled", "released", "unstarted",
                    "progress"))


class Outcome(NamedTuple):
    """How one claimed job ended, for :meth:`RedisState.finish_and_claim`.  Build it with
    the class methods."""

    id: str
    fence: int
    kind: OutcomeKind
    value: str = ""
    error: str = ""
    traceback: str = ""
    duration: float | None = None

    def but(self, **changes: Any) -> Outcome:
        """This outcome with ``changes`` (its fields by name)."""
        return self._replace(**changes)

    @classmethod
    def completed(cls, job_id: str, fence: int, result: Any, duration: float | None = None,
                  result_json: str | None = None) -> Outcome:
        """``result_json``: the result's JSON text if the worker made it already."""
        return cls(job_id, fence, "completed",
                   _result_json(result) if result_json is None else result_json,
                   "", "", duration)

    @classmethod
    def failed(cls, job_id: str, fence: int, error: str, traceback: str = "",
               duration: float | None = None) -> Outcome:
        return cls(job_id, fence, "failed", "", clean_text(error), clean_text(traceback),
                   duration)

    @classmethod
    def retry(cls, job_id: str, fence: int, delay: float, error: str, traceback: str = "",
              duration: float | None = None) -> Outcome:
        """Failed, to run again after ``delay`` seconds (the caller's backoff)."""
        if not (delay >= 0 and math.isfinite(delay)):
            raise ValueError(f"delay: expected a number of seconds >= 0, got {delay!r}")
        return cls(job_id, fence, "retry", str(math.ceil(delay * 1000)), clean_text(error),
                   clean_text(traceback), duration)

    @classmethod
    def cancelled(cls, job_id: str, fence: int, duration: float | None = None) -> Outcome:
        return cls(job_id, fence, "cancelled", "", "", "", duration)

    @classmethod
    def released(cls, job_id: str, fence: int) -> Outcome:
        """Not run to the end (shutdown): back to the front of its priority, the attempt
        counted (it ran)."""
        return cls(job_id, fence, "released")

    @classmethod
    def unstarted(cls, job_id: str, fence: int) -> Outcome:
        """Claimed but never started (a shutdown, a lease that ended first): back to the
        front of its priority, its claim's attempt not counted."""
        return cls(job_id, fence, "unstarted")

    @classmethod
    def progress(cls, job_id: str, fence: int, fraction: float, note: str | None
                 ) -> Outcome:
        """Not an end: the running job's progress (its record's ``progress`` and a
        ``progress`` event); the job stays PROCESSING."""
        value = {"fraction": fraction, "note": None if note is None else clean_text(note)}
        return cls(job_id, fence, "progress", _dumps(value))


@attrs.frozen
class FinishClaim:
    results: list[str]
    """Per outcome, in order: ``"ok"``, ``"stale"`` (refused: the lease moved on) or
    ``"cancelled"`` (a retry or release turned into CANCELLED: cancel was requested)."""
    claimed: list[StoredJob]
    """The jobs now PROCESSING under this node, in claim (fairness) order."""
    view: RoomView | None = None
    """The room after the call (for a node's ``enqueue_nowait``)."""
    parked: list[str] = attrs.field(factory=list)
    """The tasks (not in the call's ``tasks``) of which this call parked jobs."""
    suspect: list[str] = attrs.field(factory=list)
    """Claimed ids that came back unstarted from a lost node before: a node makes their
    start known to Redis before it runs them."""


@attrs.frozen
class Renewal:
    lost: list[str]
    """Ids this node no longer holds: stop running them, their result would be refused."""
    cancel_requested: list[str]
    """Held ids whose cancellation was requested."""


NODE_FORGET = 3600.0
"""Seconds after its last heartbeat that a node's entry in ``nodes`` and ``beats`` goes
(a node stopped cleanly removes its own; one killed never did, and they piled up)."""

@attrs.frozen
class Reaped:
    requeued: list[str]
    failed: list[str]
    cancelled: list[str]
    unstarted: list[str] = attrs.field(factory=list)
    """Those of ``requeued`` that came back unstarted (held by their node, never started
    as far as Redis knew): their attempt taken back."""
    behind: bool = False
    """An index of finished jobs had as many expired entries as one call drops, and may
    have more: reap again soon."""

    def report(self) -> None:
        """Say in the log what the reaper did: the jobs that ended FAILED (their
        attempts spent with a node lost) each time, as a handler's last failure is; the
        rest in one line."""
        if self.failed:
            log.warning("trioqueue: %d job(s) ended failed, their node lost during their "
                        "last attempt (LeaseExpired): %s", len(self.failed),
                        some(self.failed))
        if self.requeued or self.cancelled:
            log.info("trioqueue: a lost node's jobs recovered: %d back to queued (%d of "
                     "them never started), %d cancelled as asked", len(self.requeued),
                     len(self.unstarted), len(self.cancelled))


def some(ids: list[str], most: int = 10) -> str:
    """``ids`` for a log line: the first ``most``, and how many more."""
    shown = ", ".join(ids[:most])
    return shown if len(ids) <= most else f"{shown} and {len(ids) - most} more"


UNSTARTED_MAX = 5
"""How many times a job may come back unstarted from a lost node (its ``orphaned``
count); past it, the reaper counts its attempt as any other's (docs/redis-design.md)."""


@attrs.frozen
class Promoted:
    promoted: int
    next_due: float | None
    """Seconds since the epoch (Redis' clock) of the earliest job not due yet."""


@attrs.frozen
class Counts:
    queued: tuple[int, int, int]
    """LLEN of the ready lists, by priority (high, medium, low)."""
    scheduled: int
    processing: int
    totals: Mapping[str, int]
    """Cluster-wide counters, ``"<name>:<priority label>"``: enqueued, completed, failed,
    cancelled, retried, rejected, recovered (plus ``"seq"``, the last event number)."""
    delayed: tuple[int, int, int]
    """New delayed jobs waiting, by priority (bounded by the capacity, like the engine)."""
    nodes: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    """Live nodes (asked for by ``counts(node_age)``) -> the info of their last
    heartbeat."""

    def total(self, name: str) -> int:
        return sum(self.totals.get(f"{name}:{label}", 0) for label in _LABELS)


@attrs.frozen
class NodeInfo:
    node: str
    heartbeat: float
    """Seconds since the epoch, Redis' clock."""
    info: Mapping[str, Any]


@attrs.frozen
class StreamEvent:
    """One entry of the ``events`` stream."""

    stream_id: str
    seq: int
    """Queue-wide event number: increases by one per event."""
    type: str
    at: float
    job_id: str
    task: str
    priority: str
    status: str
    attempt: int
    node: str
    error: str | None
    duration: float | None
    progress: Mapping[str, Any] | None = None
    """A ``progress`` event's ``{"fraction", "note"}``."""


@attrs.frozen
class EventBatch:
    events: list[StreamEvent]
    last_id: str
    dropped: int
    """Events trimmed from the stream before this reader got to them (0: no gap)."""
    unreadable: list[CorruptRecord] = attrs.field(factory=list)
    """Entries of the stream passed over because they are not events as trioqueue writes
    them (written by something else, or by a version that wrote other fields)."""


# ---------------------------------------------------------------------------- records


_strict_json = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode


def _result_json(result: Any) -> str:
    """``check_json("result", result)`` (the same text, the same error) without building
    an encoder per call: ~5 µs less per job on the hot path."""
    if result is None:
        return "null"
    try:
        return _strict_json(result)
    except (TypeError, ValueError):
        return check_json("result", result)  # raises InvalidJob, worded as elsewhere


def _ms(value: str | None) -> float | None:
    return None if value is None or value == "" else int(value) / 1000


RecordParts = tuple[str, str, Any, int, JobStatus, int, int, float | None, float,
                    float | None, float | None, float | None, Any, str | None, str | None,
                    Any, int, str | None, bool]
"""A record's values, parsed: the :class:`~trioqueue.Job` fields in order (but the
priority as 0-2), then fence, owner and cancel_requested."""


def record_parts(r: Sequence[Any]) -> RecordParts:
    """A record in :data:`RECORD_FIELDS` order (as the scripts return it), parsed and
    checked (:class:`CorruptRecord`); what :func:`stored_job` builds a job from, and the
    node a claimed job's record (without the job in between)."""
    job_id: str = r[0] if r else ""
    field = "fields"
    try:
        if len(r) != len(RECORD_FIELDS):
            raise ValueError(f"expected {len(RECORD_FIELDS)} fields, got {len(r)}")
        field = "payload"
        payload = None if r[2] == "null" else json.loads(r[2])
        field = "result"
        result = None if r[12] is None or r[12] == "null" else json.loads(r[12])
        field = "prio"
        prio = int(r[3])
        if not 0 <= prio <= 2:
            raise ValueError(f"expected 0, 1 or 2, got {prio}")
        field = "status"
        status = _STATUSES[r[4]]
        field = "progress"
        progress = json.loads(r[18]) if r[18] else None
        field = "times"
        return (
            job_id, r[1], payload, prio, status, int(r[5]), int(r[6]),
            None if r[7] is None else float(r[7]),
            int(r[8]) / 1000, _ms(r[9]), _ms(r[10]), _ms(r[11]), result,
            r[13] or None, r[14] or None, progress,
            int(r[15] or 0), r[16], bool(r[17]),
        )
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise CorruptRecord(f"job {job_id!r}: {field}: {exc}") from None


@attrs.frozen
class Unreadable:
    """A claimed record that :func:`record_parts` could not read: the job's id, its
    fence (0 when even that cannot be read) and what was wrong."""

    job_id: str
    fence: int
    error: CorruptRecord


def claimed_parts(claimed: Sequence[Sequence[Any]]) -> tuple[list[RecordParts],
                                                             list[Unreadable]]:
    """Claimed records as :func:`record_parts`, and apart those that cannot be read."""
    parts: list[RecordParts] = []
    unreadable: list[Unreadable] = []
    for r in claimed:
        try:
            parts.append(record_parts(r))
        except CorruptRecord as exc:
            try:
                fence = int(r[15] or 0)
            except (ValueError, TypeError, IndexError):
                fence = 0
            unreadable.append(Unreadable(str(r[0]) if r else "", fence, exc))
    return parts, unreadable


def stored_job(r: Sequence[Any]) -> StoredJob:
    """A record in :data:`RECORD_FIELDS` order (as the scripts return it) as a job."""
    p = record_parts(r)
    job = Job(p[0], p[1], p[2], _PRIORITIES[p[3]], p[4], p[5], p[6], p[7], p[8], p[9],
              p[10], p[11], p[12], p[13], p[14], p[15])
    return StoredJob(job, p[16], p[17], p[18])


def _event(entry_id: str, f: Mapping[str, str]) -> StreamEvent:
    try:
        return StreamEvent(
            entry_id, int(f["seq"]), f["type"], int(f["at"]) / 1000, f["job_id"], f["task"],
            f["priority"], f["status"], int(f["attempt"]), f["node"], f.get("error"),
            float(f["duration"]) if "duration" in f else None,
            json.loads(f["progress"]) if "progress" in f else None,
        )
    except (KeyError, ValueError) as exc:
        raise CorruptRecord(f"event {entry_id}: {exc!r}") from None


_dumps = json.JSONEncoder(separators=(",", ":")).encode
"""Batches travel as one JSON argument (ASCII: every string escaped; the scripts decode
it with cjson and check the whole batch before writing): one argument per batch, whatever
its size (each argument costs the client ~0.1 µs on our connection, ~0.7 on coredis)."""


def _counts(reply: Any) -> Counts:
    """A counts reply (``counts_reply`` in common.lua) as :class:`Counts`."""
    qh, qm, ql, sched, leases, stats, room, nodes = reply
    totals = _pairs(stats)
    r = _pairs(room)
    return Counts(
        (int(qh), int(qm), int(ql)), int(sched), int(leases),
        {k: int(v) for k, v in totals.items()},
        tuple(int(r.get(f"delayed:{label}", 0)) for label in _LABELS),  # type: ignore[arg-type]
        {nodes[i]: json.loads(nodes[i + 1]) for i in range(0, len(nodes), 2)},
    )


def _pairs(flat: Any) -> dict[str, str]:
    """A HGETALL reply inside a script reply: a flat list (RESP2 style) or a map."""
    if isinstance(flat, Mapping):
        return {str(k): str(v) for k, v in flat.items()}
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
