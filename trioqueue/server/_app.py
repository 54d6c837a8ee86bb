"""The ASGI application: the HTTP API and the websocket ``/events`` stream of API.md.

A small hand-written router rather than a framework: eight routes do not need one, and
each request costs only what it uses.  The rules that need no I/O (routing, validation)
live in :mod:`._http`; what it asks of the lean server's response budget, in :mod:`._room`.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from typing import Any
from urllib.parse import urlsplit

import trio

from .._batch import BatchItem
from .._created import enqueue_batch_created, enqueue_created
from .._engine import JobQueue
from .._exceptions import (
    DuplicateJob,
    InvalidJob,
    InvalidTransition,
    JobNotFound,
    QueueFull,
    ShuttingDown,
    StoreError,
    TrioQueueError,
    UnknownTask,
)
from .._job import MAX_DEPTH, Job, JobStatus, rfc3339
from ._dashboard import MetricsHistory, static_response
from ._hosts import HostCheck
from ._http import (
    CLOSE,
    BulkRetry,
    EventFilter,
    HTTPError,
    JobRequest,
    Receive,
    Scope,
    Send,
    check_content_type,
    header_dict,
    loggable,
    parse_batch_request,
    parse_bulk_retry,
    parse_event_filter,
    parse_job_request,
    parse_json,
    parse_list_query,
    parse_query,
    route,
    wants_prometheus,
)
from ._json import EventEncoder, dumps, listing
from ._lean import Throttled
from ._openapi import openapi_document
from ._room import answer_bytes, page_bytes, response_of, room_for_answer
from ._settings import ServerSettings, ServerState

log = logging.getLogger("trioqueue.server")

_STATUS: tuple[tuple[type[TrioQueueError], int], ...] = (
    (ShuttingDown, 503),
    (JobNotFound, 404),
    (UnknownTask, 404),
    (DuplicateJob, 409),
    (InvalidTransition, 409),
    (InvalidJob, 400),
)
"""The queue's errors as HTTP statuses (the tree in trioqueue/_exceptions.py), answered in
one place; QueueFull is 429 with Retry-After, StoreError a logged 500."""


JSON_TYPE = (b"content-type", b"application/json")
PROMETHEUS_TYPE = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
WS_POLICY_VIOLATION = 1008
WS_GOING_AWAY = 1001
RETRY_PAGE = 1000
"""Jobs ``POST /jobs/retry`` lists at a time."""


_PROBES = frozenset({"/healthz", "/readyz"})
"""Answered whatever the Host and without a token: load balancers probe by address."""


def _close_reason(text: str) -> str:
    """A websocket close reason fits in 123 bytes of UTF-8."""
    return text.encode()[:120].decode(errors="ignore")


class App:
    """The ASGI app serving one :class:`JobQueue`."""

    def __init__(
        self,
        queue: JobQueue,
        settings: ServerSettings | None = None,
        state: ServerState | None = None,
    ) -> None:
        self.queue = queue
        self.settings = settings or ServerSettings()
        self.state = state or ServerState()
        self._token = None if not self.settings.token else self.settings.token.encode()
        self.hosts = HostCheck(self.settings.host, self.settings.allowed_hosts)
        self._store_errors = Throttled(log, logging.ERROR)
        self._openapi: bytes | None = None
        self._encode = EventEncoder()
        self.history = MetricsHistory()
        """Recent counter samples for the dashboard's chart; :func:`serve` runs its
        sampler (``history.run``)."""
        self._creating: dict[str, trio.Event] = {}
        """Ids of ``POST /jobs`` requests under way: a second request with the same id
        waits for the first to be done (its job committed, or taken back after a failed
        commit), then finds the job or makes it."""

    @property
    def closing(self) -> bool:
        return self.state.closing or self.queue.closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ------------------------------------------------------------------ checks

    def _authorized(self, headers: dict[bytes, bytes], query_token: str | None = None) -> bool:
        if self._token is None:
            return True
        presented = None
        auth = headers.get(b"authorization")
        if auth is not None:
            scheme, _, value = auth.partition(b" ")
            if scheme.lower() == b"bearer":
                presented = value.strip()
        if presented is None and query_token is not None:
            presented = query_token.encode()
        if presented is None:
            return False
        return hmac.compare_digest(presented, self._token)

    @staticmethod
    def _cross_site(method: str, headers: dict[bytes, bytes]) -> bool:
        """A browser says another site's page sent this request (``Sec-Fetch-Site``)."""
        if method in ("GET", "HEAD"):
            return False
        site = headers.get(b"sec-fetch-site")
        return site is not None and site.strip().lower() == b"cross-site"

    @staticmethod
    def _cross_origin(headers: dict[bytes, bytes]) -> bool:
        """A browser on another site is asking: refuse (no CORS, no cross-site requests)."""
        origin = headers.get(b"origin")
        if origin is None:
            return False
        try:
            netloc = urlsplit(origin.decode("latin-1")).netloc.lower()
        except ValueError:
            return True
        host = headers.get(b"host", b"").decode("latin-1").lower()
        return netloc != host

    # ------------------------------------------------------------------ http

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        path = scope["path"]
        try:
            # The refusals below come before the body is read, and end the connection
            # (CLOSE) rather than read a body nobody asked for.
            headers = header_dict(scope["headers"])
            if path not in _PROBES:  # load balancers probe them by address
                problem = self.hosts.headers_problem(scope["headers"])
                if problem is not None:
                    raise HTTPError(400, problem, (CLOSE,))
            found = route(method, path, scope.get("raw_path") or b"")
            if found.name not in ("healthz", "readyz"):
                if self._cross_site(method, headers):
                    raise HTTPError(403, "sec-fetch-site: cross-site requests are not allowed",
                                    (CLOSE,))
                if self._cross_origin(headers):
                    raise HTTPError(403, "cross-origin requests are not allowed", (CLOSE,))
                if found.name != "dashboard" and not self._authorized(headers):
                    raise HTTPError(401, "missing or wrong bearer token",
                                    ((b"www-authenticate", b"Bearer"), CLOSE))
            if found.name == "dashboard":  # the public page shell: no data, no token
                status, body, extra = static_response(path)
            else:
                query = parse_query(scope.get("query_string", b""))
                status, body, extra = await self._dispatch(found.name, found.job_id, query,
                                                           headers, receive, scope)
        except HTTPError as exc:
            status, body, extra = exc.status, dumps({"error": exc.message}), exc.headers
            if exc.status == 413:
                extra = (*extra, CLOSE)
        except StoreError as exc:  # (a Redis down fails every POST: one line each 10 s)
            self._store_errors("store error while answering %s %s: %s", method,
                               loggable(path), exc)
            status, body, extra = 500, dumps({"error": f"store error: {exc}"}), ()
        except TrioQueueError as exc:  # the queue refused: the error's own status
            answer = self._refused(exc)
            status, body, extra = answer.status, dumps({"error": answer.message}), answer.headers
        response_headers = [
            extra[0] if extra and extra[0][0] == b"content-type" else JSON_TYPE,
            (b"content-length", str(len(body)).encode()),
        ]
        response_headers.extend(h for h in extra if h[0] != b"content-type")
        await send({"type": "http.response.start", "status": status,
                    "headers": response_headers})
        await send({"type": "http.response.body", "body": body})
        if self.settings.access_log:  # the status sent (the server may have answered 503)
            sent = response_of(scope)
            log.info("%s %s %d", method, loggable(path), status if sent is None else sent.status)

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        limit = self.settings.max_body
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise HTTPError(400, "content-length: not an integer") from None
            if declared > limit:
                raise HTTPError(413, f"body: {declared} bytes is over the limit of {limit}")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"body: over the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _dispatch(
        self,
        name: str,
        job_id: str | None,
        query: dict[str, str],
        headers: dict[bytes, bytes],
        receive: Receive,
        scope: Scope,
    ) -> tuple[int, bytes, tuple[tuple[bytes, bytes], ...]]:
        q = self.queue
        if name == "create_job":
            check_content_type(headers)
            body = await self._read_body(headers, receive)
            # (a body of 2 * MAX_DEPTH bytes cannot nest deeper: each level is 2 brackets)
            request = parse_job_request(parse_json(body), may_nest=len(body) > 2 * MAX_DEPTH)
            room_for_answer(scope, answer_bytes(body, (request.payload,)))
            status, job = await self._create(request)
            return status, dumps(job.to_dict()), ()
        if name == "create_jobs":
            check_content_type(headers)
            body = await self._read_body(headers, receive)
            requests = parse_batch_request(parse_json(body))
            room_for_answer(scope, answer_bytes(body, [r.payload for r in requests]))
            jobs, created = await self._create_many(requests)
            return 202, dumps({"jobs": [job.to_dict() for job in jobs],
                               "created": created}), ()
        if name == "get_job":
            assert job_id is not None
            job = await q.get(job_id)
            return 200, dumps(job.to_dict()), ()
        if name == "list_jobs":
            lq = parse_list_query(query)
            page = await q.list_page(lq.status, lq.limit, task=lq.task, before=lq.before)
            # (no schedule point from here to the server's budget: the room is current)
            return 200, listing(page.jobs, page.next, page_bytes(scope)), ()
        if name == "cancel_job":
            assert job_id is not None
            # ShuttingDown (503): it was running and the queue closed under it.
            job = await q.cancel(job_id)
            return 200, dumps(job.to_dict()), ()
        if name == "retry_job":
            assert job_id is not None
            job = await self._retry(job_id)
            return 202, dumps(job.to_dict()), ()
        if name == "retry_jobs":
            check_content_type(headers)
            bulk = parse_bulk_retry(parse_json(await self._read_body(headers, receive)))
            return 202, dumps({"retried": await self._retry_all(bulk)}), ()
        if name == "tasks":
            await trio.lowlevel.checkpoint()
            config, registry = q.config, q.registry
            tasks = [{**registry.get(task).to_dict(config.max_retries,
                                                   config.default_timeout),
                      "next_run": rfc3339(q.next_run(task))}
                     for task in sorted(registry)]
            return 200, dumps({"tasks": tasks}), ()
        if name == "metrics":
            metrics = q.metrics()
            if wants_prometheus(query, headers.get(b"accept")):
                shared = self.queue.config.redis_url is not None
                return 200, metrics.to_prometheus(shared=shared).encode(), (PROMETHEUS_TYPE,)
            return 200, dumps(metrics.to_dict()), ()
        if name == "healthz":
            await trio.lowlevel.checkpoint()
            if self.closing:
                return 503, dumps({"status": "shutting_down"}), ()
            return 200, dumps({"status": "ok"}), ()
        if name == "readyz":
            await trio.lowlevel.checkpoint()
            if self.closing:
                return 503, dumps({"status": "shutting_down"}), ()
            reason = q.unavailable
            if reason is None:
                return 200, dumps({"status": "ok"}), ()
            # The reason may name a file or a host: only to who may read the queue, by a
            # name this server answers to (not a page rebound to it: no token needed).
            told = {"reason": reason} if (
                self._authorized(headers)
                and self.hosts.headers_problem(headers.items()) is None) else {}
            return 503, dumps({"status": "unavailable", **told}), ()
        if name == "openapi":
            await trio.lowlevel.checkpoint()
            if self._openapi is None:
                self._openapi = dumps(openapi_document())
            return 200, self._openapi, ()
        raise AssertionError(f"unhandled route {name}")  # pragma: no cover

    def _refused(self, exc: TrioQueueError) -> HTTPError:
        """The answer to one of the queue's errors: its status from :data:`_STATUS`
        (429 with ``Retry-After``)."""
        if isinstance(exc, QueueFull):
            return self._busy(exc)
        for kind, status in _STATUS:
            if isinstance(exc, kind):
                return HTTPError(status, str(exc))
        return HTTPError(500, str(exc))  # pragma: no cover - every error has its status

    def _busy(self, exc: Exception) -> HTTPError:
        retry_after = str(self.settings.retry_after).encode()
        return HTTPError(429, str(exc), ((b"retry-after", retry_after),))

    async def _create(self, request: JobRequest) -> tuple[int, Job]:
        """Enqueue without waiting for room: a full queue answers 429 at once.  Requests
        with the same id take turns here; 202 or 200 is the enqueue's own answer (it made
        the job, or found it there), so one job gets one 202 however many servers share
        the queue."""
        if request.id is None:
            return await self._create_one(request)
        while (earlier := self._creating.get(request.id)) is not None:
            await earlier.wait()
        done = self._creating[request.id] = trio.Event()
        try:
            return await self._create_one(request)
        finally:
            del self._creating[request.id]
            done.set()

    async def _create_one(self, request: JobRequest) -> tuple[int, Job]:
        q = self.queue
        self._check_taking(request.id)
        # The enqueue finds a job of the same id wherever it is (memory, the store, Redis)
        # and says whether it made the job: 202, or 200 for the one there (409 for
        # another task or payload).  A full queue answers 429 at once
        # (wait_for_room=False); with durability="sync", acknowledge only what is
        # committed (a job whose commit fails is taken back, and the StoreError answers
        # 500).  (A payload nested too deeply was refused before: the body's parser and
        # the enqueue's JSON check bound it, so no RecursionError comes from here.)
        options: dict[str, Any] = {
            "priority": request.priority, "job_id": request.id, "delay": request.delay,
            "max_retries": request.max_retries, "timeout": request.timeout,
            "wait_for_room": False,
        }
        if request.id is None:  # a new job every time: nothing to ask
            return 202, await q.enqueue(request.task, request.payload, **options)
        job, created = await enqueue_created(q.enqueue, request.task, request.payload,
                                             **options)
        return (202 if created else 200), job

    async def _create_many(self, requests: list[JobRequest]) -> tuple[list[Job], list[bool]]:
        """A batch, all or nothing, without waiting for room: 429 unless all of it fits
        now (per priority); a batch larger than the capacity is 400.  The jobs, and
        whether each was made (``False``: its id held that job already)."""
        self._check_taking(None, many=True)
        items = [BatchItem(r.task, r.payload, r.priority, r.id, r.delay, r.max_retries,
                           r.timeout) for r in requests]
        return await enqueue_batch_created(self.queue.enqueue_batch, items,
                                           wait_for_room=False)

    def _check_taking(self, job_id: str | None, *, many: bool = False) -> None:
        """Refuse a POST of new jobs at once while the server cannot take them, as ``GET
        /readyz`` says: 503 once it shuts down; 500 while the queue cannot store a job
        (its store fails to write; on Redis, Redis fails calls, refuses writes, or leaves
        them unanswered): sent on into a Redis that hangs, the POST would wait for the
        client's timeouts (15 s and more) and then not know whether the job was stored."""
        if self.closing:
            raise HTTPError(503, "the server is shutting down and takes no new jobs")
        reason = self.queue.unavailable
        if reason is not None:
            again = "" if job_id is None else f": send it again with the same id, {job_id!r}"
            what = "none of the jobs is stored" if many else "the job is not stored"
            raise StoreError(f"{reason}; {what}{again}")

    async def _retry(self, job_id: str) -> Job:
        """Retry answers 429 at once too, rather than waiting for room in the queue."""
        q = self.queue
        if self.closing:
            raise HTTPError(503, "the server is shutting down and takes no new jobs")
        try:  # in Redis, the job is not in this process: ask Redis
            current = q.get_nowait(job_id) if q.config.redis_url is None else await q.get(job_id)
        except JobNotFound:
            current = None
        if current is not None and current.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            label = current.priority.label
            waiting = q.metrics().queued[label]
            if waiting >= q.config.capacity:
                raise self._busy(QueueFull(f"priority {label}: {waiting} jobs already waiting"))
        try:
            return await q.retry(job_id)
        except UnknownTask as exc:  # a stored job of a task this server has no handler for
            raise HTTPError(404, f"job {job_id!r}: {exc}") from None

    async def _retry_all(self, bulk: BulkRetry) -> int:
        """Retry every job in ``bulk.status`` (of ``bulk.task``, if given); the count.

        Built on ``list_page`` and ``retry``: one job, and with a store one commit, at a
        time (it belongs in the engine and its store: one pass, one commit).

        The jobs are walked once, newest first, a page at a time, and a page's jobs are
        retried only once the next page is read: the walk's cursor is the last job of
        the page before, still in the status when it is used.  A retried job that fails
        again is behind the cursor (its place is its creation), so it is retried at most
        once per request, and a page costs the same however many jobs came before it.  Like a
        single retry, a full queue answers 429 at once rather than waiting for room; the
        jobs retried until then stay retried, and sending the request again retries the
        rest.
        """
        q = self.queue
        if self.closing:
            raise HTTPError(503, "the server is shutting down and takes no new jobs")
        if bulk.task is not None:
            q.registry.get(bulk.task)  # UnknownTask, 404: a misspelt task retries nothing
        retried = 0
        room: dict[str, int] | None = None
        page = await q.list_page(bulk.status, RETRY_PAGE, task=bulk.task)
        while True:
            ahead = None if page.next is None else await q.list_page(
                bulk.status, RETRY_PAGE, task=bulk.task, before=page.next)
            for job in page.jobs:
                label = job.priority.label
                if room is None or room[label] <= 0:
                    capacity = q.config.capacity
                    room = {p: capacity - n for p, n in q.metrics().queued.items()}
                    if room[label] <= 0:
                        raise self._busy(QueueFull(
                            f"priority {label}: {capacity - room[label]} jobs already waiting; "
                            f"{retried} jobs were retried before it filled (send the request "
                            "again for the rest)"))
                try:
                    await q.retry(job.id)
                except (JobNotFound, InvalidTransition, UnknownTask):
                    continue  # gone, retried by someone else meanwhile, or a task not served
                except ShuttingDown as exc:
                    raise HTTPError(503, f"{exc} ({retried} jobs were retried before)") from None
                retried += 1
                room[label] -= 1
            if ahead is None:
                return retried
            page = ahead

    # ------------------------------------------------------------------ websocket

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        headers: dict[bytes, bytes] = {}
        query: dict[str, str] = {}
        problem = None
        try:
            headers = header_dict(scope["headers"])
            query = parse_query(scope.get("query_string", b""))
        except HTTPError as exc:
            problem = exc.message
        if problem is None:
            problem = self.hosts.headers_problem(scope["headers"])
        if problem is None and scope["path"] != "/events":
            problem = f"no websocket endpoint at {scope['path']}"
        if problem is None and not self._authorized(headers, query.get("token")):
            problem = "missing or wrong bearer token"
        if problem is None and self._cross_origin(headers):
            problem = "cross-origin websocket connections are not allowed"
        wanted = None
        if problem is None:
            try:
                wanted = parse_event_filter(query)
            except ValueError as exc:
                problem = str(exc)
        if problem is not None or wanted is None:
            await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION,
                        "reason": _close_reason(problem or "bad request")})
            return
        if self.state.closed.is_set():
            await send({"type": "websocket.close", "code": WS_GOING_AWAY,
                        "reason": "the server is shutting down"})
            return
        gone = trio.Event()  # the client disconnected
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._until_disconnect, receive, gone, nursery.cancel_scope)
            nursery.start_soon(self._until_closed, nursery.cancel_scope)
            with contextlib.suppress(ShuttingDown):  # the queue closed as this came in
                await self._forward(wanted, send)
            nursery.cancel_scope.cancel()
        if not gone.is_set():  # the queue closed: say so rather than just hanging up
            await send({"type": "websocket.close", "code": WS_GOING_AWAY,
                        "reason": "the server is shutting down"})

    async def _until_disconnect(
        self, receive: Receive, gone: trio.Event, scope: trio.CancelScope
    ) -> None:
        while (await receive())["type"] != "websocket.disconnect":
            pass  # messages from the client are ignored
        gone.set()
        scope.cancel()

    async def _until_closed(self, scope: trio.CancelScope) -> None:
        await self.state.closed.wait()
        scope.cancel()

    async def _forward(self, wanted: EventFilter, send: Send) -> None:
        """Send each wanted event until the queue's stream ends."""
        encode = self._encode
        async with self.queue.subscribe(
            self.settings.event_buffer, metrics=wanted.periodic_metrics,
            max_rate=wanted.max_rate, types=wanted.job_types,
        ) as events:
            if wanted.history:  # the chart's past, before the first live snapshot
                message = self.history.message(self.queue.config.metrics_interval)
                await send({"type": "websocket.send", "text": dumps(message).decode()})
            if wanted.snapshot and not wanted.periodic_metrics:
                await send({"type": "websocket.send", "text": encode(self.queue.metrics_event())})
            async for event in events:
                if wanted.wants(event.type, event.job_id):
                    # The send waits while the client's TCP window is full.  Events pile up
                    # meanwhile in this client's own buffer (then it is sent ``lagged``);
                    # the queue never waits.  A client that accepts no data for
                    # slow_client_timeout is cut off by TCP_USER_TIMEOUT (see _serve.py).
                    await send({"type": "websocket.send", "text": encode(event)})
