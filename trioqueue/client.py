"""An async client for ``trioqueue serve``, for Trio programs.

HTTP goes through one keep-alive ``httpx.AsyncClient``; the event stream through
trio-websocket.  Answers come back as the library's own values (:class:`~trioqueue.Job`,
:class:`~trioqueue.Event`) and refusals as the library's own exceptions, so code written
against a local queue reads the same against a remote one::

    from trioqueue.client import Client

    async with Client("http://127.0.0.1:8080", token=None) as client:
        job = await client.enqueue("echo", {"hi": 1}, priority="high")
        done = await client.wait(job.id)
        async with client.events(types=["completed", "failed"]) as events:
            async for event in events:
                ...

=================  ==========================================================
HTTP status        raised as
=================  ==========================================================
400                :class:`~trioqueue.InvalidJob`
404                :class:`~trioqueue.UnknownTask` (enqueue) or
                   :class:`~trioqueue.JobNotFound`
409                :class:`~trioqueue.DuplicateJob` (enqueue) or
                   :class:`~trioqueue.InvalidTransition` (cancel, retry)
429                :class:`~trioqueue.QueueFull` (``retry_after`` in seconds)
503                :class:`~trioqueue.ShuttingDown`
anything else      :class:`ServerError` (``status``; 401 is :class:`Unauthorized`)
=================  ==========================================================
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Self
from urllib.parse import urlencode
from urllib.request import getproxies

import attrs
import httpx
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
)

from ._client_answers import (
    EventStreamClosed,
    ServerError,
    Unauthorized,
    check_url,
    error_for,
    json_object,
    not_ours,
    retried_count,
    task_list,
)
from ._events import Event
from ._exceptions import (
    InvalidJob,
    InvalidTransition,
    JobNotFound,
)
from ._job import Job, JobPage, JobStatus, Priority, check_job_id, check_json, check_payloads
from ._websocket import open_websocket

__all__ = ["Client", "EventStreamClosed", "ServerError", "Unauthorized", "job_from_json"]

for _cls in (EventStreamClosed, ServerError, Unauthorized):  # public here: say so
    _cls.__module__ = __name__
del _cls

TERMINAL_TYPES = ("completed", "failed", "cancelled")


def _time(value: Any) -> float | None:
    if value is None:
        return None
    return datetime.fromisoformat(str(value)).timestamp()


def job_from_json(data: dict[str, Any]) -> Job:
    """A :class:`~trioqueue.Job` from its JSON form (RFC 3339 times back to epoch floats)."""
    created = _time(data.get("created_at"))
    return Job(
        id=data["id"],
        task=data["task"],
        payload=data.get("payload"),
        priority=Priority.coerce(data["priority"]),
        status=JobStatus(data["status"]),
        attempts=int(data.get("attempts", 0)),
        max_retries=int(data.get("max_retries", 0)),
        timeout=data.get("timeout"),
        created_at=math.nan if created is None else created,
        scheduled_for=_time(data.get("scheduled_for")),
        started_at=_time(data.get("started_at")),
        finished_at=_time(data.get("finished_at")),
        result=data.get("result"),
        error=data.get("error"),
        traceback=data.get("traceback"),
        progress=data.get("progress"),
    )


_EVENT_FIELDS = frozenset(f.name for f in attrs.fields(Event))


def event_from_json(data: dict[str, Any]) -> Event:
    return Event(**{k: v for k, v in data.items() if k in _EVENT_FIELDS})


DEFAULT_TIMEOUT = 30.0
"""Seconds a :class:`Client` waits for an answer, by default (``timeout=``)."""


def _check_finite(**numbers: float | None) -> None:
    """Raise :class:`InvalidJob` for a number JSON cannot carry (NaN, infinity)."""
    for name, value in numbers.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidJob(f"{name}: expected a finite number of seconds, got {value!r}")


def _verify(url: str) -> bool:
    """``verify=`` for a client of ``url``: True (httpx's default) but for a plain
    ``http://`` server reached without a proxy (``http_proxy``, ``all_proxy``: those
    httpx would take for it), where no TLS is ever spoken (redirects are not followed)
    and the certificates httpx would load cost 0.1-0.2 s of every CLI command's start."""
    return not url.startswith("http://") or bool(getproxies().keys() & {"http", "all"})


class Client:
    """A connection to one ``trioqueue serve``.  Use it as an async context manager (or
    call :meth:`aclose`); it keeps its HTTP connections alive between calls.

    ``url`` is the server's root (under a prefix, if a proxy mounts it there); the URL of
    one of its routes (``.../jobs``) raises :class:`ValueError` (see :func:`check_url`)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = check_url(url)
        self.token = token
        self.timeout = timeout
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(base_url=self.url, timeout=timeout,
                                               headers=headers, verify=_verify(self.url))

    def __repr__(self) -> str:
        return f"<Client {self.url}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    # ------------------------------------------------------------------ plumbing

    async def _call(self, method: str, path: str, *, op: str = "",
                    parse: Callable[[dict[str, Any]], Any] | None = None,
                    text: bool = False, with_status: bool = False, **kwargs: Any) -> Any:
        """One request; the answer, a JSON object, through ``parse`` (``text``: the
        body as text; ``with_status``: a tuple of the status and that).  The server's
        refusals raise what :func:`error_for` maps them to; an answer no trioqueue server
        gives (not JSON, or JSON of another shape: another program at that address, a
        proxy's error page) raises :class:`ServerError` saying so, instead of a
        ``KeyError`` deep in the caller."""
        response = await self._http.request(method, path, **kwargs)
        status = response.status_code
        if status < 300 and text:
            return response.text
        data = json_object(response)
        if data is None:
            raise not_ours(response, "not a JSON object")
        if status >= 300:
            raise error_for(status, str(data.get("error", response.text)), op,
                         response.headers.get("retry-after"))
        if parse is None:
            return (status, data) if with_status else data
        try:
            parsed = parse(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise not_ours(response, f"{type(exc).__name__}: {exc}") from None
        return (status, parsed) if with_status else parsed

    # ------------------------------------------------------------------ the API

    async def enqueue(
        self,
        task: str,
        payload: Any = None,
        *,
        priority: Priority | str | None = None,
        job_id: str | None = None,
        delay: float | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
    ) -> Job:
        """``POST /jobs``: the job as accepted (or the existing one, for a repeated id).
        A payload or number that JSON cannot carry (NaN, infinity, an object of another
        type) raises :class:`InvalidJob` naming it, before anything is sent."""
        job, _ = await self.enqueue_created(task, payload, priority=priority, job_id=job_id,
                                            delay=delay, max_retries=max_retries,
                                            timeout=timeout)
        return job

    async def enqueue_created(
        self,
        task: str,
        payload: Any = None,
        *,
        priority: Priority | str | None = None,
        job_id: str | None = None,
        delay: float | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
    ) -> tuple[Job, bool]:
        """:meth:`enqueue`, and whether this call made the job (``False``: ``job_id``
        held that job already; the server answered 200, not 202)."""
        check_json("payload", payload)
        _check_finite(delay=delay, timeout=timeout)
        body: dict[str, Any] = {"task": task, "payload": payload}
        if priority is not None:
            body["priority"] = Priority.coerce(priority).label
        for key, value in (("id", job_id), ("delay", delay), ("max_retries", max_retries),
                           ("timeout", timeout)):
            if value is not None:
                body[key] = value
        answer: tuple[int, Job] = await self._call("POST", "/jobs", op="enqueue", json=body,
                                                   parse=job_from_json, with_status=True)
        status, job = answer
        return job, status == 202

    async def enqueue_many(
        self,
        task: str,
        payloads: Iterable[Any],
        *,
        priority: Priority | str | None = None,
        delay: float | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        job_ids: Sequence[str] | None = None,
    ) -> list[Job]:
        """``POST /jobs/batch``: one job of ``task`` per payload, all or nothing (at most
        1000 a call); the jobs as accepted, in order.  :class:`QueueFull` (nothing
        enqueued) when the whole batch does not fit now.  ``job_ids``: an id per
        payload (each job idempotent, as with :meth:`enqueue`)."""
        jobs, _ = await self.enqueue_many_created(
            task, payloads, priority=priority, delay=delay, max_retries=max_retries,
            timeout=timeout, job_ids=job_ids)
        return jobs

    async def enqueue_many_created(
        self,
        task: str,
        payloads: Iterable[Any],
        *,
        priority: Priority | str | None = None,
        delay: float | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        job_ids: Sequence[str] | None = None,
    ) -> tuple[list[Job], list[bool]]:
        """:meth:`enqueue_many`, and for each job whether this call made it (``False``:
        its id in ``job_ids`` held that job already, as a repeated :meth:`enqueue`
        finds it; a server of an earlier version does not say: ``True`` for each)."""
        check_payloads(payloads)
        payloads = list(payloads)
        for i, payload in enumerate(payloads):
            check_json(f"payloads[{i}]", payload)
        _check_finite(delay=delay, timeout=timeout)
        if job_ids is not None and len(job_ids) != len(payloads):
            raise ValueError(f"job_ids: expected {len(payloads)} ids (one per payload), "
                             f"got {len(job_ids)}")
        item: dict[str, Any] = {"task": task}
        if priority is not None:
            item["priority"] = Priority.coerce(priority).label
        for key, value in (("delay", delay), ("max_retries", max_retries),
                           ("timeout", timeout)):
            if value is not None:
                item[key] = value
        jobs = [{**item, "payload": payload} for payload in payloads]
        if job_ids is not None:
            for job, job_id in zip(jobs, job_ids, strict=True):
                job["id"] = job_id
        body = {"jobs": jobs}
        answer: tuple[list[Job], list[bool]] = await self._call(
            "POST", "/jobs/batch", op="enqueue", json=body, parse=_batch_answer)
        return answer

    async def get(self, job_id: str) -> Job:
        """``GET /jobs/{id}``; an id no job can have is InvalidJob (no request is sent)."""
        job: Job = await self._call("GET", f"/jobs/{check_job_id(job_id)}", parse=job_from_json)
        return job

    async def list_jobs(self, status: JobStatus | str | None = None, limit: int = 100, *,
                        task: str | None = None, before: str | None = None) -> list[Job]:
        """``GET /jobs``: newest first (:meth:`list_page`'s jobs)."""
        return (await self.list_page(status, limit, task=task, before=before)).jobs

    async def list_page(self, status: JobStatus | str | None = None, limit: int = 100, *,
                        task: str | None = None, before: str | None = None) -> JobPage:
        """``GET /jobs``: a page of jobs, newest first, only those in ``status``, of
        ``task`` and created before the job ``before`` if given; ``next`` is the next
        page's ``before`` (``None`` on the last, and from a server that does not page)."""
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = JobStatus.coerce(status).value
        if task is not None:
            params["task"] = task
        if before is not None:
            params["before"] = before
        page: JobPage = await self._call("GET", "/jobs", params=params, parse=_page)
        return page

    async def iter_jobs(self, status: JobStatus | str | None = None, *,
                        task: str | None = None, page_size: int = 1000) -> AsyncIterator[Job]:
        """Every job (in ``status``, of ``task``), newest first, a page at a time."""
        before: str | None = None
        while True:
            page = await self.list_page(status, page_size, task=task, before=before)
            for job in page.jobs:
                yield job
            if page.next is None:
                return
            before = page.next

    async def cancel(self, job_id: str) -> Job:
        """``POST /jobs/{id}/cancel``."""
        job: Job = await self._call("POST", f"/jobs/{check_job_id(job_id)}/cancel", op="cancel",
                                    parse=job_from_json)
        return job

    async def retry(self, job_id: str) -> Job:
        """``POST /jobs/{id}/retry``."""
        job: Job = await self._call("POST", f"/jobs/{check_job_id(job_id)}/retry", op="retry",
                                    parse=job_from_json)
        return job

    async def retry_all(self, status: JobStatus | str = JobStatus.FAILED, *,
                        task: str | None = None) -> int:
        """Retry every FAILED (or CANCELLED) job, only ``task``'s if given; return how
        many were queued again.

        ``POST /jobs/retry``, which may take a while for many jobs (no read timeout).  A
        full queue raises :class:`~trioqueue.QueueFull` with the jobs retried until then
        left retried; call it again for the rest.  Against a server without that route
        (405), the jobs are listed and retried one by one from here, a page of the newest
        1,000 at a time: with ``task``, jobs behind 1,000 newer ones of other tasks are
        not reached that way."""
        try:
            wanted: JobStatus | None = JobStatus(status)
        except ValueError:
            wanted = None
        if wanted is None or wanted not in (JobStatus.FAILED, JobStatus.CANCELLED):
            shown = status if wanted is None else wanted.value
            raise InvalidJob(f"status: expected 'failed' or 'cancelled', got {shown!r}")
        body: dict[str, Any] = {"status": wanted.value}
        if task is not None:
            body["task"] = task
        try:
            retried: int = await self._call(
                "POST", "/jobs/retry", op="retry_all", json=body,
                timeout=httpx.Timeout(self.timeout, read=None), parse=retried_count)
        except ServerError as exc:
            if exc.status != 405:
                raise
            return await self._retry_each(wanted, task)
        return retried

    async def _retry_each(self, status: JobStatus, task: str | None) -> int:
        page_size = 1000  # the most GET /jobs answers with
        seen: set[str] = set()
        retried = 0
        while True:
            page = await self.list_jobs(status, page_size)
            fresh = [job for job in page if job.id not in seen]
            seen.update(job.id for job in fresh)
            for job in fresh:
                if task is not None and job.task != task:
                    continue
                try:
                    await self.retry(job.id)
                except (JobNotFound, InvalidTransition):
                    continue  # gone, or retried by someone else meanwhile
                retried += 1
            if len(page) < page_size or not fresh:
                return retried

    async def metrics(self) -> dict[str, Any]:
        """``GET /metrics`` as a dict (the keys of ``Metrics.to_dict()``)."""
        result: dict[str, Any] = await self._call("GET", "/metrics")
        return result

    async def prometheus_metrics(self) -> str:
        """``GET /metrics?format=prometheus``: the Prometheus text format."""
        text: str = await self._call("GET", "/metrics", params={"format": "prometheus"},
                                     text=True)
        return text

    async def tasks(self) -> list[dict[str, Any]]:
        """``GET /tasks``: each registered task with the defaults a job of it gets
        (``name``, ``priority``, ``max_retries``, ``timeout``, ``schedule``, ``every``,
        ``concurrency``), by name."""
        tasks: list[dict[str, Any]] = await self._call("GET", "/tasks", parse=task_list)
        return tasks

    async def health(self) -> bool:
        """True while the server takes jobs (``/healthz`` 200 ``{"status": "ok"}``), False
        while it shuts down (503 ``{"status": "shutting_down"}``); :class:`ServerError`
        for an answer no trioqueue server gives."""
        response = await self._http.get("/healthz")
        data = json_object(response)
        status = None if data is None else data.get("status")
        if (response.status_code, status) == (200, "ok"):
            return True
        if (response.status_code, status) == (503, "shutting_down"):
            return False
        raise not_ours(response, "not the health answer of a trioqueue server")

    async def unavailable(self) -> str | None:
        """``None`` while the server's queue takes new jobs (``/readyz`` 200); else why
        not, as :attr:`JobQueue.unavailable <trioqueue.JobQueue.unavailable>` says it:
        ``"shutting down"``, or the reason the store or Redis fails (``"unavailable"``
        when the server tells only a caller with its token)."""
        response = await self._http.get("/readyz")
        data = json_object(response)
        status = None if data is None else data.get("status")
        if (response.status_code, status) == (200, "ok"):
            return None
        if (response.status_code, status) == (503, "shutting_down"):
            return "shutting down"
        if (response.status_code, status) == (503, "unavailable"):
            assert data is not None
            reason = data.get("reason")
            return reason if isinstance(reason, str) and reason else "unavailable"
        raise not_ours(response, "not the readiness answer of a trioqueue server")

    async def wait(self, job_id: str, *, poll: float = 5.0) -> Job:
        """Wait until the job is COMPLETED, FAILED or CANCELLED; return that snapshot.

        Listens for the job's events and looks at the job again whenever one arrives (and
        every ``poll`` seconds, in case the stream missed one).  Without an event stream
        (it ended, or the server or a proxy in front of it refused or never completed the
        websocket upgrade) it looks every ``poll`` seconds, at most 0.5.  A server it
        cannot connect to raises as :meth:`events` does.  Wrap it in ``trio.fail_after``
        for a deadline.
        """
        check_job_id(job_id)
        streaming = False
        try:
            async with self.events(types=TERMINAL_TYPES, job_id=job_id) as events:
                streaming = True
                while True:
                    job = await self.get(job_id)
                    if job.status.terminal:
                        return job
                    with trio.move_on_after(poll):
                        await events.__anext__()
        except (EventStreamClosed, StopAsyncIteration, OSError):
            pass
        except (ServerError, httpx.ConnectTimeout):
            if streaming:  # an answer to get(), not to the upgrade
                raise
        while True:  # no event stream (it closed, or a proxy refuses websockets): poll
            job = await self.get(job_id)
            if job.status.terminal:
                return job
            await trio.sleep(min(poll, 0.5))

    @asynccontextmanager
    async def events(
        self,
        types: Iterable[str] | None = None,
        job_id: str | Iterable[str] | None = None,
        *,
        snapshot: bool = False,
    ) -> AsyncIterator[AsyncIterator[Event]]:
        """The server's event stream, as :class:`~trioqueue.Event` values.

        ``types`` and ``job_id`` filter on the server; ``snapshot=True`` starts with a
        ``metrics`` event; ``"metrics"`` in ``types`` adds one every second or so.  The
        stream is connected when this returns, so events of jobs posted after it are
        not missed.  It ends when the server shuts down and raises
        :class:`EventStreamClosed` for a bad filter or token.

        Opening it raises :class:`ServerError` with the status when the server, or a
        proxy in front of it, refuses the websocket upgrade of ``/events`` (a proxy not
        set up for websockets), and, as the other methods do, ``httpx.ConnectError``
        (``httpx.ConnectTimeout``) naming the URL and the cause when it cannot connect.
        """
        query: dict[str, str] = {}
        if types is not None:
            query["types"] = ",".join(types)
        if job_id is not None:
            query["job_id"] = job_id if isinstance(job_id, str) else ",".join(job_id)
        if snapshot:
            query["snapshot"] = "true"
        ws_url = "ws" + self.url[len("http"):] if self.url.startswith("http") else self.url
        ws_url += "/events" + (f"?{urlencode(query)}" if query else "")
        headers = [(b"authorization", f"Bearer {self.token}".encode())] if self.token else None
        async with _open_events(ws_url, headers) as ws:

            async def stream() -> AsyncGenerator[Event, None]:
                while True:
                    try:
                        message = await ws.get_message()
                    except ConnectionClosed as closed:
                        reason = closed.reason
                        code = 1006 if reason is None else reason.code
                        if code in (1000, 1001):
                            return
                        text = None if reason is None else reason.reason
                        raise EventStreamClosed(code, text) from None
                    yield event_from_json(json.loads(message))

            iterator = stream()
            try:
                yield iterator
            finally:
                await iterator.aclose()


@asynccontextmanager
async def _open_events(ws_url: str, headers: list[tuple[bytes, bytes]] | None
                       ) -> AsyncIterator[WebSocketConnection]:
    """``open_websocket``, its failures to open raised as :func:`_no_stream` says."""
    opened = False
    try:
        async with open_websocket(ws_url, headers) as ws:
            opened = True
            yield ws
    except HandshakeError as exc:
        if opened:  # not the opening's
            raise
        raise _no_stream(ws_url, exc) from exc.__cause__


def _no_stream(ws_url: str, exc: HandshakeError) -> Exception:
    """What :meth:`Client.events` raises for trio-websocket's failure to open ``ws_url``:
    the exception the other methods raise for the same thing, naming the URL."""
    where = ws_url.partition("?")[0]
    if isinstance(exc, ConnectionRejected):
        body = (exc.body or b"").decode("utf-8", errors="replace")
        start = body[:120] + ("..." if len(body) > 120 else "")
        answer = f"the answer began {start!r}" if body else "the answer had no body"
        return ServerError(exc.status_code,
                           f"the server (or a proxy in front of it) refused the websocket "
                           f"upgrade of {where} (is the proxy set up to pass websockets "
                           f"on?); {answer}")
    request = httpx.Request("GET", ws_url)
    if isinstance(exc, ConnectionTimeout):
        return httpx.ConnectTimeout(f"cannot open the event stream {where}: no connection "
                                    "or no answer to the websocket upgrade in time",
                                    request=request)
    cause = exc.__cause__ or exc
    return httpx.ConnectError(f"cannot open the event stream {where}: "
                              f"{str(cause) or type(cause).__name__}", request=request)


def _jobs(data: dict[str, Any]) -> list[Job]:
    return [job_from_json(job) for job in data["jobs"]]


def _batch_answer(data: dict[str, Any]) -> tuple[list[Job], list[bool]]:
    jobs = _jobs(data)
    if "created" not in data:  # (a server of an earlier version does not say)
        return jobs, [True] * len(jobs)
    created = data["created"]
    if (not isinstance(created, list) or len(created) != len(jobs)
            or not all(isinstance(c, bool) for c in created)):
        raise ValueError(f"created: expected {len(jobs)} booleans, got {created!r:.100}")
    return jobs, created


def _page(data: dict[str, Any]) -> JobPage:
    nxt = data.get("next")
    return JobPage(_jobs(data), nxt if isinstance(nxt, str) else None)
