"""The pure parts of the HTTP API: routing, request validation, query parsing.

No I/O and no queue here, so every rule is tested in-process without a server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import attrs

from .._events import EVENT_TYPES, JOB_EVENT_TYPES
from .._exceptions import InvalidJob
from .._job import MAX_DELAY as MAX_DELAY  # (and MAX_RETRIES: the library's bounds)
from .._job import MAX_DEPTH, JobStatus, Priority, check_job_id, nests_deeper, too_deep
from .._job import MAX_RETRIES as MAX_RETRIES

# The ASGI shapes the app (_app) and the lean server (_lean) exchange.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_LIST_LIMIT = 1000
"""``GET /jobs?limit=`` is clamped to this."""
JOB_FIELDS = frozenset({"task", "payload", "priority", "id", "max_retries", "timeout", "delay"})


class HTTPError(Exception):
    """An answer other than success: a status, a message for ``{"error": ...}``, headers."""

    def __init__(
        self, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


# ---------------------------------------------------------------------------- routing

ROUTES: dict[str, dict[str, str]] = {
    "/jobs": {"GET": "list_jobs", "POST": "create_job"},
    # POST only: GET /jobs/retry is the job whose id is "retry" (see route()).
    "/jobs/retry": {"POST": "retry_jobs"},
    "/jobs/batch": {"POST": "create_jobs"},  # GET /jobs/batch: the job "batch"
    "/tasks": {"GET": "tasks"},
    "/metrics": {"GET": "metrics"},
    "/healthz": {"GET": "healthz"},
    "/readyz": {"GET": "readyz"},
    "/openapi.json": {"GET": "openapi"},
    # The dashboard's page shell: public, it holds no data (see _dashboard.py).
    "/": {"GET": "dashboard"},
    "/dashboard.js": {"GET": "dashboard"},
    "/dashboard.css": {"GET": "dashboard"},
}
JOB_ROUTES: dict[str, dict[str, str]] = {
    "": {"GET": "get_job"},
    "cancel": {"POST": "cancel_job"},
    "retry": {"POST": "retry_job"},
}


@attrs.frozen
class Route:
    """Which handler answers a request, and the job id from the path, if any."""

    name: str
    job_id: str | None = None


_FIXED_ROUTES = {path: {method: Route(name) for method, name in methods.items()}
                 for path, methods in ROUTES.items()}
""":data:`ROUTES` as :class:`Route` values, made once."""


def route(method: str, path: str, raw_path: bytes = b"") -> Route:
    """Match ``method`` and ``path``; raise :class:`HTTPError` 404 or 405 (with ``Allow``).

    A ``/`` sent encoded (``%2F`` in ``raw_path``) is part of a segment, not a separator
    (RFC 3986, 2.2), and no route or job id has one: 404, rather than answer
    ``/jobs/x%2Fcancel`` as ``/jobs/x/cancel``, which a proxy's rule for the latter
    would not have seen.

    A fixed path wins for its methods; for the others, a path of the form ``/jobs/ID``
    still names that job, so ``GET /jobs/retry`` is the job whose id is ``retry``.
    ``HEAD`` is answered wherever ``GET`` is (RFC 9110, 9.1), by the same handler: the
    server sends the head of its answer without the body.
    """
    if b"%" in raw_path and b"%2f" in raw_path.lower():
        raise HTTPError(404, f"no route for {path} (an encoded '/' is not a separator)")
    wanted = "GET" if method == "HEAD" else method
    fixed = ROUTES.get(path) or {}
    if wanted in fixed:
        return _FIXED_ROUTES[path][wanted]
    methods: dict[str, str] | None = None
    job_id = None
    if path.startswith("/jobs/"):
        rest = path[len("/jobs/"):]
        job_id, _, action = rest.partition("/")
        if job_id and "/" not in action:
            methods = JOB_ROUTES.get(action)
    if methods is None and not fixed:
        if path == "/events":
            raise HTTPError(426, "/events is a websocket endpoint",
                            ((b"upgrade", b"websocket"), (b"connection", b"upgrade")))
        raise HTTPError(404, f"no route for {path}")
    methods = {**fixed, **(methods or {})}
    name = methods.get(wanted)
    if name is None:
        allowed = {*methods, "HEAD"} if "GET" in methods else set(methods)
        allow = ", ".join(sorted(allowed)).encode()
        raise HTTPError(405, f"method {method} not allowed on {path}", ((b"allow", allow),))
    return Route(name, job_id or None)


# ---------------------------------------------------------------------------- bodies


def loggable(text: str) -> str:
    """``text`` (a request's decoded path) for a log line: control and other unprintable
    characters escaped, so that ``%0a`` in a path cannot forge a line of its own."""
    if text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members as a dict, refusing a name given twice: JSON leaves what it
    means undefined (RFC 8259, 4), and taking the last one silently would let a body say
    one thing to a proxy that reads the first and another to the queue."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise ValueError(f"duplicate key {name!r}")
            seen.add(name)
    return obj


_STRICT_JSON = json.JSONDecoder(parse_constant=_reject_constant,
                                object_pairs_hook=_unique_keys)
"""The decoder ``json.loads(..., parse_constant=..., object_pairs_hook=...)`` would make
per call."""


def parse_json(body: bytes) -> Any:
    """Strict JSON (no NaN or Infinity, no key twice in an object); raise
    :class:`HTTPError` 400."""
    if not body.strip():
        raise HTTPError(400, "body: expected a JSON object, got an empty body")
    try:
        # What json.loads does with bytes: the encoding from the first bytes (UTF-8, -16
        # or -32), then the decoder.
        return _STRICT_JSON.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except RecursionError:  # (past what the stack allows: far past any payload's limit)
        raise HTTPError(400, f"body: JSON nested too deeply (a payload may nest at most "
                             f"{MAX_DEPTH} levels)") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise HTTPError(400, f"body: not valid JSON ({exc})") from None


def check_content_type(headers: Mapping[bytes, bytes]) -> None:
    """A body must be sent as JSON: ``application/json`` (or ``application/*+json``).

    A request without a content type is read as JSON too; any other type is refused
    (400), so that a browser's cross-site form post cannot enqueue jobs.
    """
    raw = headers.get(b"content-type")
    if raw is None:
        return
    kind = raw.split(b";", 1)[0].strip().lower()
    if kind == b"application/json" or (kind.startswith(b"application/") and kind.endswith(
        b"+json"
    )):
        return
    shown = raw.decode("latin-1")
    raise HTTPError(400, f"content-type: expected application/json, got {shown!r}")


@attrs.frozen
class JobRequest:
    """A validated ``POST /jobs`` body, ready for ``enqueue_nowait``."""

    task: str
    payload: Any = None
    priority: Priority | None = None
    id: str | None = None
    max_retries: int | None = None
    timeout: float | None = None
    delay: float = 0.0


_CONTAINERS = (dict, list)
"""What a decoded JSON payload nests in."""

_NOTHING: Any = object()
"""A field the body does not have (for :func:`_shown`)."""


def _shown(value: Any) -> str:
    """A value from a JSON body in a message: ``null``, ``true`` and ``false`` as JSON
    spells them (Python's ``None`` or ``True`` mean nothing to a client that sent JSON),
    an object or array by its kind, ``nothing`` for a field the body lacks, a string or
    number as the messages quote them (``'x'``, ``5``), shortened."""
    if value is _NOTHING:
        return "nothing"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _seconds(name: str, value: Any, *, zero_ok: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HTTPError(400, f"{name}: expected a number of seconds, got {_shown(value)}")
    try:
        seconds = float(value)
    except OverflowError:
        raise HTTPError(400, f"{name}: {value!r} is too large") from None
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise HTTPError(400, f"{name}: expected a number of seconds {bound}, got "
                             f"{_shown(value)}")
    return seconds


def parse_job_request(data: Any, *, may_nest: bool = True) -> JobRequest:
    """Check the fields of a ``POST /jobs`` body; raise :class:`HTTPError` 400 naming one."""
    if not isinstance(data, dict):
        raise HTTPError(400, f"body: expected a JSON object, got {_shown(data)}")
    if not JOB_FIELDS.issuperset(data):
        unknown = sorted(set(data) - JOB_FIELDS)
        known = ", ".join(sorted(JOB_FIELDS))
        raise HTTPError(400, f"{unknown[0]}: unknown field (expected some of {known})")
    task = data.get("task")
    if not isinstance(task, str) or not task:
        raise HTTPError(400, "task: expected a non-empty string, got "
                             f"{_shown(data.get('task', _NOTHING))}")
    priority = data.get("priority")
    if priority is not None:
        if not isinstance(priority, str) or priority not in ("high", "medium", "low"):
            raise HTTPError(
                400, f"priority: expected one of 'high', 'medium', 'low'; got "
                     f"{_shown(priority)}"
            )
        priority = Priority.coerce(priority)
    job_id = data.get("id")
    if job_id is not None:
        if not isinstance(job_id, str):
            raise HTTPError(400, f"id: expected a string, got {_shown(job_id)}")
        try:  # here, before the server looks the id up (a store could not take "\ud800")
            check_job_id(job_id)
        except InvalidJob as exc:
            raise HTTPError(400, str(exc)) from None
    max_retries = data.get("max_retries")
    if max_retries is not None and (
        isinstance(max_retries, bool)
        or not isinstance(max_retries, int)
        or not 0 <= max_retries <= MAX_RETRIES
    ):
        raise HTTPError(
            400, f"max_retries: expected an integer 0..{MAX_RETRIES}, got "
                 f"{_shown(max_retries)}"
        )
    timeout = data.get("timeout")
    if timeout is not None:
        timeout = _seconds("timeout", timeout, zero_ok=False)
    delay = data.get("delay")
    delay = 0.0 if delay is None else _seconds("delay", delay, zero_ok=True)
    if delay > MAX_DELAY:
        raise HTTPError(400, f"delay: at most {MAX_DELAY:.0f} seconds (ten years), got {delay!r}")
    payload = data.get("payload")
    # Here, before anything reads the payload (an id's stored repeat compares it): the
    # decoder took whatever its stack allowed, and a deeper stack would fail on it later.
    if may_nest and payload.__class__ in _CONTAINERS and nests_deeper(payload, MAX_DEPTH):
        raise HTTPError(400, too_deep("payload"))
    return JobRequest(
        task=task,
        payload=payload,
        priority=priority,
        id=job_id,
        max_retries=max_retries,
        timeout=timeout,
        delay=delay,
    )


MAX_BATCH = 1000
"""Jobs one ``POST /jobs/batch`` may carry."""


def parse_batch_request(data: Any) -> list[JobRequest]:
    """Check a ``POST /jobs/batch`` body ``{"jobs": [...]}`` (at most :data:`MAX_BATCH`
    job bodies as for ``POST /jobs``); raise :class:`HTTPError` 400 naming the item and
    field (``jobs[3].priority: ...``)."""
    if not isinstance(data, dict):
        raise HTTPError(400, f"body: expected a JSON object, got {_shown(data)}")
    unknown = sorted(set(data) - {"jobs"})
    if unknown:
        raise HTTPError(400, f"{unknown[0]}: unknown field (expected jobs)")
    jobs = data.get("jobs")
    if not isinstance(jobs, list):
        raise HTTPError(400, "jobs: expected a list of job objects, got "
                             f"{_shown(data.get('jobs', _NOTHING))}")
    if len(jobs) > MAX_BATCH:
        raise HTTPError(400, f"jobs: at most {MAX_BATCH} per batch, got {len(jobs)}")
    requests: list[JobRequest] = []
    for i, item in enumerate(jobs):
        if not isinstance(item, dict):
            raise HTTPError(400, f"jobs[{i}]: expected a JSON object, got {_shown(item)}")
        try:
            requests.append(parse_job_request(item))
        except HTTPError as exc:
            raise HTTPError(exc.status, f"jobs[{i}].{exc.message}", exc.headers) from None
    return requests


# ---------------------------------------------------------------------------- queries


CLOSE = (b"connection", b"close")
"""On a refusal sent before the body is read: the connection ends, the body is not read."""
SINGLE_HEADERS = frozenset((b"authorization", b"content-length", b"content-type", b"origin",
                            b"sec-fetch-site"))
"""Headers a check here reads that take one value: a request that sends one twice is
refused (RFC 9110, 5.3), as Host is (:mod:`._hosts`)."""


def header_dict(raw: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """A request's headers by (lowercase) name; 400 for a second line of one of
    :data:`SINGLE_HEADERS`.  Keeping the last silently would let a request say one thing
    to a proxy that reads the first (an ``Origin`` the proxy allowed, a token it checked)
    and another here."""
    headers = dict(raw)
    if len(headers) != len(raw):  # some name came twice: is it one that must not?
        seen: set[bytes] = set()
        for name, _ in raw:
            if name in seen and name in SINGLE_HEADERS:
                shown = name.decode("latin-1")
                raise HTTPError(400, f"{shown}: more than one {shown} header", (CLOSE,))
            seen.add(name)
    return headers


def parse_query(query_string: bytes) -> dict[str, str]:
    """The query string as a dict; a name given twice is refused (400) rather than one of
    its values chosen silently (a proxy or log may have judged the request by the
    other)."""
    if not query_string:
        return {}
    try:
        text = query_string.decode("ascii")
    except UnicodeDecodeError:
        raise HTTPError(400, "query: not ASCII") from None
    pairs = parse_qsl(text, keep_blank_values=True)
    query = dict(pairs)
    if len(query) < len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise HTTPError(400, f"{name}: given more than once")
            seen.add(name)
    return query


LIST_PARAMS = frozenset({"status", "task", "limit", "before"})
"""The query parameters ``GET /jobs`` knows; any other is refused (400), so that a filter
the server does not have (a typo, or one of a newer version) never lists every job."""


@attrs.frozen
class ListQuery:
    """A validated ``GET /jobs`` query."""

    status: JobStatus | None
    limit: int
    task: str | None = None
    before: str | None = None


def parse_list_query(query: Mapping[str, str]) -> ListQuery:
    """``status``, ``task``, ``limit`` and ``before`` of ``GET /jobs``; ``limit`` is
    clamped to 1000; raise :class:`HTTPError` 400 naming the parameter."""
    unknown = sorted(set(query) - LIST_PARAMS)
    if unknown:
        known = ", ".join(sorted(LIST_PARAMS))
        raise HTTPError(400, f"{unknown[0]}: unknown query parameter (expected some of {known})")
    raw_status = query.get("status")
    status = None
    if raw_status is not None:
        try:
            status = JobStatus.coerce(raw_status)
        except InvalidJob as exc:
            raise HTTPError(400, str(exc)) from None
    raw_limit = query.get("limit", "100")
    # Digits only: int() would also take "1_0", "+1", " 1" and other scripts' digits.
    if not (raw_limit.isascii() and raw_limit.isdigit()):
        raise HTTPError(400, f"limit: expected a positive integer, got {raw_limit!r}")
    digits = raw_limit.lstrip("0")  # (leading zeros: 0000000001 is 1)
    limit = MAX_LIST_LIMIT if len(digits) > 9 else int(digits or "0")  # (clamped below)
    if limit < 1:
        raise HTTPError(400, f"limit: expected a positive integer, got {raw_limit!r}")
    task = query.get("task")
    if task is not None and not task:
        raise HTTPError(400, "task: expected a task name, got ''")
    before = query.get("before")
    if before is not None:
        try:
            check_job_id(before)
        except InvalidJob as exc:
            raise HTTPError(400, f"before: {str(exc).removeprefix('id: ')}") from None
    return ListQuery(status, min(limit, MAX_LIST_LIMIT), task, before)


RETRY_FIELDS = frozenset({"status", "task"})
RETRYABLE = (JobStatus.FAILED, JobStatus.CANCELLED)


@attrs.frozen
class BulkRetry:
    """A validated ``POST /jobs/retry`` body: every job in ``status`` (of ``task``)."""

    status: JobStatus
    task: str | None = None


def parse_bulk_retry(data: Any) -> BulkRetry:
    """Check a ``POST /jobs/retry`` body; raise :class:`HTTPError` 400 naming the field."""
    if not isinstance(data, dict):
        raise HTTPError(400, f"body: expected a JSON object, got {_shown(data)}")
    unknown = sorted(set(data) - RETRY_FIELDS)
    if unknown:
        known = ", ".join(sorted(RETRY_FIELDS))
        raise HTTPError(400, f"{unknown[0]}: unknown field (expected some of {known})")
    raw = data.get("status")
    names = " or ".join(repr(s.value) for s in RETRYABLE)
    if not isinstance(raw, str) or raw not in {s.value for s in RETRYABLE}:
        raise HTTPError(400, f"status: expected {names}, got "
                             f"{_shown(data.get('status', _NOTHING))}")
    task = data.get("task")
    if task is not None and (not isinstance(task, str) or not task):
        raise HTTPError(400, f"task: expected a non-empty string, got {_shown(task)}")
    return BulkRetry(JobStatus(raw), task)


def wants_prometheus(query: Mapping[str, str], accept: bytes | None) -> bool:
    """``?format=prometheus`` (or ``json``) decides; else ``Accept: text/plain`` does."""
    fmt = query.get("format")
    if fmt is not None:
        if fmt == "prometheus":
            return True
        if fmt == "json":
            return False
        raise HTTPError(400, f"format: expected 'json' or 'prometheus', got {fmt!r}")
    if accept is None:
        return False
    accept = accept.lower()
    return b"text/plain" in accept and b"application/json" not in accept


@attrs.frozen
class EventFilter:
    """What a websocket client asked for: event types, job ids, a metrics snapshot, and
    the recent counter samples first (``history``, for the dashboard's chart)."""

    types: frozenset[str] | None = None
    job_ids: frozenset[str] | None = None
    snapshot: bool = False
    history: bool = False
    max_rate: int | None = None
    """Job events a second at most (see :meth:`JobQueue.subscribe`): those over it are
    dropped and counted in ``lagged``, and the queue does not build them."""

    @property
    def periodic_metrics(self) -> bool:
        return self.types is not None and "metrics" in self.types

    @property
    def job_types(self) -> frozenset[str] | None:
        """The job event types asked for (``None``: all): the queue builds no other."""
        return None if self.types is None else self.types & JOB_EVENT_TYPES

    def wants(self, kind: str, job_id: str | None) -> bool:
        if kind == "lagged":
            return True  # a client is always told what it missed
        if self.types is not None and kind not in self.types:
            return False
        return self.job_ids is None or kind == "metrics" or job_id in self.job_ids


def _flag(name: str, raw: str) -> bool:
    low = raw.lower()
    if low in ("", "1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}: expected true or false, got {raw!r}")


EVENT_PARAMS = frozenset({"types", "job_id", "snapshot", "history", "max_rate", "token"})


def parse_event_filter(query: Mapping[str, str]) -> EventFilter:
    """``types=a,b``, ``job_id=x[,y]``, ``snapshot=true``, ``history=true``,
    ``max_rate=N`` (and ``token``, the app's); raise ``ValueError``, also for another
    parameter (``type=failed`` must not stream every event)."""
    unknown = sorted(set(query) - EVENT_PARAMS)
    if unknown:
        known = ", ".join(sorted(EVENT_PARAMS))
        raise ValueError(f"{unknown[0]}: unknown query parameter (expected some of {known})")
    types = None
    raw_types = query.get("types")
    if raw_types:
        types = frozenset(t.strip() for t in raw_types.split(",") if t.strip())
        bad = sorted(types - EVENT_TYPES)
        if bad or not types:
            raise ValueError(
                f"types: unknown event type {bad[0] if bad else raw_types!r} "
                f"(expected some of {', '.join(sorted(EVENT_TYPES))})"
            )
    job_ids = None
    raw_ids = query.get("job_id")
    if raw_ids:
        job_ids = frozenset(i.strip() for i in raw_ids.split(",") if i.strip())
        if not job_ids:
            raise ValueError(f"job_id: expected one or more ids, got {raw_ids!r}")
    snapshot = _flag("snapshot", query["snapshot"]) if "snapshot" in query else False
    history = _flag("history", query["history"]) if "history" in query else False
    max_rate = None
    raw_rate = query.get("max_rate")
    if raw_rate is not None:
        if not (raw_rate.isascii() and raw_rate.isdigit() and len(raw_rate) <= 7
                and 1 <= int(raw_rate) <= 10**6):
            raise ValueError(f"max_rate: expected events a second, 1..1000000, got {raw_rate!r}")
        max_rate = int(raw_rate)
    return EventFilter(types, job_ids, snapshot, history, max_rate)
