"""The server's budget for large responses held for their clients (``response_budget``;
trioqueue/server/_lean.py, ``Server.send_large``).

A response is written whole from memory and stays there until its client has read it:
clients that asked for big ``GET /jobs`` pages and read nothing held 8 MiB each (8 GB at
the default connection cap).  Responses of ``LARGE_RESPONSE`` (64 KiB) or more now count
against the budget until written or dropped; one that would pass it gets 503 with
``Retry-After``, and small ones (probes, metrics, one job) are always answered.

Raw sockets against the real app and queue: slow clients have a 4 KiB receive buffer and
read nothing.  What the server holds is read from ``Server.held_bytes`` (waited for with a
bounded poll); the slow-client timeout is reached by jumping trio's MockClock.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from trioqueue import QueueConfig, open_queue
from trioqueue.cli import UsageError, build_parser, serve_options
from trioqueue.demo import registry as demo_registry
from trioqueue.server import App, ServerSettings, serve
from trioqueue.testing import h1 as _h1
from trioqueue.testing import lean as _lean

from .test_server_lean import connect, post

PAYLOAD = 300_000
"""Characters of each big job's payload: four make a page of about 1.2 MB."""
BUDGET = 3_000_000
"""Two such pages fit, a third does not."""


async def until(check: Callable[[], bool], what: str) -> None:
    """A bounded poll of the server's counters (they change as the kernel moves bytes)."""
    with trio.move_on_after(10):
        while not check():  # noqa: ASYNC110 - counters the kernel's pace moves
            await trio.sleep(0.01)
        return
    raise AssertionError(f"not within 10 s: {what}")


async def get(port: int, path: str) -> tuple[int, dict[str, str], bytes, int]:
    """One request on its own connection, read whole: status, headers, body, and the
    size of the whole response (what the server holds while it is sent)."""
    async with connect(port) as peer:
        await peer.send(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path.encode(), port))
        status, headers, body = await peer.response()
        return status, headers, body, len(peer.last_head) + 4 + len(body)


class SlowClients:
    """Clients that ask for a page and read nothing (closed at the end, whatever happens)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.socks: list[trio.socket.SocketType] = []

    async def get(self, path: str = "/jobs") -> trio.socket.SocketType:
        sock = trio.socket.socket()
        self.socks.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", self.port))
        await sock.send(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
                        % (path.encode(), self.port))
        return sock

    def __enter__(self) -> SlowClients:
        return self

    def __exit__(self, *exc: object) -> None:
        for sock in self.socks:
            sock.close()


@asynccontextmanager
async def big_jobs_server(budget: int) -> AsyncIterator[tuple[Any, int, str]]:
    """The app on a real queue holding four jobs of PAYLOAD characters (and one small
    one), served on 127.0.0.1 by a Server of ``response_budget=budget``: yields the
    server, its port and the small job's id.  The jobs are scheduled an hour ahead, so
    that the pages stay the same whatever the clock does."""
    settings = ServerSettings(response_budget=budget)
    async with open_queue(demo_registry, QueueConfig(workers=1)) as queue:
        for i in range(4):
            await queue.enqueue("echo", {"i": i, "blob": "x" * PAYLOAD}, delay=3600)
        small = await queue.enqueue("echo", {"small": True}, delay=3600)
        server = _lean.Server(App(queue, settings), settings.max_body,
                              settings.max_connections, settings.response_budget)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(server.accept, listener, nursery)
            yield server, port, small.id
            nursery.cancel_scope.cancel()


async def test_slow_readers_hold_at_most_the_budget(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.rate = 1.0  # real time for the polls; jumped past the slow-client timeout
    async with big_jobs_server(BUDGET) as (server, port, small_id):
        status, _, body, page = await get(port, "/jobs")
        assert status == 200
        assert len(json.loads(body)["jobs"]) == 5
        assert 2 * page <= BUDGET < 3 * page
        await until(lambda: server.held_bytes == 0, "the page read whole")

        with SlowClients(port) as slow:
            # Two slow clients: their pages are held, counted.
            first = await slow.get()
            await until(lambda: server.held_bytes == page, "the first page held")
            await slow.get()
            await until(lambda: server.held_bytes == 2 * page, "the second page held")
            # Four more: each page would pass the budget, so none is held.
            for _ in range(4):
                await slow.get()
            await until(lambda: server.responses_refused == 4, "four pages refused")
            assert server.held_bytes == 2 * page <= BUDGET

            # A large request now gets the refusal; small ones are answered.
            status, headers, body, _ = await get(port, "/jobs")
            assert status == 503
            assert headers["retry-after"] == "1"
            assert headers["connection"] == "close"
            assert json.loads(body)["error"].startswith("server busy: ")
            assert server.responses_refused == 5
            assert (await get(port, "/healthz"))[0] == 200
            status, _, body, _ = await get(port, f"/jobs/{small_id}")
            assert status == 200
            assert json.loads(body)["id"] == small_id
            assert (await get(port, "/metrics"))[0] == 200
            assert server.held_bytes == 2 * page

            # A slow client that closes gives its share back...
            first.close()
            await until(lambda: server.held_bytes == page, "the closed client's page dropped")
            # ... and one that is cut off for reading nothing (SEND_TIMEOUT) too.
            mock_clock.jump(_h1.SEND_TIMEOUT + 1)
            await until(lambda: server.held_bytes == 0, "the cut-off client's page dropped")
            status, _, body, size = await get(port, "/jobs")
            assert (status, size) == (200, page)
            await until(lambda: server.held_bytes == 0, "the page read whole")
            assert server.responses_refused == 5


async def test_the_settings_budget_reaches_the_server() -> None:
    """``ServerSettings.response_budget`` through ``serve``: with a budget of 0 one large
    response is sent at a time; while a slow client holds one, another gets 503 and
    small ones are answered; once it closes, large responses go out again."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve, demo_registry, QueueConfig(workers=1),
                                          ServerSettings(port=0, response_budget=0),
                                          stop=stop))
        port = int(url.rsplit(":", 1)[1])
        async with connect(port) as peer:
            job = json.dumps({"task": "echo", "payload": "x" * PAYLOAD, "delay": 3600})
            await peer.send(post(job.encode(), "/jobs",
                                 b"Content-Type: application/json\r\n").replace(
                                     b"Host: t", b"Host: 127.0.0.1:%d" % port))
            assert (await peer.response())[0] == 202
        assert (await get(port, "/jobs"))[0] == 200  # one at a time: nothing else held
        with SlowClients(port) as slow:
            holder = await slow.get()
            with trio.fail_after(10):  # a bounded poll: until the slow client's page is held
                while (answer := await get(port, "/jobs"))[0] == 200:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            status, headers, body, _ = answer
            assert (status, headers["retry-after"]) == (503, "1")
            assert "server busy" in json.loads(body)["error"]
            assert (await get(port, "/healthz"))[0] == 200
            holder.close()
            with trio.fail_after(10):
                while (answer := await get(port, "/jobs"))[0] == 503:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            assert answer[0] == 200
            assert len(json.loads(answer[2])["jobs"]) == 1
        stop.set()


# ---------------------------------------------------------------------------- in memory


BIG = b"y" * (_lean.LARGE_RESPONSE * 4)


async def big_app(scope: Any, receive: Any, send: Any) -> None:
    """Answers every request with BIG (``/small``: with a few bytes)."""
    body = b"small" if scope["path"] == "/small" else BIG
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


GET_BIG = b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.mark.parametrize("end", ["timeout", "eviction", "cancellation", "close"])
async def test_the_budget_is_given_back_however_a_send_ends(
    autojump_clock: Any, end: str,
) -> None:
    """A held response counts until its send ends, whichever way: the client is cut off
    after SEND_TIMEOUT, evicted at the cap, the task cancelled, the stream closed."""
    server = _lean.Server(big_app, 1024, response_budget=len(BIG))
    server_end, client_end = trio.testing.lockstep_stream_pair()  # reads nothing
    conn = _h1.Connection(server, server_end)
    server.connections.add(conn)
    async with trio.open_nursery() as nursery:
        handling = trio.CancelScope()

        async def handle() -> None:
            with handling:
                await server.handle(conn)

        nursery.start_soon(handle)
        await client_end.send_all(GET_BIG)
        await trio.testing.wait_all_tasks_blocked()
        assert server.held_bytes > len(BIG)  # the head too
        started = trio.current_time()
        if end == "eviction":
            assert server.evict("a new connection")
        elif end == "cancellation":
            handling.cancel()
        elif end == "close":
            await client_end.aclose()
        await trio.testing.wait_all_tasks_blocked()
        if end == "timeout":
            assert server.held_bytes > 0
            await trio.sleep(_h1.SEND_TIMEOUT)
            await trio.testing.wait_all_tasks_blocked()
        assert server.held_bytes == 0
        assert trio.current_time() - started == (_h1.SEND_TIMEOUT if end == "timeout" else 0)
        nursery.cancel_scope.cancel()


async def test_a_refusal_on_a_stream_that_is_not_a_socket(autojump_clock: Any) -> None:
    """While one response holds the budget, another large one is refused (503, then the
    close) and a small one on the same kind of connection is answered."""
    server = _lean.Server(big_app, 1024, response_budget=len(BIG))
    holder_end, _holder = trio.testing.lockstep_stream_pair()
    holder = _h1.Connection(server, holder_end)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, holder)
        await _holder.send_all(GET_BIG)
        await trio.testing.wait_all_tasks_blocked()
        held = server.held_bytes
        assert held > len(BIG)
        for path, status in ((b"/big", 503), (b"/small", 200)):
            server_end, client_end = trio.testing.memory_stream_pair()
            nursery.start_soon(server.handle, _h1.Connection(server, server_end))
            await client_end.send_all(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path)
            received = b""
            while chunk := await client_end.receive_some(65536):
                received += chunk
                if status == 200 and received.endswith(b"small"):
                    break
            assert received.startswith(b"HTTP/1.1 %d " % status)
            if status == 503:
                assert b"\r\nretry-after: 1\r\n" in received
                assert b"\r\nconnection: close\r\n" in received
        assert (server.held_bytes, server.responses_refused) == (held, 1)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------- options


def options(argv: list[str], env: dict[str, str]) -> Any:
    return serve_options(build_parser().parse_args(["serve", *argv]), env)[2]


def test_the_budget_option() -> None:
    assert options([], {}).response_budget == _lean.RESPONSE_BUDGET == 64 * 1024 * 1024
    env = {"TRIOQUEUE_RESPONSE_BUDGET": "5000"}
    assert options([], env).response_budget == 5000
    assert options(["--response-budget", "0"], env).response_budget == 0  # the flag wins
    with pytest.raises(UsageError, match=r"^--response-budget: expected bytes >= 0, got -1$"):
        options(["--response-budget", "-1"], {})
    with pytest.raises(UsageError, match="TRIOQUEUE_RESPONSE_BUDGET"):
        options([], {"TRIOQUEUE_RESPONSE_BUDGET": "lots"})
    with pytest.raises(ValueError, match="response_budget"):
        ServerSettings(response_budget=-1)
