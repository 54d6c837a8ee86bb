"""Regression tests for the attacks of issue 14 on the lean HTTP server (items 1 and 3).

Request smuggling (item 1): each reproduction goes to the real ``serve`` (the demo
registry, a real queue) over a socket on 127.0.0.1: a ``POST /jobs`` whose chunked body
breaks its framing and then carries a whole ``POST /jobs`` of its own.  Each must get one
400 and a closed connection, and the smuggled job must not exist.

Slow clients and limits (item 3): a body trickled one byte at a time is cut off at one
overall deadline (virtual time, the real connection handler over memory streams); idle
and slow clients at ``max_connections`` do not keep ``/healthz`` from an answer (real
sockets, real time, bounded); accept errors are one rate-limited warning, no traceback.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from trioqueue import QueueConfig, open_queue
from trioqueue.demo import registry as demo_registry
from trioqueue.server import App, ServerSettings, serve
from trioqueue.testing import h1 as _h1
from trioqueue.testing import lean as _lean

from .test_server_lean import Peer, connect, converse, echo_app, lean, parse_responses, post

# ---------------------------------------------------------------------------- smuggling


@asynccontextmanager
async def demo_server(**settings: Any) -> AsyncIterator[str]:
    """The real ``serve`` with the demo tasks; yields its base URL."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(
            serve, demo_registry, QueueConfig(workers=2),
            ServerSettings(host="127.0.0.1", port=0, **settings), stop=stop))
        try:
            yield url
        finally:
            stop.set()


def job_request(host: bytes, job_id: str) -> bytes:
    body = json.dumps({"task": "echo", "id": job_id, "payload": "smuggled"}).encode()
    return (b"POST /jobs HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (host, len(body), body))


def chunked_head(host: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    return (b"POST /jobs " + version + b"\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" % host)


# Each breaks the framing of the outer body, then a whole request follows: the old
# parser answered 400, kept the connection, and ran what followed as a new request.
SMUGGLERS = {
    "size zz": lambda inner: b"zz\r\n" + inner,
    "size -1": lambda inner: b"-1\r\n" + inner,
    "size 0x5": lambda inner: b"0x5\r\n" + inner,
    "size with a space before": lambda inner: b" 5\r\nhello\r\n0\r\n\r\n" + inner,
    "size with a space after": lambda inner: b"5 \r\nhello\r\n0\r\n\r\n" + inner,
    # 19 hex digits: llhttp reads the size (1) as any number; the byte after the one of
    # data is not the CRLF, so the framing still breaks right there.
    "19 digits": lambda inner: b"0000000000000000001\r\n" + inner,
    "size overflow": lambda inner: b"1" * 17 + b"\r\n" + inner,
    "data not followed by CRLF": lambda inner: b"5\r\nhelloXX" + inner,
    "data followed by LF only": lambda inner: b"5\r\nhello\n" + inner,
    "trailer that is a request line": lambda inner: b"5\r\nhello\r\n0\r\nGET /x HTTP/1.1"
                                                    b"\r\n\r\n" + inner,
}


async def read_all(peer: Peer) -> bytes:
    """Everything the server sends until it closes (bounded)."""
    with trio.fail_after(10):
        try:
            while await peer.more():
                pass
        except trio.BrokenResourceError:
            pass
    return peer.buf


def responses(data: bytes) -> list[tuple[int, dict[str, str]]]:
    found, rest = parse_responses(data)
    assert rest == b"", rest
    return [(status, headers) for status, headers, _ in found]


async def job_exists(url: str, job_id: str) -> bool:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.get(f"/jobs/{job_id}")
    assert response.status_code in (200, 404), response.text
    return response.status_code == 200


@pytest.mark.parametrize("name", list(SMUGGLERS))
async def test_smuggled_request_in_a_chunked_body(name: str) -> None:
    async with demo_server() as url:
        port = int(url.rsplit(":", 1)[1])
        host = b"127.0.0.1:%d" % port
        job_id = "smuggled-" + name.replace(" ", "-")
        attack = chunked_head(host) + SMUGGLERS[name](job_request(host, job_id))
        async with connect(port) as peer:
            await peer.send(attack)
            answered = responses(await read_all(peer))  # to the server's close
        assert [status for status, _ in answered] == [400]
        assert answered[0][1]["connection"] == "close"
        assert not await job_exists(url, job_id)
        # The control: the same inner request on its own does create the job.
        async with connect(port) as peer:
            await peer.send(job_request(host, job_id + "-control"))
            assert (await peer.response())[0] == 202
        assert await job_exists(url, job_id + "-control")


async def test_chunked_on_http_1_0_is_refused() -> None:
    """RFC 9112, 6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing."""
    async with demo_server() as url:
        port = int(url.rsplit(":", 1)[1])
        host = b"127.0.0.1:%d" % port
        body = job_request(host, "in-1.0")
        body = body[body.index(b"\r\n\r\n") + 4:]
        attack = (chunked_head(host, b"HTTP/1.0") + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
                  + job_request(host, "after-1.0"))
        async with connect(port) as peer:
            await peer.send(attack)
            answered = responses(await read_all(peer))
        assert [status for status, _ in answered] == [400]
        assert not await job_exists(url, "in-1.0")
        assert not await job_exists(url, "after-1.0")


async def test_valid_chunked_job_then_pipelined_job_both_run() -> None:
    """The control for the above: good framing, two jobs, one connection."""
    async with demo_server() as url:
        port = int(url.rsplit(":", 1)[1])
        host = b"127.0.0.1:%d" % port
        body = json.dumps({"task": "echo", "id": "chunked-ok"}).encode()
        request = chunked_head(host) + b"%x\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n" % (len(body),
                                                                                  body)
        async with connect(port) as peer:
            await peer.send(request + job_request(host, "pipelined-ok"))
            assert (await peer.response())[0] == 202
            assert (await peer.response())[0] == 202
        assert await job_exists(url, "chunked-ok")
        assert await job_exists(url, "pipelined-ok")


async def test_unauthenticated_body_is_not_read() -> None:
    """A 401 goes out before the body, which is never read into the parser: the
    connection closes at once, so the 'rest of the body' is never taken as a request."""
    async with demo_server(token="secret") as url:
        port = int(url.rsplit(":", 1)[1])
        host = b"127.0.0.1:%d" % port
        async with connect(port) as peer:
            await peer.send(b"POST /jobs HTTP/1.1\r\nHost: %s\r\nContent-Length: 60000\r\n"
                            b"\r\n" % host)
            status, headers, _ = await peer.response()
            assert status == 401
            assert headers["connection"] == "close"
            # What the client sends now would have been the body: it is read only to be
            # dropped (the linger), never parsed; the connection is already ending.
            try:
                await peer.send(job_request(host, "after-401").ljust(60000, b" "))
            except trio.BrokenResourceError:
                pass
            assert await peer.eof()
        async with httpx.AsyncClient(base_url=url, timeout=10,
                                     headers={"authorization": "Bearer secret"}) as client:
            assert (await client.get("/jobs/after-401")).status_code == 404


async def test_unread_body_closes_the_connection(autojump_clock: Any) -> None:
    """Whatever the app answers (here a 200 from a route that does not read), the rest
    of an unread body is not read: the response says close, and the server closes."""
    talk = await converse(b"POST /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 60000\r\n\r\n"
                          + b"x" * 100)
    assert talk.statuses == [200]
    assert talk.responses[0][1]["connection"] == "close"
    assert talk.closed_at == 0
    # When the whole unread body came with the head, it is skipped: the connection goes on.
    talk = await converse(post(b"small", "/noread") + post(b"next"))
    assert talk.statuses == [200, 200]


# ---------------------------------------------------------------------------- slow bodies


async def test_slow_body_is_cut_off_at_one_overall_deadline(autojump_clock: Any) -> None:
    """One byte a second keeps no per-read timeout from firing; the body still has
    BODY_TIMEOUT in all.  Against the real app on a real queue: no job is created."""
    async with open_queue(demo_registry, QueueConfig(workers=1)) as queue:
        app = App(queue, ServerSettings(host="127.0.0.1", allowed_hosts="*"))
        body = json.dumps({"task": "echo", "id": "slow"}).encode().ljust(200, b" ")
        head = (b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                b"\r\nContent-Length: %d\r\n\r\n" % len(body))
        pieces = [head] + [body[i:i + 1] for i in range(len(body))]
        talk = await converse(pieces, app, max_body=1 << 20, gap=1.0)
        assert talk.statuses == [408]
        assert "30 s" in json.loads(talk.responses[0][2])["error"]
        assert talk.closed_at == _h1.BODY_TIMEOUT  # from the head, sent at 0
        assert talk.responses[0][1]["connection"] == "close"
        with pytest.raises(Exception, match="slow"):
            await queue.get("slow")


async def test_slow_body_deadline_is_a_module_setting(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_h1, "BODY_TIMEOUT", 3.0)
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n"
    talk = await converse([head] + [b"x"] * 9, gap=1.0)  # one byte short, in time
    assert talk.statuses == [408]
    assert talk.closed_at == 3.0


# ---------------------------------------------------------------------------- slow readers


@pytest.mark.parametrize("evict", [False, True])
async def test_a_client_that_reads_no_response_is_cut_off_and_evictable(
    autojump_clock: Any, evict: bool,
) -> None:
    """A response its client does not read waits in ``send``: that wait lasts
    SEND_TIMEOUT in all and can be evicted at the cap, like a slow head or body (a
    client pipelining requests and reading slowly held its connection past every cap,
    with no token needed: the dashboard's files are public)."""
    server_end, client_end = trio.testing.lockstep_stream_pair()  # reads nothing
    server = _lean.Server(echo_app, 1024, max_connections=1)
    conn = _h1.Connection(server, server_end)
    server.connections.add(conn)
    closed = trio.Event()

    async def handle() -> None:
        await server.handle(conn)
        closed.set()

    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        nursery.start_soon(handle)
        await client_end.send_all(post(b"x"))
        await trio.testing.wait_all_tasks_blocked()
        assert conn.waiting is not None  # in send, waiting for the client
        if evict:
            assert server.evict("a new connection") is True
        with trio.fail_after(2 * _h1.SEND_TIMEOUT):
            await closed.wait()
        assert conn not in server.connections
        closed_after = trio.current_time() - started
        assert closed_after == (pytest.approx(0, abs=0.5) if evict
                                else pytest.approx(_h1.SEND_TIMEOUT, abs=0.5))
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------- connections


@asynccontextmanager
async def real_app_server(max_connections: int) -> AsyncIterator[int]:
    async with open_queue(demo_registry, QueueConfig(workers=1)) as queue:
        app = App(queue, ServerSettings(host="127.0.0.1"))
        async with lean(app, max_connections=max_connections) as (port, _):
            yield port


async def healthz(port: int) -> int:
    async with connect(port) as peer:
        await peer.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port)
        return (await peer.response())[0]


@pytest.mark.parametrize("kind", ["idle", "slow head", "slow body"])
async def test_healthz_answers_at_max_connections(kind: str) -> None:
    """Five clients hold all five connections; /healthz still gets its 200, twice."""
    async with real_app_server(max_connections=5) as port:
        host = b"127.0.0.1:%d" % port
        peers = []
        try:
            for _ in range(5):
                peer = Peer(await trio.open_tcp_stream("127.0.0.1", port))
                peers.append(peer)
                if kind == "idle":  # a keep-alive connection after a request
                    await peer.send(b"GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
                    assert (await peer.response())[0] == 200
                elif kind == "slow head":
                    await peer.send(b"GET /healthz HTTP/1.1\r\nHost: %s\r\n" % host)
                else:
                    await peer.send(b"POST /jobs HTTP/1.1\r\nHost: %s\r\n"
                                    b"Content-Length: 100\r\n\r\n{" % host)
            with trio.fail_after(5):
                assert await healthz(port) == 200
                assert await healthz(port) == 200
        finally:
            for peer in peers:
                await peer.stream.aclose()


async def fill_with_busy_requests(port: int, count: int, nursery: trio.Nursery,
                                  answers: list[int]) -> None:
    """Open ``count`` connections whose requests wait in the app on ``gate``."""
    for _ in range(count):
        async def client() -> None:
            async with connect(port) as peer:
                await peer.send(post(b"x"))
                answers.append((await peer.response())[0])

        nursery.start_soon(client)


class GatedApp:
    """The echo app, each request held until ``gate`` is set; ``full`` once ``count`` wait."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.inside = 0
        self.gate = trio.Event()
        self.full = trio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.inside += 1
        if self.inside == self.count:
            self.full.set()
        await self.gate.wait()
        await echo_app(scope, receive, send)


async def assert_refused_at_once(port: int, cap: int) -> None:
    async with connect(port) as peer:
        await peer.send(post(b"y"))
        status, headers, body = await peer.response()
        assert status == 503
        assert headers["retry-after"] == "1"
        assert headers["connection"] == "close"
        assert f"{cap} connections" in json.loads(body)["error"]
        assert await peer.eof()


async def test_busy_connections_get_503_at_once() -> None:
    """When every connection is inside the app, a new one is answered 503 and closed."""
    app = GatedApp(3)
    answers: list[int] = []
    async with lean(app, max_connections=3) as (port, _), trio.open_nursery() as nursery:
        await fill_with_busy_requests(port, 3, nursery, answers)
        with trio.fail_after(5):
            await app.full.wait()
            # Each request reaches the server before it closes: the 503 must not be
            # lost to the reset that closing a socket with unread data sends.
            for _ in range(20):
                await assert_refused_at_once(port, 3)
        app.gate.set()
    assert answers == [200, 200, 200]


async def test_a_refusal_reads_the_request_so_that_no_reset_loses_the_503(
    autojump_clock: Any,
) -> None:
    """Closing a socket with unread data sends a reset, and the client then loses the
    503 (what the audit saw at the cap with 1,000 connections): the refusal shuts its
    side, then reads and drops the request before it closes."""
    server_end, client_end = trio.testing.lockstep_stream_pair()  # a send waits for a read
    server = _lean.Server(echo_app, 1024, max_connections=1)
    server.refusing = 1
    received = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.refuse, server_end)
        while not received.endswith(b"}"):  # the 503's JSON body
            received += await client_end.receive_some(65536)
        await client_end.send_all(post(b"the request"))  # read by the server: no error
        assert await client_end.receive_some(65536) == b""  # then the close
    assert parse_responses(bytes(received))[0][0][0] == 503
    assert server.refusing == 0


async def test_open_file_limit_caps_max_connections(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Past the open-file limit, accept fails with EMFILE; the cap stays under it."""
    monkeypatch.setattr(_lean, "open_file_limit", lambda wanted: _lean.FD_RESERVE + 2)
    app = GatedApp(2)
    answers: list[int] = []
    async with lean(app, max_connections=1000) as (port, _), trio.open_nursery() as nursery:
        assert "max_connections 1000 does not fit the open-file limit of 66" in caplog.text
        await fill_with_busy_requests(port, 2, nursery, answers)
        with trio.fail_after(5):
            await app.full.wait()
            await assert_refused_at_once(port, 2)
        app.gate.set()
    assert answers == [200, 200]


def test_open_file_limit_is_raised_towards_what_is_wanted() -> None:
    """A soft limit below what max_connections needs is raised (up to the hard limit)."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 256
    if hard != resource.RLIM_INFINITY and hard < low + 100:
        pytest.skip(f"the hard open-file limit ({hard}) is too low to test with")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
        assert _lean.open_file_limit(low + 100) == low + 100
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (low + 100, hard)
        assert _lean.open_file_limit(10) == low + 100  # never lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_open_file_limit_past_what_the_kernel_takes_keeps_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--max-connections 10**30`` with no hard limit: setrlimit's OverflowError ended
    the server with a traceback; the soft limit stays as it is."""
    resource = pytest.importorskip("resource")
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, resource.RLIM_INFINITY))
    assert _lean.open_file_limit(10**30) == 1024


class FailingListener(trio.abc.Listener[trio.abc.Stream]):
    """accept() fails with EMFILE ``failures`` times, then waits forever."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.done = trio.Event()

    async def accept(self) -> trio.abc.Stream:
        self.calls += 1
        if self.calls <= self.failures:
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EMFILE, "Too many open files")
        self.done.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_accept_errors_are_one_warning_per_interval(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trioqueue.http")
    server = _lean.Server(echo_app, 1024)
    # An idle connection (accepted, nothing read yet): the first EMFILE closes it, to
    # free a descriptor for the connection waiting in the backlog.
    idle = _h1.Connection(server, trio.testing.memory_stream_pair()[0])
    server.connections.add(idle)
    listener = FailingListener(250)  # 25 s of failures, one every ACCEPT_RETRY_DELAY
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.accept, listener, nursery)
        await listener.done.wait()
        nursery.cancel_scope.cancel()
    assert idle.evicted
    assert not server.connections
    records = [r for r in caplog.records
               if r.name == "trioqueue.http" and "accept failed:" in r.getMessage()]
    assert len(records) == 3  # at 0 s, 10 s and 20 s
    evictions = [r for r in caplog.records if "to make room" in r.getMessage()]
    assert len(evictions) == 1
    assert "accept failed (EMFILE)" in evictions[0].getMessage()
    assert all(r.exc_info is None and r.levelno == logging.WARNING for r in records)
    assert "Too many open files" in records[0].getMessage()
    counts = [r.args[-1] for r in records]  # type: ignore[index]
    # The first at once, then each with the failures since the one before (about 100 in
    # 10 s; the mock clock's sums of 0.1 s steps land either side of 10.0).
    assert counts[0] == 1
    assert all(abs(count - 100) <= 1 for count in counts[1:]), counts  # type: ignore[operator]
