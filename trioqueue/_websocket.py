"""A client websocket whose stream is ours to close (the event stream's, for
:class:`~trioqueue.client.Client` and ``trioqueue monitor``)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)


@asynccontextmanager
async def open_websocket(
    url: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    connect_timeout: float = 60.0,
    disconnect_timeout: float = 5.0,
) -> AsyncIterator[WebSocketConnection]:
    """A client websocket to ``url`` (``ws://`` or ``wss://``) for an ``async with`` block.

    The TCP (or TLS) stream is opened here and handed to trio-websocket's
    ``wrap_client_stream``, so it is ours to close: ``open_websocket_url`` of
    trio-websocket 0.12 leaves its socket to the garbage collector when the server
    closed first.  The block's own exception comes out as itself; an error of the
    connection's reader task comes out as itself when the block raised nothing, and a
    ``KeyboardInterrupt`` (or ``SystemExit``) raised in the reader task always does:
    trio raises a Ctrl+C in whichever task runs when it comes, and the reader's end
    makes the block raise too (the stream closed), which hid it.
    """
    target = urlsplit(url)
    if target.scheme not in ("ws", "wss") or not target.hostname:
        raise ValueError(f"url: expected ws://HOST[:PORT]/PATH or wss://..., got {url!r}")
    secure = target.scheme == "wss"
    port = target.port or (443 if secure else 80)
    resource = (target.path or "/") + (f"?{target.query}" if target.query else "")
    try:
        with trio.fail_after(connect_timeout):
            tcp = await trio.open_tcp_stream(target.hostname, port)
            stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
            if secure:
                stream = trio.SSLStream(tcp, ssl.create_default_context(),
                                        server_hostname=target.hostname)
    except trio.TooSlowError:
        raise ConnectionTimeout from None
    except OSError as exc:
        raise HandshakeError from exc
    body_exc: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(connect_timeout):
                    ws = await wrap_client_stream(
                        nursery, stream, target.netloc, resource, extra_headers=headers
                    )
            except trio.TooSlowError:
                raise ConnectionTimeout from None
            try:
                yield ws
            except BaseException as exc:  # raised as itself below, outside the nursery
                body_exc = exc
            finally:
                with trio.move_on_after(disconnect_timeout) as closing:
                    closing.shield = True
                    await ws.aclose()
                nursery.cancel_scope.cancel()  # the reader task, if it still runs
    except BaseExceptionGroup as group:
        leaves = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)]
        for leaf in leaves:  # a Ctrl+C that landed in the reader task: never lost
            if isinstance(leaf, KeyboardInterrupt | SystemExit):
                raise leaf from None
        if body_exc is None and len(leaves) == 1:
            raise leaves[0] from None
        if body_exc is None:
            raise
    finally:
        await trio.aclose_forcefully(stream)
    if body_exc is not None:
        raise body_exc
