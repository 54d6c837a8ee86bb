"""The lean HTTP server (trioqueue/server/_lean.py): its parser and its connection rules.

In-process: ``serve_lean`` on 127.0.0.1 port 0 with a small echo app (or the real app on a
real queue), spoken to over raw sockets so that every byte on the wire is chosen here.
The end-to-end suite (tests/test_server.py and the rest) runs against it too.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from trioqueue import QueueConfig, open_queue
from trioqueue.demo import registry as demo_registry
from trioqueue.server import App, ServerSettings, _lean
from trioqueue.server._lean import BadRequest, parse_head, serve_lean

Scope = dict[str, Any]
App_ = Callable[[Any, Any, Any], Awaitable[None]]

# ---------------------------------------------------------------------------- the parser


def test_parse_a_request_head() -> None:
    req = parse_head(b"POST /jobs?x=1 HTTP/1.1\r\nHost: h\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 12\r\nX-Empty:\r\nExpect: 100-continue")
    assert (req.method, req.target, req.http_version) == ("POST", b"/jobs?x=1", "1.1")
    assert req.headers == [(b"host", b"h"), (b"content-type", b"application/json"),
                           (b"content-length", b"12"), (b"x-empty", b""),
                           (b"expect", b"100-continue")]
    assert req.content_length == 12
    assert req.keep_alive
    assert req.expect_continue
    assert not req.chunked
    assert not req.websocket


def test_parse_connection_rules() -> None:
    assert not parse_head(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close").keep_alive
    assert not parse_head(b"GET / HTTP/1.0").keep_alive
    assert parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive").keep_alive
    assert parse_head(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked").chunked
    ws = parse_head(b"GET /events HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                    b"Connection: keep-alive, Upgrade")
    assert ws.websocket


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"garbage", 400),
        (b"GET /\x01 HTTP/1.1\r\nHost: h", 400),
        (b"GET  / HTTP/1.1\r\nHost: h", 400),
        (b"GET / HTTP/2.0\r\nHost: h", 505),
        (b"GET / FTP/1.1\r\nHost: h", 400),
        (b"GET / HTTP/1.1", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: x", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nno-colon", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\n folded", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip", 501),
        (b"POST / HTTP/1.1\r\nHost: h\r\nExpect: something", 417),
        (b"GET / HTTP/1.1\r\nHost: h" + b"\r\nX: y" * 101, 431),
    ],
)
def test_parse_refuses(head: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as err:
        parse_head(head)
    assert err.value.status == status


# ---------------------------------------------------------------------------- on the wire


async def echo_app(scope: Scope, receive: Any, send: Any) -> None:
    """Answers with what it saw; ``/noread`` does not read the body."""
    assert scope["type"] == "http"
    body = b""
    if scope["path"] != "/noread":
        while True:
            message = await receive()
            assert message["type"] == "http.request"
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
    seen = {"method": scope["method"], "path": scope["path"], "raw_path":
            scope["raw_path"].decode(), "query": scope["query_string"].decode(),
            "body": body.decode(), "headers": [[k.decode(), v.decode()]
                                               for k, v in scope["headers"]],
            "client": list(scope["client"]), "server": list(scope["server"]),
            "http_version": scope["http_version"], "scheme": scope["scheme"]}
    out = json.dumps(seen).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})


@asynccontextmanager
async def lean(app: App_ = echo_app, max_body: int = 1024) -> AsyncIterator[tuple[int, trio.Event]]:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(lambda task_status: serve_lean(
            app, "127.0.0.1", 0, max_body=max_body, shutdown_trigger=stop.wait,
            task_status=task_status))
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

    async def _more(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buf += data
        return bool(data)

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        with trio.fail_after(5):
            while b"\r\n\r\n" not in self.buf:
                assert await self._more(), f"EOF before a response: {self.buf!r}"
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            self.last_head = head
            lines = head.decode().split("\r\n")
            status = int(lines[0].split()[1])
            headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(self.buf) < length:
                assert await self._more()
            body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    async def eof(self) -> bool:
        with trio.fail_after(5):
            try:
                while await self._more():
                    pass
            except trio.BrokenResourceError:  # a reset is an end too
                pass
        return True


@asynccontextmanager
async def connect(port: int) -> AsyncIterator[Peer]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        yield Peer(stream)


def post(body: bytes, path: str = "/echo", extra: bytes = b"") -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n%s"
            % (path.encode(), len(body), extra, body))


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
                assert await peer._more()
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
        await peer.send(b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"y" * (_lean.MAX_HEAD + 10))
        assert (await peer.response())[0] == 431
        assert await peer.eof()


async def test_idle_keep_alive_connection_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_lean, "KEEP_ALIVE_TIMEOUT", 0.2)
    async with lean() as (port, _), connect(port) as peer:
        await peer.send(post(b"x"))
        assert (await peer.response())[0] == 200
        started = trio.current_time()
        assert await peer.eof()
        assert trio.current_time() - started < 3
    async with lean() as (port, _), connect(port) as peer:  # a head that never ends: 408
        await peer.send(b"GET / HTTP/1.1\r\n")
        assert (await peer.response())[0] == 408


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
