"""The Redis state of one queue: typed operations, each one Lua script call.

Keys live under ``tq:{<queue>}:`` (one hash tag: one Cluster slot holds the queue); the
layout, the scripts and their guarantees are in docs/redis-design.md.  Batches are the
unit: a call costs a round trip (~40 µs of client CPU, ~16-46 µs of Redis CPU before
any job), so :meth:`RedisState.enqueue`
takes a batch and :meth:`RedisState.finish_and_claim` acks everything finished since the
last call and claims up to ``n`` jobs in the same script.

Times in Redis are milliseconds from Redis' ``TIME`` (one clock for every node); the
:class:`~trioqueue.Job` values built here carry seconds, as everywhere in trioqueue.
"""

from __future__ import annotations

import itertools
import json
import math
import uuid
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from typing import Any, Literal

from .._exceptions import InvalidJob, InvalidTransition, JobNotFound, QueueFull
from .._job import Job, JobStatus, check_job_id, is_job_id
from .._state import cannot_retry
from ._client import RedisClient
from ._limits import DEFAULTS, Limits, check_call
from ._scripts import load_all
from ._values import (
    _KINDS,
    _LABELS,
    MAX_BATCH,
    MAX_CLAIM,
    NODE_FORGET,
    RECORD_FIELDS,
    UNSTARTED_MAX,
    Admission,
    Admissions,
    Admitted,
    CorruptRecord,
    Counts,
    EventBatch,
    FinishClaim,
    NewJob,
    NodeInfo,
    Outcome,
    Promoted,
    Reaped,
    RecordParts,
    Renewal,
    RoomView,
    StoredJob,
    StreamEvent,
    Unreadable,
    _counts,
    _dumps,
    _event,
    canonical_digest,
    check_name,
    claimed_parts,
    stored_job,
)

__all__ = [
    "MAX_BATCH", "MAX_CLAIM", "RECORD_FIELDS", "Admission", "Admissions", "Admitted",
    "CorruptRecord", "Counts", "EventBatch", "EventReader", "FinishClaim", "NewJob",
    "NodeInfo", "Outcome",
    "Promoted", "Reaped", "RecordParts", "RedisState", "Renewal", "RoomView", "StoredJob",
    "StreamEvent", "Unreadable",
    "canonical_digest", "check_name", "stored_job",
]


LIST_BYTES = 16 * 1024 * 1024
"""Bytes of payloads and results one ``list_jobs`` reply carries at most (one job at
least); past them the page ends early, its ``next`` where it stopped."""


class RedisState:
    """One queue's state in Redis, shared by every node opened on the same queue name.

    ``capacity`` bounds each priority's ready list (and, apart, its new delayed jobs);
    ``weights`` are the fair-claim weights high, medium, low; ``result_ttl`` (seconds) is
    how long a finished job's record stays, and ``failed_ttl`` (seconds, ``result_ttl``
    if None) how long a FAILED one does (a dead letter); ``events_maxlen`` caps the
    events stream (approximately, ``MAXLEN ~``).
    """

    def __init__(
        self,
        client: RedisClient,
        queue: str,
        *,
        capacity: int = 1000,
        weights: tuple[int, int, int] = (10, 3, 1),
        result_ttl: float = 3600.0,
        failed_ttl: float | None = None,
        events_maxlen: int = 100_000,
    ) -> None:
        check_name("queue_name", queue)
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity: expected a positive integer, got {capacity!r}")
        if len(weights) != 3 or any(
            isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in weights
        ):
            raise ValueError(f"weights: expected three positive integers, got {weights!r}")
        if not (result_ttl > 0 and math.isfinite(result_ttl)):
            raise ValueError(f"result_ttl: expected seconds > 0, got {result_ttl!r}")
        if failed_ttl is None:
            failed_ttl = result_ttl
        elif not (failed_ttl > 0 and math.isfinite(failed_ttl)):
            raise ValueError(f"failed_ttl: expected seconds > 0, got {failed_ttl!r}")
        self.client = client
        self.queue = queue
        self.prefix = f"tq:{{{queue}}}:"
        self.capacity = capacity
        self.weights = weights
        self.result_ttl = result_ttl
        self.failed_ttl = failed_ttl
        # The scripts' "result ttl" argument (common.lua's ttls): ms, and ms if FAILED.
        self._ttls = (f"{max(1, math.ceil(result_ttl * 1000))} "
                      f"{max(1, math.ceil(failed_ttl * 1000))}")
        self._maxlen = events_maxlen
        self.limits: Limits = DEFAULTS
        """What one call may carry (the node reads it from Redis when it opens): a batch
        past it raises :class:`~._limits.CallTooLarge`, unsent."""
        self._keys = (self.prefix,)
        self._scripts = load_all()
        self._rid_head = uuid.uuid4().hex[:16] + "."
        self._rid_count = itertools.count()

    def key(self, suffix: str) -> str:
        """The full name of one of this queue's keys (``ready:high``, ``job:<id>``...)."""
        return self.prefix + suffix

    def request_id(self) -> str:
        """A fresh request id for a script call: a call re-sent with the same id (as the
        client does after a lost reply) is applied once.  Tests replace it to send one
        call twice."""
        return self._rid_head + str(next(self._rid_count))

    async def run_script(self, name: str, args: Sequence[str | int]) -> Any:
        """Run this queue's script ``name`` with ``args`` (the methods below wrap it)."""
        return await self.client.run(self._scripts[name], self._keys, args)

    # ------------------------------------------------------------------ intake

    async def enqueue(
        self, jobs: Sequence[NewJob], *, whole: bool = False, count_rejected: bool = True
    ) -> list[Admitted]:
        """:meth:`admit` without the room view."""
        return (await self.admit(jobs, whole=whole, count_rejected=count_rejected)).jobs

    async def admit(
        self, jobs: Sequence[NewJob], *, whole: bool = False, count_rejected: bool = True,
        refused: Sequence[int] = (0, 0, 0),
    ) -> Admissions:
        """Admit a batch in one script call; one :class:`Admitted` per job, in order.

        ``whole``: all or nothing (``enqueue_many``): if any new job lacks room, every new
        job is FULL; if any id is a DUPLICATE, the others are ABORTED; nothing is stored.
        ``count_rejected``: count FULL answers in the ``rejected`` total (``False`` for the
        polling of a producer that waits for room).  ``refused``: refusals the node made
        itself, per priority (``enqueue_nowait``'s QueueFull), counted in ``rejected``.
        The answer also holds the room view after the call (:class:`Admissions`); an
        empty ``jobs`` sends only ``refused`` (no call when that is all zero).
        """
        if not jobs and not any(refused):
            return Admissions([], None)
        if len(jobs) > MAX_BATCH:
            raise InvalidJob(f"jobs: at most {MAX_BATCH} per batch, got {len(jobs)}")
        batch = _dumps([
            [j.id, j.digest, j.task, str(int(j.priority)), j.payload_json, str(j.max_retries),
             "" if j.timeout is None else repr(j.timeout), str(j.delay_ms)]
            for j in jobs
        ])
        check_call(self.limits, batch)
        # No request id: a re-sent enqueue finds its jobs by id and answers EXISTING
        # (the jobs are there, once), which saves a cached reply per batch.
        args: list[str | int] = [
            "", self._maxlen, self.capacity, "1" if whole else "0",
            "1" if count_rejected else "0", batch,
            _dumps([int(k) for k in refused]) if any(refused) else "",
        ]
        now_ms, codes, recs, view = await self.run_script("enqueue", args)
        created = int(now_ms) / 1000
        out: list[Admitted] = []
        by_id: dict[str, Job] = {}
        for j, code, rec in zip(jobs, codes, recs, strict=True):
            adm = Admission(code)
            job: Job | None = None
            if adm is Admission.ACCEPTED:
                delayed = j.delay_ms > 0
                job = Job(
                    j.id, j.task, j.payload, j.priority,
                    JobStatus.SCHEDULED if delayed else JobStatus.QUEUED, 0, j.max_retries,
                    j.timeout, created, created + j.delay_ms / 1000 if delayed else None,
                    None, None, None, None, None,
                )
                by_id.setdefault(j.id, job)
            elif adm is Admission.EXISTING:
                job = stored_job(rec).job if rec else by_id.get(j.id)
                if job is not None:
                    by_id.setdefault(j.id, job)
            out.append(Admitted(adm, job))
        return Admissions(out, RoomView.parse(view))

    # ------------------------------------------------------------------ the hot path

    async def finish_and_claim(
        self,
        node: str,
        outcomes: Sequence[Outcome],
        n: int,
        lease: float,
        tasks: Collection[str] | None = None,
        held: Sequence[tuple[str, int]] = (),
        started: Sequence[str] = (),
    ) -> FinishClaim:
        """Apply ``outcomes`` (fenced) and claim up to ``n`` jobs, fairly, in one call.

        Each outcome applies only if the job is PROCESSING under ``node`` and its fence;
        otherwise it is ``"stale"`` and changes nothing (sent again after a lost reply, an
        applied outcome answers ``"ok"`` and is not applied twice).  Claims follow the
        smooth weighted round robin kept in Redis, so fairness is exact across all nodes;
        each claimed job gets fence+1, attempts+1, PROCESSING, a lease of ``lease``
        seconds on Redis' clock and a ``started`` event, in the same script.

        ``tasks``: the task names this node can run (``None``: any).  A job of another
        task is parked, still QUEUED, in ``park:<p>:<task>`` for a node that can run it,
        and the claim goes on behind it; parked jobs of these tasks are taken before their
        priority's ready list (fairness is exact when every node knows every task).  A
        mapping of them also bounds the jobs claimed per task (-1: no bound): past its
        bound a task's jobs are parked the same way.

        ``held``: (id, fence) of jobs ``node`` claimed and holds unstarted (marked in
        ``held``: the reaper gives them back uncounted if the node dies); ``started``: ids
        marked so that a worker has started since (their marks dropped)."""
        results, claimed, view, parked, suspect = await self._finish_and_claim_raw(
            node, outcomes, n, lease, tasks, held, started)
        return FinishClaim(list(results), [stored_job(r) for r in claimed],
                           RoomView.parse(view), list(parked), list(suspect))

    async def finish_and_claim_parts(
        self,
        node: str,
        outcomes: Sequence[Outcome],
        n: int,
        lease: float,
        tasks: Collection[str] | None = None,
        held: Sequence[tuple[str, int]] = (),
        started: Sequence[str] = (),
    ) -> tuple[list[str], list[RecordParts], RoomView | None, list[Unreadable], list[str],
               list[str]]:
        """:meth:`finish_and_claim`, with the claimed records as :func:`record_parts`
        (the node builds its own records from them: no job object in between), and
        apart the claimed records that cannot be read (:class:`Unreadable`: claimed all
        the same, leased to ``node``); then the tasks of the jobs it parked; last, the
        claimed ids that came back unstarted from a lost node before."""
        got = await self._finish_and_claim_raw(node, outcomes, n, lease, tasks, held,
                                               started)
        results, claimed, view, parked, suspect = got
        parts, unreadable = claimed_parts(claimed)
        return (list(results), parts, RoomView.parse(view), unreadable, list(parked),
                list(suspect))

    async def _finish_and_claim_raw(
        self,
        node: str,
        outcomes: Sequence[Outcome],
        n: int,
        lease: float,
        tasks: Collection[str] | None,
        held: Sequence[tuple[str, int]],
        started: Sequence[str],
    ) -> Any:
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_CLAIM:
            raise ValueError(f"n: expected an integer 0..{MAX_CLAIM}, got {n!r}")
        if len(outcomes) > MAX_CLAIM:
            raise ValueError(f"outcomes: at most {MAX_CLAIM} per call, got {len(outcomes)}")
        for o in outcomes:
            if o.kind not in _KINDS:
                raise ValueError(f"outcomes: {o.id!r}: unknown kind {o.kind!r}")
        w = self.weights
        batch = _dumps([  # (each entry as _limits.outcome_bytes measures it)
            [o.id, str(o.fence), o.kind, o.value, o.error, o.traceback,
             "" if o.duration is None else repr(o.duration)]
            for o in outcomes
        ])
        names = "" if tasks is None else _dumps(
            tasks if isinstance(tasks, Mapping) else sorted(tasks))
        marks = _dumps([x for job_id, fence in held for x in (job_id, str(fence))]) if held \
            else ""
        starts = _dumps(list(started)) if started else ""
        check_call(self.limits, batch, names, marks, starts)
        args: list[str | int] = [
            self.request_id() if n else "", self._maxlen, self._ttls, node, _lease_ms(lease),
            n, w[0], w[1], w[2], batch, names, marks, starts,
        ]
        return await self.run_script("finish_and_claim", args)

    async def renew(self, node: str, held: Sequence[tuple[str, int]], lease: float) -> Renewal:
        """Extend the leases ``node`` still holds (id, fence); report the lost ones."""
        if not held:
            return Renewal([], [])
        held_json = _dumps([[job_id, str(fence)] for job_id, fence in held])
        lost, cancel = await self.run_script("renew", [node, _lease_ms(lease), held_json])
        return Renewal(list(lost), list(cancel))

    async def reap(self, max_n: int = 100, trim_n: int = 1000) -> Reaped:
        """Requeue (or fail, or cancel) up to ``max_n`` jobs whose lease expired (those
        their node held unstarted: uncounted, at most :data:`UNSTARTED_MAX` times a job),
        and drop up to ``trim_n`` expired entries per terminal index (``behind``: an
        index had that many, and may have more)."""
        requeued, failed, cancelled, unstarted, behind = await self.run_script(
            "reap", [self._maxlen, self._ttls, max_n, trim_n, UNSTARTED_MAX])
        return Reaped(list(requeued), list(failed), list(cancelled), list(unstarted),
                      bool(behind))

    async def promote(self, max_n: int = 100) -> Promoted:
        """Move up to ``max_n`` due SCHEDULED jobs into their ready lists, full or not."""
        promoted, next_due = await self.run_script("promote", [self._maxlen, max_n, self._ttls])
        return Promoted(int(promoted), None if next_due is None else int(next_due) / 1000)

    # ------------------------------------------------------------------ lookups and control

    async def get(self, job_id: str) -> StoredJob | None:
        if not is_job_id(job_id):  # (no job has it: not found, as on the other backends)
            return None
        rec = await self.run_script("get", [job_id])
        return None if rec[0] is None else stored_job(rec)

    async def get_many(self, job_ids: Sequence[str]) -> list[StoredJob | None]:
        """:meth:`get` of each id, in order: one script call per :data:`GET_MANY` ids."""
        out: list[StoredJob | None] = []
        for first in range(0, len(job_ids), GET_MANY):
            part = [i if is_job_id(i) else "" for i in job_ids[first:first + GET_MANY]]
            if len(part) == 1:
                out.append(await self.get(part[0]))
                continue
            recs = await self.run_script("get", part)
            out.extend(None if rec[0] is None else stored_job(rec) for rec in recs)
        return out

    async def list_jobs(
        self,
        status: JobStatus | str | None = None,
        task: str | None = None,
        limit: int = 100,
        before: str | None = None,
        budget: int = 10_000,
        unreadable: list[CorruptRecord] | None = None,
        max_bytes: int = LIST_BYTES,
    ) -> tuple[list[Job], str | None]:
        """Up to ``limit`` jobs, newest first, and the ``before`` of the next page.

        Every status by creation.  At most ``budget`` records are read per call, so a
        filtered page can be short while ``next`` is not ``None``, as when its payloads
        and results pass ``max_bytes`` (one job at least).  A record that cannot be read raises
        :class:`CorruptRecord`, or with ``unreadable`` given is left out and its error
        appended there.
        """
        if status is not None:
            status = JobStatus.coerce(status)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidJob(f"limit: expected an integer 1..1000, got {limit!r}")
        if before is not None:
            check_job_id(before)
        records, nxt = await self.run_script(
            "list", ["" if status is None else status.value, task or "", limit, before or "",
                     budget, max_bytes],
        )
        if unreadable is None:
            return [stored_job(r).job for r in records], nxt or None
        jobs: list[Job] = []
        for r in records:
            try:
                jobs.append(stored_job(r).job)
            except CorruptRecord as exc:
                unreadable.append(exc)
        return jobs, nxt or None

    async def cancel(self, job_id: str) -> tuple[Literal["cancelled", "requested"], StoredJob]:
        """Cancel a QUEUED or SCHEDULED job now (``"cancelled"``), or ask the node running
        a PROCESSING one to stop it (``"requested"``: a ``cancel_requested`` event).

        Raises :class:`JobNotFound`, :class:`InvalidTransition` for a finished job, or
        :class:`CorruptRecord` for a record that cannot be read (nothing changed).
        """
        if not is_job_id(job_id):
            raise JobNotFound(f"job {job_id!r} not found")
        code, rec = await self.run_script(
            "cancel", [self.request_id(), self._maxlen, self._ttls, job_id])
        if code == "corrupt":
            raise CorruptRecord(rec)
        if code == "missing" or rec[0] is None:
            raise JobNotFound(f"job {job_id!r} not found")
        stored = stored_job(rec)
        if code == "finished":
            raise InvalidTransition(
                f"cannot cancel a job that is {stored.job.status.value}", stored.job.status
            )
        return ("cancelled" if code == "cancelled" else "requested"), stored

    async def retry(self, job_id: str) -> Job:
        """FAILED or CANCELLED -> QUEUED with attempts reset to 0, if its priority has
        room (else :class:`QueueFull`; :class:`CorruptRecord` for a record that cannot be
        read: nothing changed)."""
        if not is_job_id(job_id):
            raise JobNotFound(f"job {job_id!r} not found")
        code, rec = await self.run_script(
            "retry", [self.request_id(), self._maxlen, self.capacity, job_id])
        if code == "corrupt":
            raise CorruptRecord(rec)
        if code == "missing" or rec[0] is None:
            raise JobNotFound(f"job {job_id!r} not found")
        job = stored_job(rec).job
        if code == "invalid":
            raise cannot_retry(job.status)
        if code == "full":
            raise QueueFull(f"priority {_LABELS[job.priority]}: "
                            f"{self.capacity} jobs already waiting")
        return job

    async def counts(self, node_age: float = 0.0) -> Counts:
        """The queue's gauges and counters; with ``node_age`` > 0, also the info of the
        nodes whose last heartbeat is at most that many seconds old."""
        return _counts(await self.run_script("counts", [math.ceil(node_age * 1000)]))

    async def find(
        self, job_ids: Sequence[str], node_age: float = 0.0
    ) -> tuple[list[StoredJob | None], Counts]:
        """:meth:`get_many` and :meth:`counts` in one round trip (for up to
        :data:`GET_MANY` ids; more take a :meth:`get_many` call per :data:`GET_MANY`
        before): the counts are as of the moment the last ids were read."""
        split = max(0, len(job_ids) - GET_MANY)
        out = await self.get_many(job_ids[:split]) if split else []
        tail = [i if is_job_id(i) else "" for i in job_ids[split:]]  # "": no job has it
        recs, counts = await self.run_script("find", [math.ceil(node_age * 1000), *tail])
        out.extend(None if rec[0] is None else stored_job(rec) for rec in recs)
        return out, _counts(counts)

    # ------------------------------------------------------------------ nodes

    async def heartbeat(self, node: str, info: Mapping[str, Any] | None = None,
                        forget: float = NODE_FORGET) -> float:
        """Register ``node`` (or refresh it) with ``info`` (JSON), and drop the entries of
        nodes silent for ``forget`` seconds; returns Redis' time."""
        check_name("node", node)
        ms = await self.run_script("nodes", ["beat", node, json.dumps(dict(info or {})),
                                             math.ceil(forget * 1000)])
        return int(ms) / 1000

    async def nodes(self, max_age: float = 30.0) -> list[NodeInfo]:
        """Nodes whose last heartbeat is at most ``max_age`` seconds old."""
        flat = await self.run_script("nodes", ["list", math.ceil(max_age * 1000)])
        return [
            NodeInfo(flat[i], int(flat[i + 1]) / 1000, json.loads(flat[i + 2]))
            for i in range(0, len(flat), 3)
        ]

    async def remove_node(self, node: str) -> bool:
        check_name("node", node)
        return bool(await self.run_script("nodes", ["remove", node]))

    async def read_events(self, node: str, ttl: float,
                          types: Iterable[str] | None = None) -> float:
        """Have events of ``types`` (``None``: every type) written to the ``events``
        stream for the next ``ttl`` seconds at least (on Redis' clock), on behalf of
        ``node`` (which reads them; this replaces what it asked before); returns Redis'
        time.  The scripts write an event only of a type that some node asked for within
        its ``ttl``."""
        check_name("node", node)
        if types is None:
            spelled = "*"
        else:
            names = sorted(set(types))
            for name in names:
                if not (name.isascii() and name.replace("_", "").isalpha()):
                    raise ValueError(f"types: expected event type names, got {name!r}")
            spelled = ",".join(names)
        ms = await self.run_script("nodes", ["read", node, _lease_ms(ttl), spelled])
        return int(ms) / 1000

    async def stop_reading_events(self, node: str) -> bool:
        """``node`` reads events no longer (:meth:`read_events`); True if it did."""
        check_name("node", node)
        return bool(await self.run_script("nodes", ["unread", node]))

    # ------------------------------------------------------------------ wake-ups

    async def wait_for_work(
        self, node: str, timeout: float = 1.0
    ) -> Literal["work", "stop"] | None:
        """Block until a wake token, this node's stop signal, or ``timeout`` seconds.

        ``BLPOP [node:<id>:ctl, wake] timeout`` in a shielded scope: never cancelled in
        flight, so the calling task may stay uncancellable for up to ``timeout``; stop it
        with :meth:`stop_waiting`.  Returns ``"stop"``, ``"work"`` (a hint: claim to see),
        or ``None`` (timeout, or the connection was lost: try to claim anyway; a dead
        Redis shows up there as :class:`RedisUnavailable`).
        """
        from ._client import RedisUnavailable

        ctl = self.prefix + f"node:{node}:ctl"
        try:
            got = await self.client.blpop([ctl, self.prefix + "wake"], timeout)
        except RedisUnavailable:
            return None
        if got is None:
            return None
        return "stop" if got[0] == ctl and got[1] == "stop" else "work"

    async def wait_for_cancel(self, node: str, timeout: float) -> str | None:
        """Block until :meth:`cancel` asks ``node`` to stop a job it runs (the job's id,
        from ``BLPOP node:<id>:cancel timeout``, shielded like :meth:`wait_for_work`), or
        ``None`` after ``timeout`` seconds."""
        got = await self.client.blpop([self.prefix + f"node:{node}:cancel"], timeout)
        return None if got is None else got[1]

    async def stop_waiting(self, node: str, *, work: bool = False) -> None:
        """Wake ``node``'s :meth:`wait_for_work` with ``"stop"`` (``"work"`` if ``work``),
        now or on its next call within 60 s."""
        check_name("node", node)
        await self.run_script("nodes", ["work" if work else "stop", node])

    # ------------------------------------------------------------------ events

    async def last_event_id(self) -> str | None:
        """The id of the newest entry of the ``events`` stream (None if it is empty)."""
        last = await self.client.last_entry(self.prefix + "events")
        return None if last is None else last[0]

    async def event_reader(self, *, from_start: bool = False) -> EventReader:
        """A reader of the ``events`` stream, from its end (or its first entry)."""
        if from_start:
            return EventReader(self, "0-0", 0)
        last = await self.client.last_entry(self.prefix + "events")
        if last is None:
            return EventReader(self, "0-0", 0)
        return EventReader(self, last[0], int(last[1].get("seq", 0)))


GET_MANY = 1000
"""Ids looked up in one script call at most (:meth:`RedisState.get_many`)."""


def _lease_ms(lease: float) -> int:
    if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not (
        lease > 0 and math.isfinite(lease)
    ):
        raise ValueError(f"lease: expected seconds > 0, got {lease!r}")
    return max(1, math.ceil(lease * 1000))


class EventReader:
    """Follows the ``events`` stream with ``XREAD BLOCK``, never cancelled in flight.

    :meth:`read` returns the next batch (empty after ``block_ms`` without events);
    ``async for batch in reader`` reads until :meth:`stop` is called (it takes effect when
    the current read returns, within ``block_ms``).  Every batch says how many events were
    trimmed from the stream before the reader got to them (``dropped``), computed from the
    queue-wide ``seq`` numbers.
    """

    def __init__(self, state: RedisState, last_id: str, last_seq: int) -> None:
        self._state = state
        self.last_id = last_id
        self.last_seq = last_seq
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    @property
    def stopped(self) -> bool:
        return self._stopped

    async def read(self, count: int = 1000, block_ms: int = 1000) -> EventBatch:
        entries = await self._state.client.xread(
            self._state.prefix + "events", self.last_id, count, block_ms
        )
        events: list[StreamEvent] = []
        unreadable: list[CorruptRecord] = []
        for entry_id, fields in entries:
            try:
                events.append(_event(entry_id, fields))
            except CorruptRecord as exc:
                unreadable.append(exc)  # passed over: the next read starts after it
        dropped = 0
        if events:
            dropped = max(0, events[0].seq - self.last_seq - 1)
            self.last_seq = events[-1].seq
        if entries:
            self.last_id = entries[-1][0]
        return EventBatch(events, self.last_id, dropped, unreadable)

    async def __aiter__(self) -> AsyncIterator[EventBatch]:
        while not self._stopped:
            yield await self.read()
