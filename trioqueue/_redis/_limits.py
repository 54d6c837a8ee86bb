"""What one call to Redis may carry, and what a node does with a job's value past it.

Redis refuses an argument longer than its ``proto-max-bulk-len`` (512 MB by default):
it answers ``ERR Protocol error: invalid bulk length`` and closes the connection.  An
argument longer than its ``client-query-buffer-limit`` (1 GB by default) closes the
connection with no answer.  Either way every call in flight on that connection is lost
with it.  A job's values go to Redis in one argument (the JSON batch of an ``enqueue`` or
``finish_and_claim`` call), so one payload, result, error or traceback of hundreds of
megabytes made its call fail each time it was sent: the error answer ended the node (a
script's error is taken for a bug), and the job, reaped after its lease, ended the next
node that ran it, while the outcomes that shared its call were lost; past the query
buffer limit the node sent the call again for ever instead, and claimed nothing more.

So a node reads both limits when it opens (:func:`read_limits`; Redis' defaults when
``CONFIG GET`` is refused, as managed services do), and the state layer never sends a
call whose arguments pass the smaller one less :data:`CALL_SLACK`: it raises
:class:`CallTooLarge` before anything is sent, and the callers make it fit:

- a payload: ``InvalidJob`` naming its size and the limit, before the job is accepted
  (``enqueue_nowait`` checks it at once, :func:`check_payload`);
- a result, error or traceback: the outcome goes without the largest of them, as many as
  it takes, its error saying which and why (:func:`bounded`), as the SQLite store writes
  a row too large for it; a job left without its result ends FAILED;
- values that fit one by one but not together: sent in as many calls as they take.

A call that fits costs the length of its batch (and ``enqueue_nowait`` a comparison of
each payload's length): nothing else is measured until a call was too large.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import attrs

from .._exceptions import InvalidJob
from .._record import JobRecord
from ._nodelog import log_lapsed
from ._values import MAX_CLAIM, Outcome, _dumps

if TYPE_CHECKING:
    from ._client import RedisClient
    from ._holds import Holds

log = logging.getLogger("trioqueue")

DEFAULT_BULK = 512 * 1024 * 1024
"""Redis' default ``proto-max-bulk-len``: the longest argument it takes."""
DEFAULT_QUERY = 1024 * 1024 * 1024
"""Redis' default ``client-query-buffer-limit``."""
CALL_SLACK = 16 * 1024
"""Bytes of a call kept for what its check does not count: the command, the script's
hash, the key, the script's short arguments and the protocol's framing (under 1 KiB)."""
JOB_FIXED = 160
"""Bytes of a job in an enqueue batch besides its payload, id and task, at most: its
digest, priority, retries, timeout and delay, quotes and commas."""


@attrs.frozen
class Limits:
    """What the Redis a node opened on takes in one call."""

    bulk: int
    """Its ``proto-max-bulk-len``: the longest argument."""
    query: int
    """Its ``client-query-buffer-limit``: an argument longer than it closes the
    connection (Redis 7.0 holds each argument to it alone; the check holds a call's
    arguments together, which is safe whichever way a version counts)."""
    read: bool = True
    """False: ``CONFIG GET`` was refused, and these are Redis' defaults."""
    call: int = attrs.field(init=False)
    """Bytes a call's arguments may take together (the batch and the lists beside it)."""

    @call.default
    def _call(self) -> int:
        return min(self.bulk, self.query) - CALL_SLACK

    @property
    def said(self) -> str:
        """The limit that binds, as an error names it."""
        name, value = (("client-query-buffer-limit", self.query) if self.query < self.bulk
                       else ("proto-max-bulk-len", self.bulk))
        if not self.read:
            return f"its {name}, {value:,} bytes by default: CONFIG GET was refused"
        return f"its {name} of {value:,} bytes"

    def room_said(self, room: int) -> str:
        """``room`` (bytes a value may take in a call) and why, for an error."""
        return (f"{max(room, 0):,}: {self.said}, less {min(self.bulk, self.query) - room:,} "
                "for the rest of the call")


DEFAULTS = Limits(DEFAULT_BULK, DEFAULT_QUERY, read=False)


async def read_limits(client: RedisClient) -> Limits:
    """The limits of the Redis ``client`` is on, read once when a node opens: an
    operator who lowered them is followed, and a test can lower them.  Redis' defaults
    when it will not say (``CONFIG`` renamed or not allowed)."""
    got = await client.config_limits()
    if got is None:
        log.debug("trioqueue: redis: CONFIG GET refused; taking its default limits")
        return DEFAULTS
    return Limits(*got)


class CallTooLarge(Exception):
    """A call whose arguments would take more than :attr:`Limits.call`: not sent,
    nothing done."""

    def __init__(self, size: int, values: int, limits: Limits) -> None:
        super().__init__(f"a call of {size:,} bytes would pass redis' limit ({limits.said})")
        self.size = size
        self.values = values
        """Of which the batch (the jobs or outcomes)."""
        self.limits = limits

    @property
    def room(self) -> int:
        """Bytes the batch may take in a call of the same shape."""
        return self.limits.call - (self.size - self.values)


def check_call(limits: Limits, batch: str, *lists: str) -> None:
    """Raise :class:`CallTooLarge` if ``batch`` and ``lists`` (a script's arguments that
    grow, JSON: ASCII, a byte a character) pass ``limits``."""
    size = len(batch) + sum(map(len, lists))
    if size > limits.call:
        raise CallTooLarge(size, len(batch), limits)


# ---------------------------------------------------------------------------- payloads


def json_text_bytes(text: str) -> int:
    """Bytes of ``text``, JSON as trioqueue makes it (ASCII, no control character: a
    payload, a result), as a JSON string: only its quotes and backslashes grow (counted:
    0.3 s for 600 MB, which took 1.6 s to encode)."""
    return len(text) + 2 + text.count('"') + text.count("\\")


def _job_rest(rec: JobRecord) -> int:
    """Bytes of ``rec``'s entry in an enqueue batch but its payload, at most (12 a
    character of the task's name: an escaped surrogate pair; an id is plain ASCII)."""
    return 12 * len(rec.task) + len(rec.id) + JOB_FIXED


def job_bytes(rec: JobRecord) -> int:
    """Bytes ``rec`` takes in an enqueue batch, at most (its payload's JSON is ASCII: a
    character takes 2 bytes at most as a JSON string)."""
    return 2 * len(rec.payload_json) + 3 + _job_rest(rec)


def check_payload(rec: JobRecord, limits: Limits, where: str = "") -> None:
    """Raise :class:`InvalidJob` (``where`` before its field: ``jobs[3].``) when
    ``rec``'s payload cannot go to Redis in one call: before the job is accepted.  A
    payload of less than half the limit costs a comparison."""
    room = limits.call - 2 - _job_rest(rec)  # (alone in its batch: two brackets)
    if 2 * len(rec.payload_json) + 2 <= room:
        return
    size = json_text_bytes(rec.payload_json)
    if size > room:
        raise InvalidJob(f"{where}payload: {size:,} bytes as sent to redis (its JSON as a "
                         f"string), more than a call to redis takes "
                         f"({limits.room_said(room)})")


def check_batch_size(recs: list[JobRecord], limits: Limits) -> None:
    """:func:`check_payload` of each of ``recs`` (a batch written in one call, all or
    nothing), then of the batch as a whole."""
    total = 2
    for i, rec in enumerate(recs):
        check_payload(rec, limits, f"jobs[{i}].")
        total += job_bytes(rec)
    if total > limits.call:  # (a bound: the exact size only when it may matter)
        total = 2 + sum(json_text_bytes(rec.payload_json) + 1 + _job_rest(rec)
                        for rec in recs)
        if total > limits.call:
            raise batch_too_large(len(recs), total, limits.call, limits)


def batch_too_large(n: int, size: int, room: int, limits: Limits) -> InvalidJob:
    return InvalidJob(f"batch: its {n} jobs take {size:,} bytes as sent to redis, more than "
                      f"a call to redis takes ({limits.room_said(room)}): enqueue them in "
                      "smaller batches")


def too_large(recs: list[JobRecord], exc: CallTooLarge) -> InvalidJob:
    """What ``enqueue`` (``recs``: one job) or ``enqueue_many`` raises when their call
    was too large: the first payload too large alone, else the batch."""
    for i, rec in enumerate(recs):
        try:
            check_payload(rec, exc.limits, f"jobs[{i}]." if len(recs) > 1 else "")
        except InvalidJob as err:
            return err
    return batch_too_large(len(recs), exc.values, exc.room, exc.limits)


# ---------------------------------------------------------------------------- outcomes


def outcome_bytes(o: Outcome) -> int:
    """Bytes ``o`` takes in a ``finish_and_claim`` batch (its entry, as
    :meth:`RedisState._finish_and_claim_raw` makes it, and a comma)."""
    return 1 + len(_dumps([o.id, str(o.fence), o.kind, o.value, o.error, o.traceback,
                           "" if o.duration is None else repr(o.duration)]))


def bounded(o: Outcome, room: int, limits: Limits) -> Outcome:
    """``o`` if it takes at most ``room`` bytes in a batch; else ``o`` without the
    largest of its result, error and traceback, as many as it takes, its error saying
    which and why (after its own error, when that is kept), logged.  A job left without
    its result ends FAILED: a COMPLETED job without it would read as one that returned
    ``None``.  (A progress note is at most 1,000 characters: its outcome always fits.)"""
    # A result (or progress, or a delay) is JSON as trioqueue makes it: counted.  An error
    # or a traceback is any text: encoded, once.
    size = {"value": json_text_bytes(o.value), "error": len(_dumps(o.error)),
            "traceback": len(_dumps(o.traceback))}
    rest = outcome_bytes(o.but(value="", error="", traceback="")) - 6  # (3 times "")
    if rest + sum(size.values()) <= room:
        return o
    if o.kind == "progress":  # (only past a limit below any Redis' own)
        note_dropped = _dumps({"fraction": json.loads(o.value)["fraction"], "note": None})
        log.error("trioqueue: job %s: its progress note is too large for redis; sent "
                  "without it", o.id)
        return o.but(value=note_dropped)
    fields = {"result": "value"} if o.kind == "completed" else {}
    fields.update(error="error", traceback="traceback")
    kept = {name: size[field] for name, field in fields.items() if getattr(o, field)}
    own_error = o.error
    lost: list[str] = []
    why = ""
    while kept and rest + sum(size.values()) > room:
        name = max(kept, key=kept.__getitem__)
        lost.append(f"{name}: {kept.pop(name):,} bytes")
        why = (f"not stored: {'; '.join(lost)} (the call to redis would pass "
               f"{limits.said})")
        error = (f"{own_error}; StoreError: {why}" if "error" in kept
                 else f"StoreError: {why}")
        o = o.but(
            kind="failed" if o.kind == "completed" else o.kind,
            value="" if name == "result" else o.value,
            traceback="" if name == "traceback" else o.traceback, error=error)
        size[fields[name]] = 2
        size["error"] = len(_dumps(error))
    log.error("trioqueue: job %s: %s; %s", o.id, why, "it ends failed"
              if lost and lost[0].startswith("result:") else "sent without it")
    return o


class NodeBounds:
    """The part of :class:`~._node.NodeCore` that sends a node's outcomes in calls that
    Redis takes."""

    _pending: list[Outcome]
    _lapsed_ids: list[str]
    _call_budget: int | None = None
    """Bytes the outcomes of one call may take, while a call was found too large: they
    are weighed until none waits (``None``: taken by count alone, nothing measured)."""

    if TYPE_CHECKING:
        @property
        def _holds(self) -> Holds: ...  # (NodeHolds')

    def _take_pending(self) -> list[Outcome]:
        if self._lapsed_ids:
            log_lapsed(self._lapsed_ids)
            self._lapsed_ids = []
        pending = self._pending
        if self._call_budget is not None:
            return self._take_weighed(self._call_budget)
        if len(pending) <= MAX_CLAIM:
            self._pending = []
            return pending
        out = pending[:MAX_CLAIM]
        del pending[:MAX_CLAIM]
        return out

    def _take_weighed(self, budget: int) -> list[Outcome]:
        """The first outcomes waiting that take ``budget`` bytes together (one at least)."""
        pending = self._pending
        size = 2
        n = 0
        for o in pending[:MAX_CLAIM]:
            size += outcome_bytes(o)
            if n and size > budget:
                break
            n += 1
        out = pending[:n]
        del pending[:n]
        if not pending:
            self._call_budget = None
        return out

    def _too_large(self, outcomes: list[Outcome], marks: list[tuple[str, int]],
                   started: list[str], exc: CallTooLarge) -> None:
        """A call was too large for Redis (:class:`CallTooLarge`, so not sent): its
        outcomes go back first in line, each :func:`bounded` to what a call of that shape
        takes with it alone, and are weighed from here; its marks and starts go with the
        next call."""
        room = exc.room
        self._pending[:0] = [bounded(o, room - 2, exc.limits) for o in outcomes]
        self._holds.failed(started)
        self._holds.unsent(marks)
        self._call_budget = room
