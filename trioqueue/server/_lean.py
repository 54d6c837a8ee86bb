"""A lean HTTP/1.1 (and websocket) server for the ASGI app, on plain Trio streams.

Hypercorn costs about 0.9 ms of CPU per request; our app costs a tenth of that.  This
server does only what the app needs: one task per connection, keep-alive, requests
parsed by hand from a buffer, one ``send_all`` per response, and websockets (``/events``)
through wsproto on the same port.

What it speaks:

- HTTP/1.1 and 1.0 requests; a ``Content-Length`` body or a chunked one (httpx streams
  bodies of unknown size chunked); ``Expect: 100-continue`` is answered with
  ``100 Continue`` when the app first reads the body (so a 413 on the declared length
  goes out without the body being sent).  A body the app did not read is skipped if it
  is small and known, else the connection closes after the response.
- Keep-alive by default (HTTP/1.1), ``Connection: close`` honoured both ways; an idle
  connection is closed after :data:`KEEP_ALIVE_TIMEOUT`, and a request head must arrive
  complete within that time of the first wait.
- Limits: the head (request line and headers) at :data:`MAX_HEAD` bytes and
  :data:`MAX_HEADERS` lines (431), the body at ``max_body`` (413 from the app, and here as
  a backstop), a websocket message at :data:`WS_MAX_MESSAGE` (close 1009).  A malformed
  request gets 400 and the connection closes.
- Shutdown: when ``shutdown_trigger`` returns, listening stops, idle connections close,
  requests in progress finish (each then closes), and whatever is left after
  :data:`GRACEFUL_TIMEOUT` is cancelled.

The ASGI scope has the fields Hypercorn gives (``type``, ``asgi``, ``http_version``,
``method``, ``scheme``, ``path``, ``raw_path``, ``query_string``, ``root_path``,
``headers`` as lower-cased byte pairs, ``client``, ``server``, ``extensions``).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from functools import partial
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

from ._http import ASGIApp, Message, Scope

log = logging.getLogger("trioqueue.http")


KEEP_ALIVE_TIMEOUT = 5.0
"""Seconds an idle keep-alive connection is kept (Hypercorn's default too)."""
BODY_TIMEOUT = 30.0
"""Seconds a request body may stall before the client is treated as gone."""
GRACEFUL_TIMEOUT = 5.0
"""Seconds requests in progress get once the server begins to stop."""
MAX_HEAD = 64 * 1024
MAX_HEADERS = 100
MAX_DRAIN = 64 * 1024
"""An unread body up to this size is read and dropped to keep the connection."""
READ_SIZE = 65536
WS_MAX_MESSAGE = 64 * 1024
LINGER_TIMEOUT = 2.0
LINGER_MAX = 16 * 1024 * 1024
"""After a closing response, what the peer still sends is read (and dropped) that long."""
WS_CLOSE_TIMEOUT = 2.0
"""Seconds to wait for the peer's close frame after ours before hanging up."""

_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_HTTP_ASGI = {"spec_version": "2.1", "version": "3.0"}
_WS_ASGI = {"spec_version": "2.3", "version": "3.0"}
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class BadRequest(Exception):
    """A request this server will not read: answered with ``status``, then the close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ParsedRequest:
    """The head of one request, checked."""

    __slots__ = ("chunked", "content_length", "expect_continue", "headers", "http_version",
                 "keep_alive", "method", "target", "websocket")

    def __init__(self, method: str, target: bytes, http_version: str,
                 headers: list[tuple[bytes, bytes]], keep_alive: bool,
                 content_length: int, chunked: bool, expect_continue: bool,
                 websocket: bool) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.expect_continue = expect_continue
        self.websocket = websocket


def parse_head(head: bytes) -> ParsedRequest:
    """Parse a request line and headers (without the final CRLFCRLF); raise BadRequest."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise BadRequest(400, "malformed method")
    if not _TARGET.fullmatch(target):
        raise BadRequest(400, "malformed request target")
    if version == b"HTTP/1.1":
        http_version = "1.1"
    elif version == b"HTTP/1.0":
        http_version = "1.0"
    elif version.startswith(b"HTTP/"):
        raise BadRequest(505, "only HTTP/1.1 and HTTP/1.0 are supported")
    else:
        raise BadRequest(400, "malformed request line")
    if len(lines) > MAX_HEADERS + 1:
        raise BadRequest(431, f"more than {MAX_HEADERS} headers")
    headers: list[tuple[bytes, bytes]] = []
    connection = b""
    content_length = -1
    transfer_encoding = None
    expect_continue = False
    upgrade = b""
    has_host = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadRequest(400, "malformed header line")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise BadRequest(400, "malformed header value")
        name = name.lower()
        headers.append((name, value))
        if name == b"content-length":
            if not value.isdigit() or len(value) > 18:
                raise BadRequest(400, "content-length: not a number")
            length = int(value)
            if content_length not in (-1, length):
                raise BadRequest(400, "content-length: conflicting values")
            content_length = length
        elif name == b"transfer-encoding":
            transfer_encoding = value.lower() if transfer_encoding is None else b"many"
        elif name == b"connection":
            connection += b"," + value.lower()
        elif name == b"expect":
            if value.lower() != b"100-continue":
                raise BadRequest(417, f"expect: {value.decode('latin-1')!r} is not supported")
            expect_continue = True
        elif name == b"upgrade":
            upgrade = value.lower()
        elif name == b"host":
            has_host = True
    if http_version == "1.1" and not has_host:
        raise BadRequest(400, "host: missing")
    chunked = False
    if transfer_encoding is not None:
        if content_length != -1:
            raise BadRequest(400, "both content-length and transfer-encoding")
        if transfer_encoding != b"chunked":
            raise BadRequest(501, "transfer-encoding: only chunked is supported")
        chunked = True
    tokens = {t.strip() for t in connection.split(b",")} if connection else set()
    if http_version == "1.1":
        keep_alive = b"close" not in tokens
    else:
        keep_alive = b"keep-alive" in tokens
    websocket = method == b"GET" and b"websocket" in upgrade and b"upgrade" in tokens
    return ParsedRequest(method.decode("ascii"), target, http_version, headers, keep_alive,
                         max(content_length, 0), chunked, expect_continue, websocket)


_date_cache: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def _error_response(status: int, message: str) -> bytes:
    body = json.dumps({"error": message}, separators=(",", ":")).encode()
    return b"".join((
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"")),
        b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
        b"date: " + _date() + b"\r\nconnection: close\r\n\r\n",
        body,
    ))


def _address(addr: Any) -> tuple[str, int] | None:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return (str(addr[0]), int(addr[1]))
    return None


class _BodyTooLarge(Exception):
    pass


class _Server:
    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body
        self.stopping = False
        self.connections: set[_Connection] = set()

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = _Connection(self, stream)
        self.connections.add(conn)
        try:
            await conn.run()
            if conn.linger:
                await _linger(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("error on an HTTP connection")
        finally:
            self.connections.discard(conn)
            await trio.aclose_forcefully(stream)

    def stop(self) -> None:
        self.stopping = True
        for conn in self.connections:
            if conn.idle is not None:
                conn.idle.cancel()


async def _linger(stream: trio.SocketStream) -> None:
    """Close after a response the peer may still be sending to (a 413, an error).

    Closing a socket with unread data resets the connection, and the peer may lose the
    response; so shut down our side, then read and drop what comes for a moment.
    """
    await stream.send_eof()
    dropped = 0
    with trio.move_on_after(LINGER_TIMEOUT):
        while dropped < LINGER_MAX:
            data = await stream.receive_some(READ_SIZE)
            if not data:
                return
            dropped += len(data)


class _Connection:
    def __init__(self, server: _Server, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.buf = bytearray()
        self.linger = False
        """The connection ends after a response: read what the peer still sends."""
        self.idle: trio.CancelScope | None = None
        try:
            self.client = _address(stream.socket.getpeername())
            self.local = _address(stream.socket.getsockname())
        except OSError:
            self.client = self.local = None

    # ------------------------------------------------------------------ reading

    async def _read_head(self) -> bytes | None:
        """The next request head, or None when the connection is to end quietly."""
        buf = self.buf
        deadline: float | None = None
        while True:
            while buf[:2] == b"\r\n":  # empty lines before a request line are allowed
                del buf[:2]
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                if end > MAX_HEAD:
                    raise BadRequest(431, f"request head over {MAX_HEAD} bytes")
                head = bytes(buf[:end])
                del buf[:end + 4]
                return head
            if len(buf) > MAX_HEAD:
                raise BadRequest(431, f"request head over {MAX_HEAD} bytes")
            if self.server.stopping and not buf:
                return None
            if deadline is None:
                deadline = trio.current_time() + KEEP_ALIVE_TIMEOUT
            with trio.move_on_at(deadline) as scope:
                if not buf:
                    self.idle = scope
                try:
                    data = await self.stream.receive_some(READ_SIZE)
                finally:
                    self.idle = None
            if scope.cancelled_caught:
                if buf:
                    raise BadRequest(408, "request head not received in time")
                return None
            if not data:
                return None
            buf += data

    async def _fill(self) -> bool:
        """Read more into the buffer; False at EOF or after BODY_TIMEOUT of silence."""
        with trio.move_on_after(BODY_TIMEOUT):
            data = await self.stream.receive_some(READ_SIZE)
            if data:
                self.buf += data
                return True
        return False

    async def _read_line(self) -> bytes | None:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[:end + 2]
                return line
            if len(self.buf) > 4096 or not await self._fill():
                return None

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        while True:
            try:
                head = await self._read_head()
                if head is None:
                    return
                request = parse_head(head)
            except BadRequest as exc:
                await self.stream.send_all(_error_response(exc.status, exc.message))
                self.linger = True
                return
            if request.websocket:
                await _WebSocket(self, request).run()
                return
            if not await self._http(request):
                self.linger = True
                return

    async def _http(self, request: ParsedRequest) -> bool:
        """Answer one request; True if the connection may serve another."""
        raw_path, _, query_string = request.target.partition(b"?")
        try:
            path = unquote(raw_path.decode("ascii"))
        except UnicodeDecodeError:  # pragma: no cover - the target is ASCII already
            path = ""
        scope: Scope = {
            "type": "http",
            "asgi": _HTTP_ASGI,
            "http_version": request.http_version,
            "method": request.method,
            "scheme": "http",
            "path": path,
            "raw_path": raw_path,
            "query_string": query_string,
            "root_path": "",
            "headers": request.headers,
            "client": self.client,
            "server": self.local,
            "extensions": {},
        }
        body = _Body(self, request)
        response = _Response(self, request)
        try:
            await self.server.app(scope, body.receive, response.send)
        except _BodyTooLarge:
            if not response.started:
                await self.stream.send_all(_error_response(
                    413, f"body: over the limit of {self.server.max_body} bytes"))
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception:
            log.exception("error in the app answering %s %s", request.method, path)
            if not response.started:
                await self.stream.send_all(_error_response(500, "internal server error"))
            return False
        if not response.sent:
            if not response.started:
                log.error("the app sent no response to %s %s", request.method, path)
                await self.stream.send_all(_error_response(500, "internal server error"))
            return False
        if not response.keep_alive or self.server.stopping:
            return False
        return await body.skip_rest()


class _Body:
    """The request body, read from the connection as the app asks for it."""

    __slots__ = ("chunk_left", "conn", "continued", "delivered", "done", "ended", "remaining",
                 "request")

    def __init__(self, conn: _Connection, request: ParsedRequest) -> None:
        self.conn = conn
        self.request = request
        self.remaining = request.content_length
        self.done = not request.chunked and request.content_length == 0
        """The whole body has been read from the connection."""
        self.ended = False
        """The app has been given the last ``http.request`` message."""
        self.chunk_left = 0
        self.continued = not request.expect_continue
        self.delivered = 0

    async def receive(self) -> Message:
        if self.ended:
            return {"type": "http.disconnect"}
        if self.done:
            self.ended = True
            return {"type": "http.request", "body": b"", "more_body": False}
        if not self.continued:
            self.continued = True
            await self.conn.stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.delivered > self.conn.server.max_body:
            raise _BodyTooLarge
        data = await (self._chunked() if self.request.chunked else self._sized())
        if data is None:
            self.done = self.ended = True
            self.remaining = -1  # broken: the connection closes after the response
            return {"type": "http.disconnect"}
        self.delivered += len(data)
        self.ended = self.done
        return {"type": "http.request", "body": data, "more_body": not self.done}

    async def _sized(self) -> bytes | None:
        buf = self.conn.buf
        if not buf and not await self.conn._fill():
            return None
        n = min(self.remaining, len(buf))
        data = bytes(buf[:n])
        del buf[:n]
        self.remaining -= n
        self.done = self.remaining == 0
        return data

    async def _chunked(self) -> bytes | None:
        conn = self.conn
        if self.chunk_left == 0:
            line = await conn._read_line()
            if line is None:
                return None
            size = line.split(b";", 1)[0].strip()
            if not _HEX.fullmatch(size):
                return None
            self.chunk_left = int(size, 16)
            if self.chunk_left == 0:  # the last chunk: skip trailers up to the empty line
                for _ in range(MAX_HEADERS):
                    trailer = await conn._read_line()
                    if trailer is None:
                        return None
                    if not trailer:
                        self.done = True
                        return b""
                return None
        if not conn.buf and not await conn._fill():
            return None
        n = min(self.chunk_left, len(conn.buf))
        data = bytes(conn.buf[:n])
        del conn.buf[:n]
        self.chunk_left -= n
        if self.chunk_left == 0 and await conn._read_line() != b"":
            return None
        return data

    async def skip_rest(self) -> bool:
        """Drop what the app did not read; False if the connection cannot go on."""
        if self.done:
            return self.remaining == 0 or self.request.chunked
        if self.request.chunked or not self.continued or self.remaining > MAX_DRAIN:
            return False
        buf = self.conn.buf
        while len(buf) < self.remaining:
            if not await self.conn._fill():
                return False
        del buf[:self.remaining]
        self.remaining = 0
        self.done = True
        return True


class _Response:
    __slots__ = ("conn", "headers", "keep_alive", "parts", "request", "sent", "started",
                 "status")

    def __init__(self, conn: _Connection, request: ParsedRequest) -> None:
        self.conn = conn
        self.request = request
        self.started = False
        self.sent = False
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] = []
        self.keep_alive = request.keep_alive

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start" and not self.started:
            self.started = True
            self.status = int(message["status"])
            self.headers = list(message.get("headers", ()))
        elif kind == "http.response.body" and self.started and not self.sent:
            self.parts.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                self.sent = True
                await self.conn.stream.send_all(self._encode())
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _encode(self) -> bytes:
        status = self.status
        body = b"".join(self.parts)
        out = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))]
        has_length = said_close = False
        for name, value in self.headers:
            low = name.lower()
            if low == b"content-length":
                has_length = True
            elif low == b"connection" and b"close" in value.lower():
                self.keep_alive = False
                said_close = True
            out.append(b"%s: %s\r\n" % (name, value))
        no_body = status < 200 or status in (204, 304)
        if not has_length and not no_body:
            out.append(b"content-length: %d\r\n" % len(body))
        if self.conn.server.stopping:
            self.keep_alive = False
        if not self.keep_alive and not said_close:
            out.append(b"connection: close\r\n")
        elif self.request.http_version == "1.0":
            out.append(b"connection: keep-alive\r\n")
        out.append(b"date: " + _date() + b"\r\n\r\n")
        if self.request.method != "HEAD" and not no_body:
            out.append(body)
        return b"".join(out)


class _WebSocket:
    """One websocket connection: wsproto on the stream, ASGI messages to the app."""

    def __init__(self, conn: _Connection, request: ParsedRequest) -> None:
        self.conn = conn
        self.request = request
        self.ws = WSConnection(ConnectionType.SERVER)
        self.state = "handshake"  # then "connected", "closed" (by us or the peer)
        self.connect_sent = False
        self.peer_closed = False
        self.close_code = 1006
        self.pending: deque[Message] = deque()
        self.message: list[str] | list[bytes] | None = None
        self.message_size = 0
        self.lock = trio.Lock()
        self.broken = False

    async def run(self) -> None:
        conn = self.conn
        request = self.request
        try:
            self.ws.initiate_upgrade_connection(request.headers, request.target)
            handshake = next(self.ws.events(), None)
            if not isinstance(handshake, Request):
                raise ValueError("no websocket request")
        except Exception as exc:
            await conn.stream.send_all(_error_response(400, f"bad websocket request: {exc}"))
            return
        raw_path, _, query_string = request.target.partition(b"?")
        scope: Scope = {
            "type": "websocket",
            "asgi": _WS_ASGI,
            "http_version": request.http_version,
            "scheme": "ws",
            "path": unquote(raw_path.decode("ascii")),
            "raw_path": raw_path,
            "query_string": query_string,
            "root_path": "",
            "headers": request.headers,
            "client": conn.client,
            "server": conn.local,
            "subprotocols": list(handshake.subprotocols),
            "extensions": {"websocket.http.response": {}},
        }
        try:
            await conn.server.app(scope, self.receive, self.send)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        except Exception:
            log.exception("error in the app on websocket %s", scope["path"])
            if self.state == "handshake":
                await self._write(_error_response(500, "internal server error"))
                return
            if self.state == "connected":
                await self._close(1011, "internal error")
        if self.state == "handshake":  # the app neither accepted nor refused
            await self._write(_error_response(500, "internal server error"))
            return
        if self.state == "connected":  # the app returned without closing
            await self._close(1000, "")
        # Wait (briefly) for the peer's close frame, so that it reads ours before the
        # connection goes: closing with unread data would reset it.
        with trio.move_on_after(WS_CLOSE_TIMEOUT):
            while not self.peer_closed and not self.broken:
                await self._read_events()

    # ------------------------------------------------------------------ to the app

    async def receive(self) -> Message:
        if not self.connect_sent:
            self.connect_sent = True
            return {"type": "websocket.connect"}
        while True:
            if self.pending:
                return self.pending.popleft()
            if self.peer_closed or self.broken:
                return {"type": "websocket.disconnect", "code": self.close_code}
            await self._read_events()

    async def _read_events(self) -> None:
        """Read from the peer once and turn what came into pending ASGI messages."""
        buf = self.conn.buf
        if buf:
            data = bytes(buf)
            buf.clear()
        else:
            try:
                data = await self.conn.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
        if not data:
            self.peer_closed = True
            self.ws.receive_data(None)
            return
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                self.message_size += len(event.data)
                if self.message_size > WS_MAX_MESSAGE:
                    await self._close(1009, "message too big")
                    self.peer_closed = True  # read no more from this peer
                    self.close_code = 1009
                    return
                if self.message is None:
                    self.message = []
                self.message.append(event.data)  # type: ignore[arg-type]
                if event.message_finished:
                    if isinstance(event, TextMessage):
                        text = "".join(self.message)  # type: ignore[arg-type]
                        self.pending.append({"type": "websocket.receive", "text": text})
                    else:
                        data = b"".join(self.message)  # type: ignore[arg-type]
                        self.pending.append({"type": "websocket.receive", "bytes": data})
                    self.message = None
                    self.message_size = 0
            elif isinstance(event, Ping):
                await self._write(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                self.peer_closed = True
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    await self._write(self.ws.send(event.response()))
                self.state = "closed"
                return

    # ------------------------------------------------------------------ from the app

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.accept" and self.state == "handshake":
            self.state = "connected"
            extra = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            await self._write(self.ws.send(AcceptConnection(
                subprotocol=message.get("subprotocol"), extra_headers=extra)))
        elif kind == "websocket.close" and self.state == "handshake":
            self.state = "closed"
            self.peer_closed = True
            await self._write(_error_response(403, "websocket refused"))
        elif kind == "websocket.send":
            if self.state != "connected":
                return  # the peer went away: the app may still finish
            if message.get("bytes") is not None:
                await self._write(self.ws.send(BytesMessage(data=bytes(message["bytes"]))))
            else:
                await self._write(self.ws.send(TextMessage(data=str(message["text"]))))
        elif kind == "websocket.close":
            if self.state == "connected":
                await self._close(int(message.get("code", 1000)), message.get("reason") or "")
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in state {self.state}")

    async def _close(self, code: int, reason: str) -> None:
        self.state = "closed"
        if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            await self._write(self.ws.send(CloseConnection(code=code, reason=reason)))

    async def _write(self, data: bytes) -> None:
        """Send ``data``; a send that fails or is cancelled part way ends the connection."""
        if self.broken:
            return
        async with self.lock:
            try:
                await self.conn.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._break()
            except BaseException:
                self._break()  # a frame may be half sent: nothing more can follow it
                raise

    def _break(self) -> None:
        self.broken = True
        self.state = "closed"
        self.conn.stream.socket.close()  # wakes a task reading this connection


async def serve_lean(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    max_body: int,
    user_timeout_ms: int = 0,
    shutdown_trigger: Callable[[], Awaitable[object]],
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` until ``shutdown_trigger`` returns, then stop.

    ``task_status.started`` gets the base URL (``http://HOST:PORT``, the actual port).
    ``user_timeout_ms`` sets ``TCP_USER_TIMEOUT`` (Linux) on the listening sockets, which
    accepted ones inherit: a peer that accepts no data that long is disconnected.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    for listener in listeners:
        sock = listener.socket
        if option is not None and user_timeout_ms > 0 and sock.family in (
            socket.AF_INET, socket.AF_INET6
        ):
            sock.setsockopt(socket.IPPROTO_TCP, option, user_timeout_ms)
    name = listeners[0].socket.getsockname()
    bound = f"[{name[0]}]" if ":" in name[0] else name[0]
    url = f"http://{bound}:{name[1]}"
    server = _Server(app, max_body)
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as accepting:
            await accepting.start(partial(trio.serve_listeners, server.handle, listeners,
                                          handler_nursery=connections))
            task_status.started(url)
            await shutdown_trigger()
            accepting.cancel_scope.cancel()
        server.stop()
        connections.cancel_scope.deadline = trio.current_time() + GRACEFUL_TIMEOUT
