"""Websockets of the lean server: wsproto on the connection's stream, ASGI messages to
the app (see :mod:`._lean`)."""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING
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

from ._http import Message, Scope
from ._wire import READ_SIZE, WAIT_CLOSING, HttpRequest, error_response

if TYPE_CHECKING:
    from ._h1 import Connection

log = logging.getLogger("trioqueue.http")

WS_MAX_MESSAGE = 64 * 1024
"""Bytes of one websocket message (its frames together)."""
WS_CLOSE_TIMEOUT = 2.0
"""Seconds to wait for the peer's close frame after ours before hanging up."""
_WS_ASGI = {"spec_version": "2.3", "version": "3.0"}


class WebSocket:
    """One websocket connection: wsproto on the stream, ASGI messages to the app."""

    def __init__(self, conn: Connection, request: HttpRequest) -> None:
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
            self.ws.initiate_upgrade_connection(request.headers, request.url)
            handshake = next(self.ws.events(), None)
            if not isinstance(handshake, Request):
                raise ValueError("no websocket request")
        except Exception as exc:
            await conn.stream.send_all(error_response(400, f"bad websocket request: {exc}"))
            return
        raw_path, _, query_string = request.url.partition(b"?")
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
                await self._write(error_response(500, "internal server error"))
                return
            if self.state == "connected":
                await self._close(1011, "internal error")
        if self.state == "handshake":  # the app neither accepted nor refused
            await self._write(error_response(500, "internal server error"))
            return
        if self.state == "connected":  # the app returned without closing
            await self._close(1000, "")
        # Wait (briefly) for the peer's close frame, so that it reads ours before the
        # connection goes: closing with unread data would reset it.  An evictable wait:
        # a client that never answers must not hold the connection at the cap.
        now = trio.current_time()
        with conn.waiting_on_client(now + WS_CLOSE_TIMEOUT, WAIT_CLOSING, now):
            while not self.peer_closed and not self.broken and not conn.evicted:
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
        data: bytes | bytearray
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
            # Closed now, as for a close frame: wsproto is, and the app's event sender,
            # woken in this same tick, would send to it before its cancellation.
            self.state = "closed"
            self.ws.receive_data(None)
            return
        self.ws.receive_data(bytes(data))
        for event in self.ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                # The limit is in bytes on the wire: wsproto hands text over decoded.
                part = event.data
                self.message_size += len(part.encode() if isinstance(part, str) else part)
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
                # Closed before the reply's write yields: the app's sends (events going
                # out) must see it, or they would send after the close frame.
                self.state = "closed"
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    await self._write(self.ws.send(event.response()))
                elif self.ws.state is ConnectionState.OPEN:
                    # Not the peer's close but wsproto's word for a frame it could not
                    # take (1002 a protocol error, 1007 bad UTF-8): say so before the end.
                    await self._close(event.code, event.reason or "")
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
            await self._write(error_response(403, "websocket refused"))
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
        self.conn.hang_up()
