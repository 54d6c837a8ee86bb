"""Job values: priorities, statuses, the frozen :class:`Job` snapshot and its JSON form."""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import attrs

from ._exceptions import InvalidJob


class Priority(enum.IntEnum):
    """How urgent a job is.  Lower value, more urgent; JSON spelling is lower case."""

    HIGH = 0
    MEDIUM = 1
    LOW = 2

    @property
    def label(self) -> str:
        """The JSON spelling: ``"high"``, ``"medium"`` or ``"low"``."""
        return _PRIORITY_LABELS[self]

    @classmethod
    def coerce(cls, value: Priority | str) -> Priority:
        """Accept a :class:`Priority` or its name in any case; raise :class:`InvalidJob`."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            found = _PRIORITY_BY_NAME.get(value.lower())
            if found is not None:
                return found
        raise InvalidJob(f"priority: expected one of 'high', 'medium', 'low'; got {value!r}")


_PRIORITY_LABELS = {Priority.HIGH: "high", Priority.MEDIUM: "medium", Priority.LOW: "low"}
_PRIORITY_BY_NAME = {label: p for p, label in _PRIORITY_LABELS.items()}


class JobStatus(enum.StrEnum):
    """Where a job is in its life.  The value is the JSON spelling."""

    QUEUED = "queued"
    """Waiting in its priority's ready queue for a worker."""
    SCHEDULED = "scheduled"
    """Waiting for a due time: a delayed job, or a failed one waiting to be retried."""
    PROCESSING = "processing"
    """A worker is running its handler."""
    COMPLETED = "completed"
    """The handler returned; :attr:`Job.result` holds what it returned."""
    FAILED = "failed"
    """Retries exhausted: the dead-letter state.  :meth:`JobQueue.retry` re-queues it."""
    CANCELLED = "cancelled"
    """Cancelled by :meth:`JobQueue.cancel`; never retried by itself."""

    @property
    def terminal(self) -> bool:
        """True for COMPLETED, FAILED and CANCELLED: nothing more happens by itself."""
        return self in TERMINAL

    @classmethod
    def coerce(cls, value: JobStatus | str) -> JobStatus:
        """Accept a :class:`JobStatus` or its value; raise :class:`InvalidJob`."""
        try:
            return cls(value)
        except ValueError:
            raise InvalidJob(f"status: expected one of {', '.join(s.value for s in cls)}; "
                             f"got {value!r}") from None


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

MAX_ID_LENGTH = 128
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@\-]*\Z")


def clean_text(text: str) -> str:
    """``text`` with lone surrogates escaped (``\\ud800``), so that it can be encoded as
    UTF-8: what a store or Redis keeps of an exception's message or traceback, which
    may hold them (a file name decoded with ``surrogateescape``, say).  The same object
    when there is nothing to escape."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def check_job_id(job_id: object) -> str:
    """Return ``job_id`` if it is a usable id, else raise :class:`InvalidJob`.

    Ids are 1 to 128 characters of ASCII letters, digits and ``_ . : @ -``, starting with a
    letter or digit, so they are safe in a URL path, a log line and a file name.
    """
    if not isinstance(job_id, str):
        raise InvalidJob(f"id: expected a string, got {type(job_id).__name__}")
    if not job_id or len(job_id) > MAX_ID_LENGTH:
        raise InvalidJob(f"id: must be 1 to {MAX_ID_LENGTH} characters, got {len(job_id)}")
    if not _ID_RE.match(job_id):
        raise InvalidJob(
            f"id: {job_id!r} has characters other than ASCII letters, digits and '_.:@-' "
            "(or does not start with a letter or digit)"
        )
    return job_id


def is_job_id(job_id: object) -> bool:
    """Whether ``job_id`` is an id a job may have (see :func:`check_job_id`): one that is
    not can name no job, so looking it up finds nothing."""
    return isinstance(job_id, str) and 0 < len(job_id) <= MAX_ID_LENGTH and bool(
        _ID_RE.match(job_id))


def rfc3339(ts: float | None) -> str | None:
    """Seconds since the epoch as an RFC 3339 UTC string with microseconds, always
    (``2026-01-02T03:04:05.000000Z`` on a whole second: one shape for every time, so that
    a parser of that shape reads them all and the strings sort as the times do);
    ``None`` stays ``None``."""
    if ts is None:
        return None
    moment = datetime.fromtimestamp(ts, tz=UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


class Job(NamedTuple):
    """A snapshot of one job, taken when you asked for it.

    It never changes: call :meth:`JobQueue.get` again for a fresh one.  Times are seconds
    since the epoch (floats), as seen by the queue's clock; :meth:`to_dict` gives them as
    RFC 3339 strings.  ``job._replace(field=value)`` makes a changed copy.

    A named tuple rather than a class with a ``__dict__``: the engine builds two of these
    for every job (the one ``enqueue`` returns and the one the handler gets), and building
    a tuple from the job's record takes 3,500 instructions instead of 9,100; together that
    was about 15 % of a no-op job.
    """

    id: str
    """The job's id: generated (a UUIDv7 in hex) unless given to ``enqueue``."""
    task: str
    """The name of the handler in the :class:`TaskRegistry`."""
    payload: Any
    """The JSON value given to ``enqueue``."""
    priority: Priority
    status: JobStatus
    attempts: int
    """How many times a worker has started this job (the current run included)."""
    max_retries: int
    """How many times a failed attempt is retried before the job is FAILED."""
    timeout: float | None
    """Seconds one attempt may run; ``None`` for no limit."""
    created_at: float
    scheduled_for: float | None
    """When a SCHEDULED job becomes due (delayed jobs and retry backoff)."""
    started_at: float | None
    """When the latest attempt started."""
    finished_at: float | None
    result: Any
    """What the handler returned (a JSON value), once COMPLETED."""
    error: str | None
    """The last failure as ``"ExceptionType: message"``, or ``None``."""
    traceback: str | None
    """The formatted traceback of the last failure, or ``None``."""
    progress: dict[str, Any] | None = None
    """What the handler last reported with :func:`trioqueue.report_progress`:
    ``{"fraction": float 0..1, "note": str | None}``, or ``None``."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of API.md: enums in lower case, times as RFC 3339 strings."""
        return {
            "id": self.id,
            "task": self.task,
            "payload": self.payload,
            "priority": _PRIORITY_LABELS[self.priority],
            "status": self.status.value,
            "attempts": self.attempts,
            "max_retries": self.max_retries,
            "timeout": self.timeout,
            "created_at": rfc3339(self.created_at),
            "scheduled_for": rfc3339(self.scheduled_for),
            "started_at": rfc3339(self.started_at),
            "finished_at": rfc3339(self.finished_at),
            "result": self.result,
            "error": self.error,
            "traceback": self.traceback,
            "progress": self.progress,
        }


MAX_DEPTH = 100
"""How deeply a job's payload, a handler's result or a submitted call's argument may
nest arrays and objects (``[[1]]`` is two levels, ``1`` none): 100.

A bound of its own rather than the interpreter's: Python's ``json`` has none but the
recursion limit (1,000 frames), shared with the stack of whatever encodes or decodes,
so a value that just passed at enqueue failed later on a deeper stack (a listing
re-decoding a result: every ``GET /jobs`` page holding it answered 500).  100 is what
Ruby's JSON allows by default (``max_nesting``, so every Sidekiq job's limit);
System.Text.Json and Json.NET stop at 64, serde_json at 128.  No job needs more, and
it leaves each later path (snapshots, ``to_dict``, the server's encoder, a store's or
Redis' encode and decode, events) hundreds of frames to spare.  Checked where a value
enters (:func:`check_json`, the server's body parser); what a store holds from before
is read as it is."""

_NESTING = (dict, list, tuple)
"""What JSON encodes as an object or array (subclasses too)."""
_SCALARS = frozenset({str, int, float, bool, type(None)})


def nests_deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` (a JSON value as Python holds it) nests arrays and objects more
    than ``limit`` levels deep.  A walk a level at a time, without recursion, that stops
    past ``limit``; a long array (or object) of plain scalars is passed over in C."""
    level = [value] if isinstance(value, _NESTING) else []
    nesting, scalars = _NESTING, _SCALARS
    for _ in range(limit):
        if not level:
            return False
        inner: list[Any] = []
        add = inner.append
        for container in level:
            items = container.values() if isinstance(container, dict) else container
            if len(items) > 16 and scalars.issuperset(map(type, items)):
                continue  # (4 times faster than the loop for 10,000 numbers)
            for item in items:
                if isinstance(item, nesting):
                    add(item)
        level = inner
    return bool(level)


def too_deep(field: str, limit: int = MAX_DEPTH) -> str:
    """The message for a value nested more than ``limit`` levels."""
    return f"{field}: nested too deeply (more than {limit} levels)"


_strict_json = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
"""``json.dumps(value, allow_nan=False, separators=(",", ":"))`` without making an
encoder per call."""


def check_json(field: str, value: Any, max_depth: int = MAX_DEPTH) -> str:
    """Serialize ``value`` as strict JSON (no NaN/Infinity), nested at most ``max_depth``
    levels (:data:`MAX_DEPTH`), or raise :class:`InvalidJob` naming ``field``."""
    try:
        text = _strict_json(value)
    except (TypeError, ValueError) as exc:
        raise InvalidJob(f"{field}: not JSON-serializable ({exc})") from None
    except RecursionError:  # (deeper than the interpreter's limit: far past max_depth)
        raise InvalidJob(too_deep(field, max_depth)) from None
    # Each level is a bracket and its pair in the text: a text of at most 2 * max_depth
    # characters, or with at most max_depth opening brackets (strings' included), cannot
    # nest deeper; only a value that could is walked.  Two C calls for a large payload,
    # one comparison for a small one, nothing for None (the intake skips it).
    if (len(text) > 2 * max_depth and text.count("[") + text.count("{") > max_depth
            and nests_deeper(value, max_depth)):
        raise InvalidJob(too_deep(field, max_depth))
    return text


MAX_RETRIES = 1_000_000
"""The most retries a job may have (``max_retries``): a store keeps the count as a 64-bit
integer, and no job needs more."""
MAX_DELAY = 10 * 366 * 86400.0
"""The longest delay, in seconds: ten years (a due time stays a representable date, and
a millisecond count that Redis keeps exactly)."""


def canonical_json(value: Any) -> str:
    """``value`` as compact JSON with every object's keys sorted: two payloads are the
    same job's when these are equal (an object's key order does not matter; ``1`` and
    ``1.0``, or ``1`` and ``true``, differ)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def same_payload_json(a: str, b: str) -> bool:
    """Whether two payloads, as the JSON text :func:`check_json` made of them, are the
    same (:func:`canonical_json`); the texts are compared first, the values only when
    they differ."""
    return a == b or canonical_json(json.loads(a)) == canonical_json(json.loads(b))


def check_delay(delay: object) -> float:
    """A delay in seconds (0 to :data:`MAX_DELAY`), or raise :class:`InvalidJob` naming it."""
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not (
        delay >= 0 and math.isfinite(delay)
    ):
        raise InvalidJob(f"delay: expected a number of seconds >= 0, got {delay!r}")
    if delay > MAX_DELAY:
        raise InvalidJob(f"delay: at most {MAX_DELAY:.0f} seconds (ten years), got {delay!r}")
    return delay


def check_max_retries(max_retries: object) -> int:
    """A retry count (an int >= 0), or raise :class:`InvalidJob` naming it."""
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or not (
            0 <= max_retries <= MAX_RETRIES):
        raise InvalidJob(f"max_retries: expected an integer 0..{MAX_RETRIES}, got "
                         f"{max_retries!r}")
    return max_retries


def check_timeout(timeout: object) -> float:
    """A per-attempt timeout in seconds (> 0, finite), or raise :class:`InvalidJob`."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
        timeout > 0 and math.isfinite(timeout)
    ):
        raise InvalidJob(f"timeout: expected a number of seconds > 0, got {timeout!r}")
    return float(timeout)


def check_payloads(payloads: object) -> None:
    """Raise :class:`InvalidJob` unless ``payloads`` is an iterable of payloads (one job
    each): not a text, bytes or mapping, whose items would each become a job."""
    if isinstance(payloads, (str, bytes, bytearray, memoryview, Mapping)) or not isinstance(
            payloads, Iterable):
        raise InvalidJob(
            "payloads: expected a list, tuple, generator or other iterable of payloads "
            f"(not a str, bytes or dict), got {type(payloads).__name__}"
        )


@attrs.frozen
class JobPage:
    """One page of :meth:`JobQueue.list_page`: the jobs, newest first, and ``next``, the
    ``before`` of the following page (``None`` on the last page)."""

    jobs: list[Job]
    next: str | None
