"""The lean HTTP server (trioqueue/server/_lean.py, _h1.py, _ws.py, _wire.py): its request
checks and connection rules.

Two ways in, both through the real connection code:

- ``converse``: the server's connection handler over an in-memory stream pair, under
  trio's MockClock (``autojump_clock``), for what is about bytes and time: which
  responses come, and when the server closes (virtual seconds, exact).
- ``serve_lean`` on 127.0.0.1 port 0 with a small echo app (or the real app on a real
  queue), spoken to over raw sockets so that every byte on the wire is chosen here.

The end-to-end suite (tests/test_server.py and the rest) runs against the same server.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from trio_websocket import open_websocket_url

from trioqueue import QueueConfig, open_queue
from trioqueue.demo import registry as demo_registry
from trioqueue.server import App, ServerSettings
from trioqueue.testing import h1 as _h1
from trioqueue.testing import lean as _lean
from trioqueue.testing import serve_lean

Scope = dict[str, Any]
App_ = Callable[[Any, Any, Any], Awaitable[None]]


async def echo_app(scope: Scope, receive: Any, send: Any) -> None:
    """Answers with what it saw; ``/noread`` does not read the body."""
    assert scope["type"] == "http"
    body = b""
    if scope["path"] != "/noread":
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                # What a real app does: answer something.  The server drops it (it has
                # answered this broken request itself).
                await send({"type": "http.response.start", "status": 499, "headers": []})
                await send({"type": "http.response.body", "body": b"gone"})
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
    seen = {"method": scope["method"], "path": scope["path"], "raw_path":
            scope["raw_path"].decode(), "query": scope["query_string"].decode(),
            "body": body.decode("latin-1"), "headers": [[k.decode(), v.decode("latin-1")]
                                                        for k, v in scope["headers"]],
            "client": list(scope["client"] or ()), "server": list(scope["server"] or ()),
            "http_version": scope["http_version"], "scheme": scope["scheme"]}
    out = json.dumps(seen).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})


# ---------------------------------------------------------------------------- in memory


Response = tuple[int, dict[str, str], bytes]


def parse_responses(data: bytes) -> tuple[list[Response], bytes]:
    """The complete responses in ``data`` (bodies framed by content-length), and the rest."""
    responses: list[Response] = []
    while b"\r\n\r\n" in data:
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers.get("content-length", "0"))
        if len(rest) < length:
            break
        responses.append((status, headers, rest[:length]))
        data = rest[length:]
    return responses, data


@attrs.define
class Conversation:
    responses: list[Response]
    closed_at: float | None
    """Virtual seconds from the first byte sent to the server's EOF (None: still open)."""
    rest: bytes
    """Bytes after the last complete response."""
    last_at: float | None = None
    """Virtual seconds from the first byte sent to the last byte received."""

    @property
    def statuses(self) -> list[int]:
        return [status for status, _, _ in self.responses]

    @property
    def closed_at_once(self) -> bool:
        """The server closed without waiting for the keep-alive timeout."""
        return self.closed_at is not None and self.closed_at < _h1.KEEP_ALIVE_TIMEOUT


async def converse(
    data: bytes | Sequence[bytes],
    app: App_ = echo_app,
    *,
    max_body: int = 1024,
    gap: float = 0.0,
    eof: bool = False,
    wait: float = 120.0,
) -> Conversation:
    """Send ``data`` (or its pieces, ``gap`` virtual seconds apart) to the real connection
    handler over a memory stream pair while reading what comes back, until the server
    closes or ``wait`` passes.  Under ``autojump_clock`` (or a MockClock of the caller's).
    """
    pieces = [data] if isinstance(data, bytes) else list(data)
    server_end, client_end = trio.testing.memory_stream_pair()
    server = _lean.Server(app, max_body)
    conn = _h1.Connection(server, server_end)
    server.connections.add(conn)
    received = bytearray()
    closed_at = last_at = None

    async def write() -> None:
        for i, piece in enumerate(pieces):
            if i and gap:
                await trio.sleep(gap)
            try:
                await client_end.send_all(piece)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
        if eof:
            await client_end.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, conn)
        started = trio.current_time()
        nursery.start_soon(write)
        with trio.move_on_after(wait):
            while True:
                try:
                    chunk = await client_end.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    chunk = b""
                if not chunk:
                    closed_at = trio.current_time() - started
                    break
                received += chunk
                last_at = trio.current_time() - started
        nursery.cancel_scope.cancel()
    responses, rest = parse_responses(bytes(received))
    return Conversation(responses, closed_at, rest, last_at)


def post(body: bytes, path: str = "/echo", extra: bytes = b"") -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n%s"
            % (path.encode(), len(body), extra, body))


# ---------------------------------------------------------------------------- request heads


async def test_a_request_head_as_the_app_sees_it(autojump_clock: Any) -> None:
    talk = await converse(b"POST /jobs?x=1 HTTP/1.1\r\nHost: h\r\nContent-Type: "
                          b"application/json\r\nContent-Length: 2\r\nX-Empty:\r\n"
                          b"X-Spaces: \t a b \t\r\nExpect: 100-continue\r\n\r\n{}")
    assert talk.statuses == [200]  # no 100 Continue: the body had come with the head
    seen = json.loads(talk.responses[0][2])
    assert (seen["method"], seen["raw_path"], seen["query"]) == ("POST", "/jobs", "x=1")
    assert seen["headers"] == [["host", "h"], ["content-type", "application/json"],
                               ["content-length", "2"], ["x-empty", ""],
                               ["x-spaces", "a b"], ["expect", "100-continue"]]
    assert seen["body"] == "{}"
    assert seen["http_version"] == "1.1"
    assert talk.closed_at == _h1.KEEP_ALIVE_TIMEOUT  # kept alive, then idle


async def test_connection_rules(autojump_clock: Any) -> None:
    closing = await converse(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert closing.statuses == [200]
    assert closing.responses[0][1]["connection"] == "close"
    assert closing.closed_at == 0
    old = await converse(b"GET / HTTP/1.0\r\n\r\n")
    assert old.responses[0][1]["connection"] == "close"
    assert old.closed_at == 0
    kept = await converse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n" * 2)
    assert kept.statuses == [200, 200]
    assert kept.responses[0][1]["connection"] == "keep-alive"
    assert json.loads(kept.responses[0][2])["http_version"] == "1.0"
    assert kept.closed_at == _h1.KEEP_ALIVE_TIMEOUT


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"garbage", 400),
        (b"GET /\x01 HTTP/1.1\r\nHost: h", 400),
        (b"GET / HTTP/2.0\r\nHost: h", 505),
        (b"GET / HTTP/0.9\r\nHost: h", 505),
        (b"GET / HTTP/1.2\r\nHost: h", 400),
        (b"GET / FTP/1.1\r\nHost: h", 400),
        (b"GET / HTTP/1.1", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: h\r\nHost: h", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: x", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nno-colon", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n folded", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b", 400),
        (b"GET / HTTP/1.1\nHost: h\n", 400),  # bare LF
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip", 501),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked", 501),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nExpect: something", 417),
        (b"GET / HTTP/1.1\r\nHost: h" + b"\r\nX: y" * 100, 431),
        (b"CONNECT h:443 HTTP/1.1\r\nHost: h", 405),
        (b"POST / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: upgrade\r\n"
         b"Content-Length: 1", 400),
    ],
)
async def test_refused_heads(head: bytes, status: int, autojump_clock: Any) -> None:
    talk = await converse(head + b"\r\n\r\n" + post(b"next"))
    assert talk.statuses == [status], talk
    response_headers, body = talk.responses[0][1], talk.responses[0][2]
    assert response_headers["connection"] == "close"
    assert json.loads(body)["error"]
    assert talk.closed_at_once  # and the request after it never served


async def test_an_upgrade_other_than_websocket_is_ignored(autojump_clock: Any) -> None:
    talk = await converse(b"GET /a HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n"
                          b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: x\r\n\r\n"
                          + post(b"next"))
    assert talk.statuses == [200, 200]
    assert [json.loads(r[2])["path"] for r in talk.responses] == ["/a", "/echo"]


async def test_head_deadline_is_overall(autojump_clock: Any) -> None:
    # Nothing sent: closed quietly after the keep-alive timeout.
    idle = await converse(b"")
    assert (idle.statuses, idle.closed_at) == ([], _h1.KEEP_ALIVE_TIMEOUT)
    # A head trickled one byte a second never finishes: 408 at HEAD_TIMEOUT from its
    # first byte, however often bytes come.
    head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"y" * 100
    talk = await converse([head[i:i + 1] for i in range(len(head))], gap=1.0)
    assert talk.statuses == [408]
    assert talk.closed_at == _h1.HEAD_TIMEOUT


async def test_head_over_max_head_is_431(autojump_clock: Any) -> None:
    filler = b"y" * 4096
    pieces = [b"GET / HTTP/1.1\r\nHost: t\r\nX: "] + [filler] * (_h1.MAX_HEAD // 4096 + 1)
    talk = await converse(pieces)
    assert talk.statuses == [431]
    assert talk.closed_at_once
    # A whole head of 1.5x the limit whose first read is exactly the limit: its end in
    # the next read made progress, and such a head of up to two reads was answered.
    start = b"GET / HTTP/1.1\r\nHost: t\r\nX: "
    first = start + b"y" * (_h1.MAX_HEAD - len(start))
    talk = await converse([first, b"y" * (_h1.MAX_HEAD // 2) + b"\r\n\r\n"])
    assert talk.statuses == [431]
    # A target alone over the limit, the same.
    long_target = await converse(b"GET /" + b"a" * (_h1.MAX_HEAD + 1) + b" HTTP/1.1\r\n"
                                 b"Host: t\r\n\r\n")
    assert long_target.statuses == [431]


async def test_too_many_trailers_or_trailer_bytes_are_refused(autojump_clock: Any) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n"
    many = await converse(head + b"T: 1\r\n" * (_h1.MAX_HEADERS + 1) + b"\r\n")
    assert many.statuses == [400]
    long = await converse([head + b"T: "] + [b"v" * 4096] * (_h1.MAX_HEAD // 4096 + 1))
    assert long.statuses == [400]
    assert "chunk framing and trailers" in json.loads(long.responses[0][2])["error"]
    assert long.closed_at_once


# ---------------------------------------------------------------------------- on the wire


@asynccontextmanager
async def lean(
    app: App_ = echo_app, max_body: int = 1024, max_connections: int = 1000
) -> AsyncIterator[tuple[int, trio.Event]]:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(lambda task_status: serve_lean(
            app, "127.0.0.1", 0, max_body=max_body, max_connections=max_connections,
            shutdown_trigger=stop.wait, task_status=task_status))
        yield int(url.rsplit(":", 1)[1]), stop
        stop.set()


class Peer:
    """A raw client connection with a response reader."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""
        self.last_head = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def more(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buf += data
        return bool(data)

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        with trio.fail_after(5):
            while b"\r\n\r\n" not in self.buf:
                assert await self.more(), f"EOF before a response: {self.buf!r}"
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            self.last_head = head
            lines = head.decode().split("\r\n")
            status = int(lines[0].split()[1])
            headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(self.buf) < length:
                assert await self.more()
            body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    async def eof(self) -> bool:
        with trio.fail_after(5):
            try:
                while await self.more():
                    pass
            except trio.BrokenResourceError:  # a reset is an end too
                pass
        return True


@asynccontextmanager
async def connect(port: int) -> AsyncIterator[Peer]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        yield Peer(stream)


async def test_scope_like_hypercorn() -> None:
    async with lean() as (port, _), connect(port) as peer:
        await peer.send(post(b"{}", "/jobs/a%20b?x=1&y=2", b"X-Thing: Yes\r\n"))
        status, headers, body = await peer.response()
    assert status == 200
    seen = json.loads(body)
    assert seen["path"] == "/jobs/a b"
    assert seen["raw_path"] == "/jobs/a%20b"
    assert seen["query"] == "x=1&y=2"
    assert ["x-thing", "Yes"] in seen["headers"]
    assert seen["client"][0] == "127.0.0.1"
    assert seen["server"] == ["127.0.0.1", port]
    assert (seen["http_version"], seen["scheme"]) == ("1.1", "http")
    assert "date" in headers


async def test_keep_alive_and_pipelining() -> None:
    async with lean() as (port, _), connect(port) as peer:
        for i in range(3):  # one after another on the same connection
            await peer.send(post(b"%d" % i))
            assert json.loads((await peer.response())[2])["body"] == str(i)
        # Three pipelined in one write, answered in order.
        await peer.send(post(b"a") + post(b"b", "/noread") + post(b"c"))
        answers = [json.loads((await peer.response())[2]) for _ in range(3)]
        assert [(a["path"], a["body"]) for a in answers] == [
            ("/echo", "a"), ("/noread", ""), ("/echo", "c")]


async def test_split_reads() -> None:
    request = post(b'{"hello": "world"}', extra=b"Content-Type: application/json\r\n")
    async with lean() as (port, _), connect(port) as peer:
        for i in range(0, len(request), 7):
            await peer.send(request[i:i + 7])
            await trio.sleep(0.001)
        status, _, body = await peer.response()
    assert status == 200
    assert json.loads(body)["body"] == '{"hello": "world"}'


async def test_chunked_body() -> None:
    async with lean() as (port, _), connect(port) as peer:
        await peer.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\n")
        status, _, body = await peer.response()
        assert status == 200
        assert json.loads(body)["body"] == "hello world"
        await peer.send(post(b"next"))  # the connection goes on
        assert json.loads((await peer.response())[2])["body"] == "next"


async def test_expect_100_continue() -> None:
    async with lean() as (port, _), connect(port) as peer:
        await peer.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                        b"Expect: 100-continue\r\n\r\n")
        with trio.fail_after(5):
            while b"\r\n\r\n" not in peer.buf:
                assert await peer.more()
        assert peer.buf == b"HTTP/1.1 100 Continue\r\n\r\n"
        peer.buf = b""
        await peer.send(b"body")
        status, _, body = await peer.response()
    assert status == 200
    assert json.loads(body)["body"] == "body"


async def test_connection_close_is_honoured() -> None:
    async with lean() as (port, _), connect(port) as peer:
        await peer.send(post(b"x", extra=b"Connection: close\r\n"))
        status, headers, _ = await peer.response()
        assert status == 200
        assert headers["connection"] == "close"
        assert await peer.eof()
    async with lean() as (port, _), connect(port) as peer:  # HTTP/1.0 closes by default
        await peer.send(b"GET /x HTTP/1.0\r\n\r\n")
        assert (await peer.response())[1]["connection"] == "close"
        assert await peer.eof()


@pytest.mark.parametrize("garbage", [b"garbage\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n",
                                     b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"])
async def test_garbage_gets_400_and_the_close(garbage: bytes) -> None:
    async with lean() as (port, _), connect(port) as peer:
        await peer.send(garbage)
        status, headers, body = await peer.response()
        assert status == 400
        assert headers["connection"] == "close"
        assert "error" in json.loads(body)
        assert await peer.eof()


async def test_head_too_large_431() -> None:
    async with lean() as (port, _), connect(port) as peer:
        await peer.send(b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"y" * (_h1.MAX_HEAD + 10))
        assert (await peer.response())[0] == 431
        assert await peer.eof()


async def test_shutdown_closes_idle_connections() -> None:
    async with lean() as (port, stop), connect(port) as peer:
        await peer.send(post(b"x"))
        assert (await peer.response())[0] == 200
        stop.set()
        assert await peer.eof()


async def test_app_error_is_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(scope: Scope, receive: Any, send: Any) -> None:
        raise ValueError("boom")

    async with lean(broken) as (port, _), connect(port) as peer:
        await peer.send(post(b"x"))
        assert (await peer.response())[0] == 500
        assert await peer.eof()
    assert "boom" in caplog.text


async def test_direct_reads_and_writes_on_a_real_socket() -> None:
    """On a plain socket a request that is there already is read without waiting, and a
    response the socket takes at once is written directly (_h1.Connection.send)."""
    reads: list[int] = []
    writes: list[int] = []
    read, write = _h1.os_read, _h1.os_write
    sent_next = trio.Event()

    def counted_read(fd: int, n: int) -> bytes:
        data = read(fd, n)
        reads.append(len(data))
        return data

    def counted_write(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return write(fd, data)

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["path"] == "/wait":  # answered once the next request is on its way
            await sent_next.wait()
        await echo_app(scope, receive, send)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_h1, "os_read", counted_read)
        mp.setattr(_h1, "os_write", counted_write)
        async with lean(app) as (port, _), connect(port) as peer:
            await peer.send(post(b"a", "/wait"))
            await trio.testing.wait_all_tasks_blocked()  # the server is in the app
            await peer.send(post(b"b"))  # in the server's socket on return (loopback)
            sent_next.set()
            for body in ("a", "b"):
                assert json.loads((await peer.response())[2])["body"] == body
    assert len(writes) == 2  # each response
    assert reads  # "b" was there when the server looked: read at once
    assert reads[0] == len(post(b"b"))


async def test_an_idle_real_connection_waits_then_times_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a plain socket the wait for the next request (``wait_readable``, then a
    direct read) ends at the keep-alive timeout, and serves a request that comes first."""
    monkeypatch.setattr(_h1, "KEEP_ALIVE_TIMEOUT", 0.2)
    async with lean() as (port, _), connect(port) as peer:
        for body in (b"a", b"b"):
            await trio.testing.wait_all_tasks_blocked()  # the server waits on the socket
            await peer.send(post(body))
            assert json.loads((await peer.response())[2])["body"] == body.decode()
        start = trio.current_time()
        assert await peer.eof()
        assert trio.current_time() - start >= 0.1


@pytest.mark.parametrize("takes", [0, 7])
async def test_a_write_the_socket_takes_in_part_goes_on_through_the_stream(
    takes: int,
) -> None:
    """``os.write`` may take part of a response (or none: EAGAIN); the rest is sent
    through the stream, in order, and the connection goes on."""
    write = _h1.os_write

    def partial(fd: int, data: bytes) -> int:
        if not takes:
            raise BlockingIOError
        return write(fd, bytes(data[:takes]))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_h1, "os_write", partial)
        async with lean() as (port, _), connect(port) as peer:
            for body in (b"x" * 3000, b"y"):
                await peer.send(post(body))
                status, _, got = await peer.response()
                assert (status, json.loads(got)["body"]) == (200, body.decode())


@pytest.mark.parametrize("where", ["read", "write"])
async def test_a_broken_socket_ends_its_connection_quietly(
    where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A reset seen by a direct read or write ends that connection as a broken stream
    does: no traceback, and the server serves the next connection."""
    real = {"read": _h1.os_read, "write": _h1.os_write}[where]
    broken = [True]

    def once(fd: int, arg: Any) -> Any:
        if broken[0]:
            broken[0] = False
            raise ConnectionResetError(104, "Connection reset by peer")
        return real(fd, arg)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_h1, f"os_{where}", once)
        async with lean() as (port, _):
            async with connect(port) as peer:
                await peer.send(post(b"x") * 2)
                if where == "write":  # the first read may have waited: the reset
                    assert await peer.eof()  # comes with the first response
                else:
                    with trio.fail_after(5):
                        while not broken[0] and await peer.more():
                            pass
            async with connect(port) as peer:
                await peer.send(post(b"y"))
                assert json.loads((await peer.response())[2])["body"] == "y"
    assert "Traceback" not in caplog.text
    assert "error on an HTTP" not in caplog.text


# ---------------------------------------------------------------------------- the real app


@asynccontextmanager
async def real_app(max_body: int) -> AsyncIterator[int]:
    async with open_queue(demo_registry, QueueConfig(workers=2)) as queue:
        app = App(queue, ServerSettings(max_body=max_body, allowed_hosts="t"))  # Host: t
        async with lean(app, max_body) as (port, _):
            yield port


async def test_413_with_connection_close_and_no_100_continue() -> None:
    async with real_app(100) as port:
        async with connect(port) as peer:
            big = b'{"task": "echo", "payload": "' + b"x" * 200 + b'"}'
            await peer.send(b"POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n"
                            b"Expect: 100-continue\r\n\r\n" % len(big))
            status, headers, body = await peer.response()  # not a 100 first
            assert status == 413
            assert peer.last_head.lower().count(b"connection: close") == 1
            assert headers["connection"] == "close"
            assert "limit" in json.loads(body)["error"]
            await peer.send(big)  # sent anyway, as a client may: read and dropped
            assert await peer.eof()
        async with connect(port) as peer:  # chunked, over the limit part way
            await peer.send(b"POST /jobs HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                            b"\r\n" + b"40\r\n" + b"y" * 64 + b"\r\n" + b"40\r\n" + b"y" * 64
                            + b"\r\n")
            status, headers, _ = await peer.response()
            assert status == 413
            assert headers["connection"] == "close"
        async with connect(port) as peer:  # under the limit: 202, and keep-alive
            for _ in range(2):
                await peer.send(post(b'{"task": "echo"}', "/jobs"))
                assert (await peer.response())[0] == 202


async def test_websocket_on_the_same_port() -> None:
    async with real_app(1024) as port:
        url = f"ws://127.0.0.1:{port}/events?snapshot=true"
        async with open_websocket_url(url) as ws:
            first = json.loads(await ws.get_message())
            assert first["type"] == "metrics"
            await ws.send_message("ignored")  # client messages are read and ignored
            await ws.ping()
        async with connect(port) as peer:  # a bad handshake: 400
            await peer.send(b"GET /events HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                            b"Connection: Upgrade\r\n\r\n")
            assert (await peer.response())[0] == 400


@pytest.mark.parametrize(("frame", "code"), [
    (b"\x81\x02hi", 1002),  # a client frame without its mask
    (b"\x81\x82\x00\x00\x00\x00\xff\xfe", 1007),  # a text frame that is not UTF-8
])
async def test_a_websocket_frame_wsproto_refuses_gets_a_close_frame(frame: bytes, code: int
                                                                    ) -> None:
    """A protocol error or bad UTF-8 is answered with a close frame saying which
    (RFC 6455, 7.4.1) before the connection ends, not a bare end."""
    async with real_app(1024) as port, connect(port) as peer:
        await peer.send(b"GET /events HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        assert (await peer.response())[0] == 101
        await peer.send(frame)
        await peer.eof()
        close = peer.buf[peer.buf.index(b"\x88"):]  # the first close frame
        assert int.from_bytes(close[2:4], "big") == code


HANDSHAKE = (b"GET /events HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


def client_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One client frame, masked with a zero key (the mask is required, not secret)."""
    n = len(payload)
    length = (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
              if n < 65536 else bytes([0x80 | 127]) + n.to_bytes(8, "big"))
    return bytes([0x80 * fin | opcode]) + length + b"\0\0\0\0" + payload


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The complete (opcode, payload) frames of the server's unmasked stream."""
    frames = []
    while len(data) >= 2:
        length, at = data[1] & 0x7F, 2
        if length == 126:
            length, at = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, at = int.from_bytes(data[2:10], "big"), 10
        if len(data) < at + length:
            break
        frames.append((data[0] & 0x0F, data[at:at + length]))
        data = data[at + length:]
    return frames


@asynccontextmanager
async def events_flowing(port: int) -> AsyncIterator[None]:
    """Batches of jobs posted back to back for the block, so that events flow."""
    batch = json.dumps({"jobs": [{"task": "echo"}] * 200}).encode()

    async def feed() -> None:
        async with connect(port) as feeder:
            while True:
                await feeder.send(post(batch, "/jobs/batch"))
                await feeder.response()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        yield
        nursery.cancel_scope.cancel()


async def test_a_client_close_while_events_flow_gets_the_close_reply_and_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RFC 6455, 5.5.1: a close frame is answered with one.  The server's event sender
    used to run between the reply being made and written: it sent an event after the
    close (wsproto refused it, an ERROR with its traceback was logged) and the reply was
    lost (the client saw the connection end, 1006)."""
    async with real_app(1 << 20) as port, events_flowing(port):
        for _ in range(10):
            async with connect(port) as peer:
                await peer.send(HANDSHAKE)
                assert (await peer.response())[0] == 101
                while not server_frames(peer.buf):  # events are flowing
                    assert await peer.more()
                await peer.send(client_frame(0x8, (1000).to_bytes(2, "big")))
                await peer.eof()
                frames = server_frames(peer.buf)
                assert frames[-1][0] == 0x8, frames[-3:]  # the reply ends the stream
                assert frames[-1][1][:2] == (1000).to_bytes(2, "big")
                assert [op for op, _ in frames[:-1]] == [0x1] * (len(frames) - 1)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


async def test_a_client_gone_without_a_close_frame_while_events_flow_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client that just ends its TCP connection (killed, say) while events flow: its
    end of stream left the connection "connected" to the event sender, which, woken by
    an event in the same tick, sent it to a closed wsproto connection (an ERROR with a
    traceback per client, seen in a soak with a store and with Redis)."""
    async with real_app(1 << 20) as port, events_flowing(port):
        for _ in range(30):
            async with connect(port) as peer:
                await peer.send(HANDSHAKE)
                assert (await peer.response())[0] == 101
                while not server_frames(peer.buf):  # events are flowing
                    assert await peer.more()
            # (gone: no close frame)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


@pytest.mark.parametrize(("char", "count", "closed"), [
    ("a", 64 * 1024, False),
    ("a", 64 * 1024 + 1, True),
    ("\U0001F600", 16 * 1024, False),  # 64 KiB of UTF-8
    ("\U0001F600", 16 * 1024 + 1, True),  # 4 bytes more, though 16 K characters
])
async def test_a_websocket_message_over_64_kib_of_utf_8_is_closed_with_1009(
    char: str, count: int, closed: bool,
) -> None:
    """The limit is on the message's bytes: text counted in characters let through four
    times as much."""
    text = (char * count).encode()
    async with real_app(1024) as port, connect(port) as peer:
        await peer.send(HANDSHAKE)
        assert (await peer.response())[0] == 101
        half = len(text) // 2 - (len(text) // 2) % 4  # two frames, split at a character
        await peer.send(client_frame(0x1, text[:half], fin=False))
        await peer.send(client_frame(0x0, text[half:]))
        await peer.send(client_frame(0x8, (1000).to_bytes(2, "big")))
        await peer.eof()
        codes = [int.from_bytes(p[:2], "big") for op, p in server_frames(peer.buf) if op == 0x8]
        assert codes == ([1009] if closed else [1000])


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/jobs", "/tasks",
                                  "/openapi.json", "/"])
async def test_head_is_answered_wherever_get_is_with_the_head_of_get(path: str) -> None:
    """RFC 9110, 9.1: servers support HEAD (load balancers' health checks use it); its
    answer is GET's head without the body, and the connection goes on after it."""
    request = b"%%s %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode()
    async with real_app(1024) as port, connect(port) as peer:
        await peer.send(request % b"GET")
        status, got, body = await peer.response()
        assert status == 200
        await peer.send(request % b"HEAD" + request % b"GET")  # pipelined
        with trio.fail_after(5):
            while peer.buf.count(b"\r\n\r\n") < 2:
                assert await peer.more()
        head, rest = peer.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 ")
        lines = head.decode().split("\r\n")[1:]
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
        assert headers["content-type"] == got["content-type"]
        if path not in ("/metrics", "/readyz", "/healthz"):  # (their bodies change)
            assert int(headers["content-length"]) == len(body)
        assert rest.startswith(b"HTTP/1.1 200 ")  # no body came between the two


async def test_an_encoded_slash_in_a_path_is_404_on_the_wire() -> None:
    async with real_app(1024) as port, connect(port) as peer:
        await peer.send(post(b'{"task": "echo", "id": "x", "delay": 60}', "/jobs"))
        assert (await peer.response())[0] == 202
        await peer.send(b"POST /jobs/x%2Fcancel HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        status, _, body = await peer.response()
        assert (status, json.loads(body)["error"]) == (
            404, "no route for /jobs/x/cancel (an encoded '/' is not a separator)")
        await peer.send(b"GET /jobs/x HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body = await peer.response()
        assert (status, json.loads(body)["status"]) == (200, "scheduled")  # not cancelled
