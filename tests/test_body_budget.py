"""The server's budget for request bodies (trioqueue/server/_budget.py, ``BodyBudget``).

A body is buffered in memory until its request ends: 900 connections that each sent all
but the end of a 1 MiB body held 950 MB for the 30 s a body may take.  Bytes past each
body's first ``BODY_COUNTED_FROM`` now count against ``body_budget``; a connection that
would read more of a counted body while the budget is spent waits, reading nothing (TCP
holds its client back), and a client stalled in its body for ``_budget.GRACE`` gives its
place to one that is waited on.

Raw sockets against a real lean server, with an app that reads each body whole and
answers its size; what the server has taken is what the app received plus what waits
in the parser's buffers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from trioqueue import QueueConfig
from trioqueue.demo import registry as demo_registry
from trioqueue.server import ServerSettings, serve
from trioqueue.testing import budget as _budget
from trioqueue.testing import lean as _lean
from trioqueue.testing import wire as _wire

from .test_response_budget import check_byte_option, until

GRACE = 20.0
"""``_budget.GRACE`` here: longer than a test's steps take in real time."""


class Reader:
    """An app that reads each body whole and answers its size."""

    def __init__(self) -> None:
        self.received: dict[int, int] = {}
        self.next = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        me, self.next = self.next, self.next + 1
        self.received[me] = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            self.received[me] += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % self.received[me]})


@asynccontextmanager
async def body_server(budget: int) -> AsyncIterator[tuple[Any, Reader, int]]:
    app = Reader()
    server = _lean.Server(app, 10_000_000, body_budget=budget)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(server.accept, listener, nursery)
        yield server, app, port
        nursery.cancel_scope.cancel()


def head(size: int) -> bytes:
    return (b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-length: %d\r\n\r\n" % size)


async def send_part(port: int, size: int, part: int, socks: list[trio.socket.SocketType]
                    ) -> None:
    """Send the head of a ``size``-byte body and its first ``part`` bytes, then nothing."""
    sock = trio.socket.socket()
    socks.append(sock)
    await sock.connect(("127.0.0.1", port))
    await sock.send(head(size))
    view = memoryview(b"x" * part)
    while view:
        view = view[await sock.send(view):]


async def post(port: int, size: int) -> bytes:
    """A whole request with a ``size``-byte body, sent at once; the whole answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head(size) + b"y" * size)
        answer = b""
        while not answer.endswith(b"%d" % size) and (chunk := await stream.receive_some()):
            answer += chunk
        return answer


def taken(server: Any, app: Reader) -> int:
    """Body bytes the server took from its clients: given to the app or buffered."""
    buffered = sum(len(part) for conn in server.connections if conn.current is not None
                   for part in conn.current.body)
    return sum(app.received.values()) + buffered


async def test_clients_that_stall_in_large_bodies_hold_at_most_the_budget() -> None:
    budget, clients, part = 300_000, 12, 400_000
    socks: list[trio.socket.SocketType] = []
    async with body_server(budget) as (server, app, port):
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(clients):
                    nursery.start_soon(send_part, port, 1_000_000, part, socks)
                await until(lambda: server.bodies.held >= budget, "the budget spent")
                # What may still come in: a read under way on each connection, and all
                # that the one that has held bytes longest sent (it reads on).
                bound = budget + part + clients * (_wire.BODY_COUNTED_FROM + _wire.READ_SIZE)
                last = -1
                while last != (now := taken(server, app)):  # until nothing more comes in
                    last = now
                    await trio.sleep(0.2)
                assert now <= bound < clients * part  # (without the budget: all of it)
                assert server.bodies.held <= budget + part + clients * _wire.READ_SIZE
                nursery.cancel_scope.cancel()
            # Clients that go away give their bytes back.
            for sock in socks:
                sock.close()
            await until(lambda: server.bodies.held == 0, "the bodies given back")
        finally:
            for sock in socks:
                sock.close()


async def test_a_client_stalled_in_its_body_gives_its_place(
    mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the budget spent by clients that sent part of a body and stalled, a body sent
    at once waits only until a stalled one is closed (one waited on for GRACE), not
    until its own deadline."""
    monkeypatch.setattr(_budget, "GRACE", GRACE)
    mock_clock.rate = 1.0  # real time for the polls
    budget = 400_000  # two such parts fit (each read whole): a third body does not
    socks: list[trio.socket.SocketType] = []
    async with body_server(budget) as (server, _, port):
        try:
            for _ in range(2):
                await send_part(port, 1_000_000, 250_000, socks)
            held = 2 * (250_000 - _wire.BODY_COUNTED_FROM)
            await until(lambda: server.bodies.held == held, "both parts read")
            mock_clock.jump(GRACE + 1)  # they have stalled since
            with trio.fail_after(10):
                answer = await post(port, 500_000)
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert answer.endswith(b"\r\n\r\n500000")
            assert server.bodies.evicted == 2
            with trio.fail_after(10):  # the stalled ones are closed
                try:
                    assert await socks[0].recv(100) == b""
                except ConnectionResetError:
                    pass
        finally:
            for sock in socks:
                sock.close()
        await until(lambda: server.bodies.held == 0, "the bodies given back")


async def test_many_bodies_sent_whole_at_once_all_come_through() -> None:
    """Twelve clients send 400 KB bodies at once, over a budget of 300 KB: they are read
    one after another (the one holding bytes longest reads on), and every one is
    answered, none waits for its deadline (were every holder to wait for room, none
    would get it)."""
    clients, size = 12, 400_000
    answers: list[bytes] = []
    async with body_server(300_000) as (server, app, port):

        async def one() -> None:
            answers.append(await post(port, size))

        with trio.fail_after(20):  # a hang guard: the deadline of a body is 30 s
            async with trio.open_nursery() as nursery:
                for _ in range(clients):
                    nursery.start_soon(one)
        assert [a.startswith(b"HTTP/1.1 200 ") for a in answers] == [True] * clients
        assert all(a.endswith(b"\r\n\r\n%d" % size) for a in answers)
        assert sorted(app.received.values()) == [size] * clients
        assert server.bodies.evicted == 0
        await until(lambda: server.bodies.held == 0, "the bodies given back")


async def test_one_body_larger_than_the_budget_is_read(autojump_clock: Any) -> None:
    """With nothing else held, a body is read whatever its size."""
    async with body_server(100_000) as (server, _, port):
        answer = await post(port, 1_000_000)
        assert answer.endswith(b"\r\n\r\n1000000")
        await trio.testing.wait_all_tasks_blocked()
        assert server.bodies.held == 0


async def test_a_body_under_the_threshold_is_never_held_back(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Bodies of at most BODY_COUNTED_FROM bytes are read while the budget is spent."""
    mock_clock.rate = 1.0
    socks: list[trio.socket.SocketType] = []
    async with body_server(200_000) as (server, _, port):
        try:
            for _ in range(2):
                await send_part(port, 1_000_000, 300_000, socks)
            await until(lambda: server.bodies.held >= 200_000, "the budget spent")
            with trio.fail_after(10):
                answer = await post(port, _wire.BODY_COUNTED_FROM)
            assert answer.endswith(b"\r\n\r\n%d" % _wire.BODY_COUNTED_FROM)
            assert server.bodies.evicted == 0
        finally:
            for sock in socks:
                sock.close()


# ---------------------------------------------------------------------------- options


async def test_the_settings_body_budget_reaches_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ServerSettings.body_budget`` through ``serve`` is the budget the server keeps."""
    made: list[Any] = []

    class Recorded(_lean.Server):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(_lean, "Server", Recorded)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve, demo_registry, QueueConfig(workers=1),
                                    ServerSettings(port=0, body_budget=12345), stop=stop))
        assert [server.bodies.limit for server in made] == [12345]
        stop.set()


def test_the_body_budget_option() -> None:
    assert _lean.BODY_BUDGET == 64 * 1024 * 1024
    check_byte_option("body_budget", _lean.BODY_BUDGET)


def test_the_server_imports_where_fcntl_and_termios_are_missing() -> None:
    """The stalled-body check asks the kernel how much a socket holds unread with
    fcntl/termios, which only Unix has; elsewhere (no direct socket I/O there) the server
    must still import, as it did before the check."""
    import subprocess
    import sys

    code = ("import sys, trio\n"  # (trio itself imports fcntl on Unix: load it first)
            "sys.modules['fcntl'] = None\nsys.modules['termios'] = None\n"
            "import trioqueue.server, trioqueue.cli\nprint('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
