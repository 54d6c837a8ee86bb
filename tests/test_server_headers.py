"""Headers a check reads, sent twice: refused, as two Host headers are.

A proxy in front of the server may judge a request by the first of two header lines
(an allowed ``Origin``, a token it checked, a content type it filters) while the server
took the last: the same request would then mean two things (RFC 9110, 5.3: a sender
must not repeat a field that is not a list).  Spoken over raw sockets to a real server.
"""

from __future__ import annotations

import json

import pytest
import trio

from trioqueue import QueueConfig, open_queue
from trioqueue.demo import registry as demo_registry
from trioqueue.server import App, ServerSettings
from trioqueue.testing import header_dict

from .test_server_lean import HANDSHAKE, connect, lean, server_frames

BODY = b'{"task": "echo"}'


def post_with(lines: list[bytes]) -> bytes:
    return (b"POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n%s"
            % (len(BODY), b"".join(line + b"\r\n" for line in lines), BODY))


@pytest.mark.parametrize(("lines", "named"), [
    ([b"Origin: http://evil.example", b"Origin: http://t"], "origin"),
    ([b"Sec-Fetch-Site: cross-site", b"Sec-Fetch-Site: same-origin"], "sec-fetch-site"),
    ([b"Content-Type: text/plain", b"Content-Type: application/json"], "content-type"),
    ([b"Authorization: Bearer wrong", b"Authorization: Bearer s3cret"], "authorization"),
    ([b"Authorization: Bearer s3cret", b"Authorization: Bearer s3cret"], "authorization"),
])
async def test_a_checked_header_sent_twice_is_400_and_nothing_is_enqueued(
    lines: list[bytes], named: str,
) -> None:
    async with open_queue(demo_registry, QueueConfig(workers=1)) as queue:
        app = App(queue, ServerSettings(allowed_hosts="t", token="s3cret"))
        async with lean(app) as (port, _), connect(port) as peer:
            await peer.send(post_with(lines))
            status, headers, body = await peer.response()
            assert status == 400
            assert json.loads(body)["error"] == f"{named}: more than one {named} header"
            assert headers["connection"] == "close"
            assert await peer.eof()
        assert queue.metrics().enqueued == 0
        async with lean(app) as (port, _), connect(port) as peer:  # once each: answered
            await peer.send(post_with([b"Authorization: Bearer s3cret", b"Origin: http://t"]))
            assert (await peer.response())[0] == 202


async def test_headers_that_are_lists_may_come_twice() -> None:
    async with open_queue(demo_registry, QueueConfig(workers=1)) as queue:
        app = App(queue, ServerSettings(allowed_hosts="t"))
        async with lean(app) as (port, _), connect(port) as peer:
            await peer.send(post_with([b"Accept: application/json", b"Accept: */*",
                                       b"Cache-Control: no-cache", b"Cache-Control: no-store"]))
            assert (await peer.response())[0] == 202


async def test_a_websocket_with_two_origins_is_refused() -> None:
    async with open_queue(demo_registry, QueueConfig(workers=1)) as queue:
        app = App(queue, ServerSettings(allowed_hosts="t"))
        async with lean(app) as (port, _), connect(port) as peer:
            await peer.send(HANDSHAKE.replace(b"\r\n\r\n", b"\r\nOrigin: http://evil.example"
                                              b"\r\nOrigin: http://t\r\n\r\n"))
            assert (await peer.response())[0] == 101
            with trio.fail_after(5):
                while not server_frames(peer.buf):
                    assert await peer.more()
            opcode, payload = server_frames(peer.buf)[0]
            assert (opcode, int.from_bytes(payload[:2], "big")) == (0x8, 1008)
            assert b"origin: more than one origin header" in payload


def test_header_dict_keeps_every_header_once() -> None:
    raw = [(b"host", b"t"), (b"accept", b"a"), (b"accept", b"b"), (b"origin", b"http://t")]
    assert header_dict(raw) == {b"host": b"t", b"accept": b"b", b"origin": b"http://t"}
