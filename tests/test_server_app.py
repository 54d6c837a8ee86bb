"""The server's pure parts (routing, validation, filters) and the ASGI app in-process.

Cheaper than the end-to-end tests in test_server.py: no subprocess, no socket.  The app is
driven with hand-made ASGI messages against a real queue.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import trioqueue
from trioqueue.demo import registry as demo_registry
from trioqueue.server import App, ServerSettings, ServerState, openapi_document
from trioqueue.testing import (
    HostCheck,
    HTTPError,
    JobRequest,
    ListQuery,
    allowed_host,
    check_content_type,
    host_name,
    origin_form,
    parse_event_filter,
    parse_job_request,
    parse_list_query,
    rfc3339,
    route,
    wants_prometheus,
)

# ---------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("method", "path", "name", "job_id"),
    [
        ("POST", "/jobs", "create_job", None),
        ("GET", "/jobs", "list_jobs", None),
        ("GET", "/jobs/abc", "get_job", "abc"),
        ("POST", "/jobs/abc/cancel", "cancel_job", "abc"),
        ("POST", "/jobs/a.b:c-d/retry", "retry_job", "a.b:c-d"),
        ("GET", "/metrics", "metrics", None),
        ("GET", "/healthz", "healthz", None),
        ("GET", "/openapi.json", "openapi", None),
        ("GET", "/", "dashboard", None),
        ("GET", "/dashboard.js", "dashboard", None),
        # HEAD wherever GET is (RFC 9110, 9.1): health checkers probe with it
        ("HEAD", "/healthz", "healthz", None),
        ("HEAD", "/jobs/abc", "get_job", "abc"),
        ("HEAD", "/jobs/retry", "get_job", "retry"),
        ("HEAD", "/", "dashboard", None),
    ],
)
def test_routes(method: str, path: str, name: str, job_id: str | None) -> None:
    found = route(method, path)
    assert (found.name, found.job_id) == (name, job_id)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nothing", 404), ("GET", "/jobs/", 404), ("GET", "/jobs/a/b/c", 404),
        ("GET", "/jobs/a/nothing", 404), ("POST", "/jobs//cancel", 404),
        ("DELETE", "/jobs", 405), ("POST", "/jobs/abc", 405), ("GET", "/jobs/abc/cancel", 405),
        ("POST", "/metrics", 405), ("GET", "/events", 426), ("HEAD", "/nothing", 404),
        ("HEAD", "/jobs/a/cancel", 405),
    ],
)
def test_route_errors(method: str, path: str, status: int) -> None:
    with pytest.raises(HTTPError) as err:
        route(method, path)
    assert err.value.status == status
    if status == 405:
        assert dict(err.value.headers)[b"allow"]
        assert method in err.value.message


@pytest.mark.parametrize("raw", [b"/jobs/x%2Fcancel", b"/jobs/x%2fretry", b"/jobs%2Fbatch",
                                 b"/jobs/a%2F"])
def test_an_encoded_slash_is_no_separator(raw: bytes) -> None:
    """``/jobs/x%2Fcancel`` was routed as ``/jobs/x/cancel`` (the path is decoded first):
    a proxy's rule about the one did not see the other."""
    path = raw.decode().replace("%2F", "/").replace("%2f", "/")
    route("POST" if raw.endswith((b"cancel", b"retry")) else "GET", path)  # decoded: a route
    with pytest.raises(HTTPError) as err:
        route("POST", path, raw)
    assert err.value.status == 404
    assert route("GET", "/jobs/a%20b", b"/jobs/a%2520b").job_id == "a%20b"  # other escapes


@pytest.mark.parametrize(("path", "allow"), [
    ("/metrics", b"GET, HEAD"), ("/jobs/abc/cancel", b"POST"), ("/jobs", b"GET, HEAD, POST"),
    ("/jobs/retry", b"GET, HEAD, POST"),  # the bulk retry, or the job named "retry"
])
def test_allow_names_head_wherever_get_is(path: str, allow: bytes) -> None:
    with pytest.raises(HTTPError) as err:
        route("PUT", path)
    assert dict(err.value.headers)[b"allow"] == allow


def test_the_426_of_events_says_upgrade_in_connection_too() -> None:
    """RFC 9110, 7.8: a server that sends Upgrade sends the "upgrade" connection option."""
    with pytest.raises(HTTPError) as err:
        route("GET", "/events")
    assert dict(err.value.headers) == {b"upgrade": b"websocket", b"connection": b"upgrade"}


def test_every_route_is_in_the_openapi_document() -> None:
    paths = openapi_document()["paths"]
    for path, method in (("/jobs", "post"), ("/jobs", "get"), ("/jobs/{id}", "get"),
                         ("/jobs/{id}/cancel", "post"), ("/jobs/{id}/retry", "post"),
                         ("/metrics", "get"), ("/healthz", "get"), ("/openapi.json", "get")):
        assert method in paths[path]
    codes = set(paths["/jobs"]["post"]["responses"])
    assert {"200", "202", "400", "404", "409", "413", "429", "503"} <= codes
    json.dumps(openapi_document())  # serializable as it is


# ---------------------------------------------------------------------------- validation


def test_a_full_job_request() -> None:
    got = parse_job_request({"task": "echo", "payload": {"x": [1]}, "priority": "low",
                             "id": "j-1", "max_retries": 2, "timeout": 1, "delay": 0.5})
    assert got == JobRequest("echo", {"x": [1]}, trioqueue.Priority.LOW, "j-1", 2, 1.0, 0.5)
    assert parse_job_request({"task": "echo", "priority": None, "delay": None}) == \
        JobRequest("echo")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task": ""}, "task"), ({"task": None}, "task"), ({}, "task"),
        ({"task": "t", "priority": "HIGH"}, "priority"), ({"task": "t", "priority": 1}, "priority"),
        ({"task": "t", "id": ["x"]}, "id"),
        ({"task": "t", "max_retries": True}, "max_retries"),
        ({"task": "t", "max_retries": 10**7}, "max_retries"),
        ({"task": "t", "timeout": -1}, "timeout"), ({"task": "t", "timeout": "1"}, "timeout"),
        ({"task": "t", "delay": 10**400}, "delay"), ({"task": "t", "delay": 1e12}, "delay"),
        ({"task": "t", "delay": []}, "delay"), ({"task": "t", "extra": 1}, "extra"),
    ],
)
def test_bad_job_requests_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(HTTPError) as err:
        parse_job_request(body)
    assert err.value.status == 400
    assert err.value.message.startswith(field)


def test_content_types() -> None:
    check_content_type({})
    check_content_type({b"content-type": b"application/json; charset=utf-8"})
    check_content_type({b"content-type": b"application/vnd.api+json"})
    for bad in (b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data"):
        with pytest.raises(HTTPError):
            check_content_type({b"content-type": bad})


def test_list_query() -> None:
    assert parse_list_query({}) == ListQuery(None, 100)
    assert parse_list_query({"status": "failed", "limit": "5000"}) == ListQuery(
        trioqueue.JobStatus.FAILED, 1000)
    assert parse_list_query({"task": "t", "before": "0190abc"}) == ListQuery(
        None, 100, "t", "0190abc")
    assert parse_list_query({"limit": "0000000001"}) == ListQuery(None, 1)  # (not 1000)
    assert parse_list_query({"limit": "9" * 4400}) == ListQuery(None, 1000)  # (no int())
    for bad in ({"status": "FAILED"}, {"status": ""}, {"limit": "-1"}, {"limit": ""},
                {"task": ""}, {"before": ""}, {"before": "a b"}, {"after": "x"}):
        with pytest.raises(HTTPError):
            parse_list_query(bad)


def test_metrics_format() -> None:
    assert wants_prometheus({"format": "prometheus"}, None)
    assert not wants_prometheus({"format": "json"}, b"text/plain")
    assert wants_prometheus({}, b"text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    assert not wants_prometheus({}, b"application/json, text/plain")
    assert not wants_prometheus({}, None)


def test_event_filters() -> None:
    f = parse_event_filter({"types": "completed, failed", "job_id": "a,b"})
    assert f.wants("completed", "a")
    assert not f.wants("completed", "c")
    assert not f.wants("started", "a")
    assert f.wants("lagged", None)  # always: a client is told what it missed
    assert not f.periodic_metrics
    assert parse_event_filter({"types": "metrics"}).periodic_metrics
    assert parse_event_filter({"snapshot": "1"}).snapshot
    everything = parse_event_filter({})
    assert everything.wants("enqueued", "x")
    assert everything.wants("metrics", None)
    for bad in ({"types": "done"}, {"types": ","}, {"job_id": ","}, {"snapshot": "perhaps"}):
        with pytest.raises(ValueError):
            parse_event_filter(bad)
    # A typo of a filter streamed every event; refused as GET /jobs refuses one.
    with pytest.raises(ValueError, match=r"^type: unknown query parameter \(expected some "
                       r"of history, job_id, max_rate, snapshot, token, types\)$"):
        parse_event_filter({"type": "failed"})
    assert parse_event_filter({"token": "t", "types": "failed"}).wants("failed", "x")


# ---------------------------------------------------------------------------- hosts


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost", ("localhost", False)),
        ("LocalHost.:8080", ("localhost", False)),
        ("queue.example.com:", ("queue.example.com", False)),
        ("127.0.0.1:65535", ("127.0.0.1", True)),
        ("[::1]", ("::1", True)),
        ("[0:0::1]:80", ("::1", True)),
        ("[FE80::A]", ("fe80::a", True)),
        ("::1", None), ("[::1", None), ("[::1]x", None), ("[host]", None), ("[1.2.3.4]", None),
        ("a:b", None), ("a:123456", None), ("a:-1", None), ("a:٣", None), ("", None), (".", None),
        (":80", None), ("a b", None), ("a/b", None), ("a@b", None), ("é.example", None),
    ],
)
def test_host_name(value: str, expected: tuple[str, bool] | None) -> None:
    assert host_name(value) == expected


_HOSTS = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
)
_PATH_CHARS = st.sampled_from("abcXYZ019-._~!$&'()*+,;=:@%/")


@given(scheme=st.sampled_from(["http", "https", "HTTP", "hTTps"]), host=_HOSTS,
       port=st.none() | st.integers(0, 65535),
       path=st.none() | st.text(_PATH_CHARS, max_size=30).map(lambda p: "/" + p),
       query=st.none() | st.text(_PATH_CHARS | st.sampled_from("/?"), max_size=30))
def test_origin_form_splits_a_url_as_urllib_does(scheme: str, host: str, port: int | None,
                                                 path: str | None, query: str | None
                                                 ) -> None:
    """The target and Host made of an absolute-form URL agree with urllib.parse's split
    of the same URL (the reference; httptools' parse_url does the parsing)."""
    from urllib.parse import urlsplit
    url = f"{scheme}://{host}{'' if port is None else f':{port}'}{path or ''}"
    url += "" if query is None else f"?{query}"
    got = origin_form(url.encode())
    assert got is not None
    target, authority = got
    ref = urlsplit(url)
    assert authority.decode() == ref.netloc
    got_path, _, got_query = target.decode().partition("?")
    assert (got_path, got_query) == (ref.path or "/", ref.query)  # (an empty query: none)


def test_origin_form_refuses_user_information_and_leaves_other_targets() -> None:
    assert origin_form(b"http://h/x#frag") == (b"/x", b"h")
    assert origin_form(b"*") is None
    assert origin_form(b"ftp://h/x") is None
    assert origin_form(b"httpx://h/x") is None
    for bad, why in [(b"http://u:p@h/x", "user information"), (b"http:///x", "not a valid"),
                     (b"http://h:65536/", "not a valid")]:
        with pytest.raises(ValueError, match=why):
            origin_form(bad)


def test_allowed_host_entries() -> None:
    assert allowed_host(" Queue.Example.COM ") == "queue.example.com"
    assert allowed_host("[::1]") == allowed_host("::1") == allowed_host("0::1") == "::1"
    assert allowed_host("*") == "*"
    for bad in ("a.example:80", "[::1]:80", "*.example", "http://a", "a b", ""):
        with pytest.raises(ValueError, match="allowed_hosts: "):
            allowed_host(bad)
    assert ServerSettings(allowed_hosts="a, b,,").allowed_hosts == ("a", "b")
    assert ServerSettings(allowed_hosts=["A."]).allowed_hosts == ("a",)
    with pytest.raises(ValueError, match="max_connections"):
        ServerSettings(max_connections=0)


def test_host_check_of_a_specific_bind_address() -> None:
    check = HostCheck("192.168.1.5", ["queue.example.com"])
    for ok in ("192.168.1.5:8080", "localhost", "127.0.0.1", "[::1]:1", "queue.example.com"):
        assert check.problem(ok) is None, ok
    for refused in ("192.168.1.6", "[::2]", "example.com", "queue.example.com.evil"):
        problem = check.problem(refused)
        assert problem is not None
        assert problem.startswith(f"host: {refused!r} is not one this server answers to")
        assert "--allowed-hosts" in problem
    assert "not a valid host" in (check.problem("a b") or "")
    assert "x" * 100 + "...'" in (check.problem("x" * 5000) or "")  # not echoed whole
    assert HostCheck("::1").names == frozenset({"localhost", "127.0.0.1", "::1"})
    assert HostCheck("Queue.Local").problem("queue.local:80") is None


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "[::]", ""])
def test_host_check_of_every_interface_answers_ip_literals(bind: str) -> None:
    check = HostCheck(bind)
    for ok in ("192.0.2.7:8080", "10.0.0.1", "[2001:db8::1]:80", "localhost"):
        assert check.problem(ok) is None, ok
    assert check.problem("myhost.lan:8080") is not None  # a name must be listed
    assert HostCheck(bind, ["myhost.lan"]).problem("myhost.lan:8080") is None
    assert "any IP address" in check.describe()


def test_star_turns_the_host_check_off() -> None:
    check = HostCheck("127.0.0.1", ["*"])
    assert check.problem("anything at all") is None
    assert "any Host" in check.describe()


@given(st.text(max_size=80))
def test_host_check_never_raises(value: str) -> None:
    check = HostCheck("0.0.0.0", ["queue.example.com"])
    problem = check.problem(value)
    assert problem is None or problem.startswith("host: ")
    parsed = host_name(value)
    if problem is None:
        assert parsed is not None


# ---------------------------------------------------------------------------- the app


async def call(app: App, method: str, path: str, body: Any = None,
               headers: dict[str, str] | None = None, query: str = ""
               ) -> tuple[int, dict[bytes, bytes], Any]:
    raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    sent: list[dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": raw, "more_body": False}]

    async def receive() -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        await trio.lowlevel.checkpoint()
        sent.append(message)

    hdrs = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if body is not None:
        hdrs.append((b"content-type", b"application/json"))
    scope = {"type": "http", "method": method, "path": path, "headers": hdrs,
             "query_string": query.encode()}
    await app(scope, receive, send)
    start, content = sent
    response_headers = dict(start["headers"])
    data = content["body"]
    is_json = response_headers[b"content-type"] == b"application/json"
    return start["status"], response_headers, json.loads(data) if is_json else data


@pytest.fixture
async def queue() -> AsyncIterator[trioqueue.JobQueue]:
    config = trioqueue.QueueConfig(workers=1, capacity=2, shutdown_timeout=0)
    async with trioqueue.open_queue(demo_registry, config) as q:
        yield q


async def test_full_queue_answers_429_at_once(queue: trioqueue.JobQueue) -> None:
    app = App(queue, ServerSettings(retry_after=3))
    codes = []
    with trio.fail_after(5):
        for _ in range(5):
            status, headers, body = await call(app, "POST", "/jobs", {
                "task": "sleep", "payload": {"seconds": 60}})
            codes.append(status)
            await trio.testing.wait_all_tasks_blocked()  # let the worker take what it can
    assert codes == [202, 202, 202, 429, 429]
    assert headers[b"retry-after"] == b"3"
    assert "waiting" in body["error"]


async def test_retry_answers_429_rather_than_waiting(queue: trioqueue.JobQueue) -> None:
    app = App(queue)
    failed = await queue.enqueue("fail", max_retries=0)
    await queue.wait(failed.id)
    for _ in range(3):  # one runs, two fill the medium queue
        await queue.enqueue("sleep", {"seconds": 60})
        await trio.testing.wait_all_tasks_blocked()
    with trio.fail_after(5):
        status, headers, _ = await call(app, "POST", f"/jobs/{failed.id}/retry")
    assert status == 429
    assert headers[b"retry-after"] == b"1"


async def test_closing_answers_503(queue: trioqueue.JobQueue) -> None:
    state = ServerState()
    app = App(queue, state=state)
    assert (await call(app, "GET", "/healthz"))[0] == 200
    state.closing = True
    status, _, body = await call(app, "GET", "/healthz")
    assert (status, body) == (503, {"status": "shutting_down"})
    status, _, body = await call(app, "POST", "/jobs", {"task": "echo"})
    assert status == 503
    assert "shutting down" in body["error"]


async def test_token_is_compared_on_every_route_but_healthz(queue: trioqueue.JobQueue) -> None:
    app = App(queue, ServerSettings(token="t0k"))
    assert (await call(app, "GET", "/healthz"))[0] == 200
    assert (await call(app, "GET", "/metrics"))[0] == 401
    assert (await call(app, "GET", "/metrics", headers={"authorization": "Bearer t0k"}))[0] == 200
    assert (await call(app, "GET", "/metrics", headers={"authorization": "bearer t0k"}))[0] == 200
    assert (await call(app, "GET", "/metrics", headers={"authorization": "Basic t0k"}))[0] == 401
    # The token is for the websocket's query string only, not for HTTP.
    assert (await call(app, "GET", "/metrics", query="token=t0k"))[0] == 401


async def test_idempotent_post(queue: trioqueue.JobQueue) -> None:
    app = App(queue)
    body = {"task": "echo", "payload": {"a": 1}, "id": "same"}
    assert (await call(app, "POST", "/jobs", body))[0] == 202
    assert (await call(app, "POST", "/jobs", body))[0] == 200
    assert (await call(app, "POST", "/jobs", {**body, "payload": {"a": 2}}))[0] == 409


async def test_concurrent_posts_of_one_new_id_answer_202_once(tmp_path: Any) -> None:
    """With a store the id check reads it (an await): twenty requests with one new id at
    once made several 202s for one job.  Exactly one is 202 now, the others 200."""
    config = trioqueue.QueueConfig(persist_path=tmp_path / "q.db", workers=1)
    async with trioqueue.open_queue(demo_registry, config) as q:
        app = App(q)
        body = {"task": "echo", "payload": {"x": 1}, "id": "conc-1"}
        statuses: list[int] = []

        async def post() -> None:
            statuses.append((await call(app, "POST", "/jobs", body))[0])

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(post)
        assert sorted(statuses) == [200] * 19 + [202]
        assert q.metrics().enqueued == 1


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
async def test_a_lone_surrogate_is_never_a_500(backend: str, tmp_path: Any) -> None:
    """JSON's "\\ud800" decodes to a str that UTF-8 cannot encode: as an id it was looked
    up in the store before it was checked, and as a task filter it reached SQLite or
    Redis, each a 500.  Ids are 400 now, a filter matches nothing, a payload keeps it."""
    from tests.redis_util import REDIS_URL, admin, delete_queue, unique

    queue_name = unique("surrogate")
    where: dict[str, Any] = {
        "memory": {}, "sqlite": {"persist_path": tmp_path / "q.db"},
        "redis": {"redis_url": REDIS_URL, "queue_name": queue_name}}[backend]
    try:
        async with trioqueue.open_queue(demo_registry, trioqueue.QueueConfig(**where)) as q:
            app = App(q)
            for path, body in (("/jobs", b'{"task": "echo", "id": "\\ud800"}'),
                               ("/jobs/batch", b'{"jobs": [{"task": "echo", "id": "\\ud800"}]}')):
                status, _, answer = await call(app, "POST", path, body)
                assert status == 400, answer
                assert "id: '\\ud800' has characters other than" in answer["error"]
            status, _, answer = await call(app, "POST", "/jobs/retry",
                                           b'{"status": "failed", "task": "\\ud800"}')
            assert status == 404  # no such task (a misspelt task retries nothing)
            assert "no handler registered as '\\ud800'" in answer["error"], answer
            status, _, answer = await call(app, "POST", "/jobs",
                                           b'{"task": "echo", "payload": {"\\ud800": 1}}')
            assert status == 202
            assert (await q.wait(answer["id"])).result == {"\ud800": 1}
            status, _, _ = await call(app, "GET", "/jobs/\udc80")  # a path, decoded so
            assert status in (400, 404)
    finally:
        if backend == "redis":
            async with admin() as client:
                await delete_queue(client, queue_name)


async def test_the_access_log_escapes_what_a_path_decodes_to(
    queue: trioqueue.JobQueue, caplog: pytest.LogCaptureFixture,
) -> None:
    """``%0a`` in a path decodes to a newline: logged as it was, it forged a log line
    (``GET /x`` then a made-up ``GET /jobs 200``), without a token."""
    app = App(queue, ServerSettings(access_log=True, token="t"))
    with caplog.at_level("INFO", logger="trioqueue.server"):
        status, _, _ = await call(app, "GET", "/x\n2026-12-06 INFO trioqueue.server: GET /jobs 200")
    assert status == 404
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("GET")]
    assert line == "GET /x\\n2026-12-06 INFO trioqueue.server: GET /jobs 200 404"


async def test_deeply_nested_payload_is_400_not_500(queue: trioqueue.JobQueue) -> None:
    app = App(queue)
    deep = b'{"task": "echo", "payload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, _, body = await call(app, "POST", "/jobs", deep)
    assert status == 400
    assert "deep" in body["error"]


async def test_host_check_in_the_app(queue: trioqueue.JobQueue) -> None:
    app = App(queue, ServerSettings(host="0.0.0.0", allowed_hosts="queue.example.com"))
    for host in ("192.0.2.7:8080", "queue.example.com", "localhost:1"):
        assert (await call(app, "GET", "/metrics", headers={"host": host}))[0] == 200, host
    status, headers, body = await call(app, "POST", "/jobs", {"task": "echo"},
                                       headers={"host": "evil.example:8080"})
    assert status == 400
    assert headers[b"connection"] == b"close"
    assert "'evil.example:8080'" in body["error"]
    assert (await call(app, "GET", "/healthz", headers={"host": "evil.example"}))[0] == 200
    # No Host at all (HTTP/1.0): no browser sends that, so there is nothing to judge.
    assert (await call(app, "GET", "/metrics"))[0] == 200


async def test_cross_site_post_is_refused_before_the_token(queue: trioqueue.JobQueue) -> None:
    app = App(queue, ServerSettings(token="t0k"))
    cross = {"sec-fetch-site": "Cross-Site"}
    for auth in ({"authorization": "Bearer t0k"}, {}):
        status, headers, body = await call(app, "POST", "/jobs", {"task": "echo"},
                                           headers={**cross, **auth})
        assert status == 403
        assert headers[b"connection"] == b"close"
        assert body["error"].startswith("sec-fetch-site: ")
    assert (await call(app, "GET", "/metrics", headers={**cross, "authorization": "Bearer t0k"}
                       ))[0] == 200
    status, headers, _ = await call(app, "POST", "/jobs", {"task": "echo"})
    assert (status, headers[b"connection"]) == (401, b"close")


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_times_have_one_shape_and_sort_as_they_do(ts: float) -> None:
    """A time on a whole second (Redis keeps milliseconds; periodic jobs are made on
    their due second) was written without its fraction: ``...:58Z`` sorted after
    ``...:58.004000Z`` and a parser of the documented shape failed on it."""
    text = rfc3339(ts)
    assert text is not None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", text), text
    assert datetime.fromisoformat(text).timestamp() == pytest.approx(ts, abs=1e-6)
    later = rfc3339(ts + 0.001)
    assert later is not None
    assert (later > text) == (round(ts + 0.001, 6) > round(ts, 6))


async def test_store_errors_while_answering_are_logged_once_each_interval(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store that fails (Redis down) fails every POST: each wrote an ERROR line, 472 of
    them in a 10 s outage at 50 requests a second, burying the outage's own warning.  One
    line each 10 s now, with how many there were."""
    async with trioqueue.open_queue(demo_registry, trioqueue.QueueConfig(workers=1)) as q:
        app = App(q, ServerSettings(allowed_hosts="*"))

        async def failing(*args: Any, **kwargs: Any) -> Any:
            await trio.lowlevel.checkpoint()
            raise trioqueue.StoreError("redis: Connection refused; the job is not stored")

        monkeypatch.setattr(q, "enqueue", failing)
        with caplog.at_level(logging.ERROR, logger="trioqueue.server"):
            for _ in range(5):
                status, _, body = await call(app, "POST", "/jobs", {"task": "echo"})
                assert status == 500
                assert body["error"].startswith("store error: redis: Connection refused")
    lines = [r.getMessage() for r in caplog.records if r.name == "trioqueue.server"]
    assert lines == ["store error while answering POST /jobs: redis: Connection refused; the "
                     "job is not stored (1 times since this was last logged)"]
