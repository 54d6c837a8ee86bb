"""The server's budget for large responses held for their clients (``response_budget``;
trioqueue/server/_lean.py, ``Server.send_large``).

A response is written whole from memory and stays there until its client has read it:
clients that asked for big ``GET /jobs`` pages and read nothing held 8 MiB each (8 GB at
the default connection cap).  Responses of ``LARGE_RESPONSE`` (64 KiB) or more now count
against the budget until written or dropped; one that would pass it gets 503 with
``Retry-After``, and small ones (probes, metrics, one job) are always answered.

When the budget is short, a held response whose client has fallen behind (read nothing for
``_budget.GRACE``, or less than the pace that ends it within ``SEND_TIMEOUT``) gives its
place to the newcomer, its connection reset; only when none has is the newcomer refused.

Raw sockets against the real app and queue: slow clients have a 4 KiB receive buffer and
read nothing.  What the server holds is read from ``Server.held_bytes`` (waited for with a
bounded poll); the slow-client timeout and the grace are reached by jumping trio's
MockClock, and the grace is made longer than any step of a test can take in real time.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trioqueue import QueueConfig, open_queue
from trioqueue.cli import UsageError, build_parser, serve_options
from trioqueue.demo import registry as demo_registry
from trioqueue.server import App, ServerSettings, serve
from trioqueue.testing import budget as _budget
from trioqueue.testing import h1 as _h1
from trioqueue.testing import json_out
from trioqueue.testing import lean as _lean
from trioqueue.testing import room as _room

from .test_server_lean import connect, post

PAYLOAD = 300_000
"""Characters of each big job's payload: four make a page of about 1.2 MB."""
BUDGET = 3_000_000
"""Two such pages fit, a third does not."""
BIG_ID = "big-0"
"""The id of one of the big jobs."""
JOB_BUDGET = 750_000
"""Two of the big jobs' answers fit, a third does not."""
GRACE = 20.0
"""``_budget.GRACE`` in these tests: longer than a test's steps take in real time (the mock
clock runs at the real rate for the polls), shorter than ``SEND_TIMEOUT``."""


@pytest.fixture
def grace(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(_budget, "GRACE", GRACE)
    return GRACE


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


async def all_ids(port: int, check: Callable[[dict[str, Any], int], None] | None = None
                  ) -> list[str]:
    """Every job's id, walking ``GET /jobs`` pages (short ones while the budget is held),
    each page and its size given to ``check``."""
    ids: list[str] = []
    query = ""
    while True:
        status, _, body, size = await get(port, "/jobs" + query)
        assert status == 200
        page = json.loads(body)
        if check is not None:
            check(page, size)
        ids += [j["id"] for j in page["jobs"]]
        if page["next"] is None:
            return ids
        query = f"?before={page['next']}"


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


async def drain(sock: trio.socket.SocketType) -> int:
    """Read a slow client's connection to its end (an EOF or a reset): the bytes it got."""
    got = 0
    with trio.fail_after(10):
        while True:
            try:
                data = await sock.recv(65536)
            except ConnectionResetError:
                return got
            if not data:
                return got
            got += len(data)


@asynccontextmanager
async def big_jobs_server(budget: int, access_log: bool = False
                          ) -> AsyncIterator[tuple[Any, int, str]]:
    """The app on a real queue holding four jobs of PAYLOAD characters (and one small
    one, the newest), served on 127.0.0.1 by a Server of ``response_budget=budget``:
    yields the server, its port and the small job's id.  The jobs are scheduled an hour
    ahead, so that the pages stay the same whatever the clock does.  ``/jobs/{BIG_ID}`` is
    one of the big jobs: a large answer that cannot be cut short, as a page can."""
    settings = ServerSettings(response_budget=budget, access_log=access_log)
    async with open_queue(demo_registry, QueueConfig(workers=1)) as queue:
        for i in range(4):
            await queue.enqueue("echo", {"i": i, "blob": "x" * PAYLOAD}, delay=3600,
                                job_id=BIG_ID if i == 0 else None)
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
    mock_clock: trio.testing.MockClock, grace: float,
) -> None:
    mock_clock.rate = 1.0  # real time for the polls; jumped past the slow-client timeout
    big = f"/jobs/{BIG_ID}"
    async with big_jobs_server(JOB_BUDGET) as (server, port, small_id):
        status, _, body, job = await get(port, big)
        assert status == 200
        assert len(json.loads(body)["payload"]["blob"]) == PAYLOAD
        assert 2 * job <= JOB_BUDGET < 3 * job
        await until(lambda: server.held_bytes == 0, "the job read whole")

        with SlowClients(port) as slow:
            # Two slow clients: their answers are held, counted.
            first = await slow.get(big)
            await until(lambda: server.held_bytes == job, "the first answer held")
            await slow.get(big)
            await until(lambda: server.held_bytes == 2 * job, "the second answer held")
            # Four more: each answer would pass the budget, so none is held.
            for _ in range(4):
                await slow.get(big)
            await until(lambda: server.responses_refused == 4, "four answers refused")
            assert server.held_bytes == 2 * job <= JOB_BUDGET

            # A large answer now gets the refusal; small ones are answered.
            status, headers, body, _ = await get(port, big)
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
            # A page is cut short to fit what is left instead (here: the small job).
            status, _, body, _ = await get(port, "/jobs")
            assert status == 200
            assert [j["id"] for j in json.loads(body)["jobs"]] == [small_id]
            assert json.loads(body)["next"] == small_id
            assert server.held_bytes == 2 * job
            assert server.responses_refused == 5

            # A slow client that closes gives its share back...
            first.close()
            await until(lambda: server.held_bytes == job, "the closed client's answer dropped")
            # ... and one that is cut off for reading nothing (SEND_TIMEOUT) too.
            mock_clock.jump(_h1.SEND_TIMEOUT + 1)
            await until(lambda: server.held_bytes == 0, "the cut-off client's answer dropped")
            status, _, body, size = await get(port, big)
            assert (status, size) == (200, job)
            await until(lambda: server.held_bytes == 0, "the answer read whole")
            assert server.responses_refused == 5


async def test_a_page_is_cut_short_to_the_room_the_budget_has(
    mock_clock: trio.testing.MockClock, grace: float,
) -> None:
    """While slow clients hold most of the budget, ``GET /jobs`` answers a page of the
    jobs that fit what is left (``next`` where it stopped), not a 503; following
    ``next`` gets every job; with room again, the page is whole."""
    mock_clock.rate = 1.0
    async with big_jobs_server(BUDGET) as (server, port, _):
        status, _, body, page = await get(port, "/jobs")
        assert status == 200
        everything = [j["id"] for j in json.loads(body)["jobs"]]
        assert len(everything) == 5
        await until(lambda: server.held_bytes == 0, "the page read whole")
        with SlowClients(port) as slow:
            await slow.get()
            await slow.get()
            await until(lambda: server.held_bytes == 2 * page, "two pages held")

            def short(got: dict[str, Any], size: int) -> None:
                assert 0 < len(got["jobs"]) < 5
                assert size <= BUDGET - 2 * page  # it fits: nobody's place taken

            assert await all_ids(port, short) == everything
            assert (server.responses_refused, server.responses_preempted) == (0, 0)
        await until(lambda: server.held_bytes == 0, "the slow clients gone")
        status, _, body, size = await get(port, "/jobs")
        assert (status, size) == (200, page)


async def test_a_reader_takes_the_place_of_clients_that_read_nothing(
    mock_clock: trio.testing.MockClock, grace: float,
) -> None:
    """Clients that asked for large answers and read nothing hold the budget only until
    they have read nothing for the grace: then a reader's answer takes the place of the
    one behind the longest (its connection reset) instead of a 503."""
    mock_clock.rate = 1.0
    big = f"/jobs/{BIG_ID}"
    async with big_jobs_server(JOB_BUDGET) as (server, port, _):
        status, _, _, job = await get(port, big)
        assert status == 200
        await until(lambda: server.held_bytes == 0, "the answer read whole")
        with SlowClients(port) as slow:
            first = await slow.get(big)
            await until(lambda: server.held_bytes == job, "the first answer held")
            await slow.get(big)
            await until(lambda: server.held_bytes == 2 * job, "the second answer held")
            # Neither has been held for the grace: a third large answer is refused.
            assert (await get(port, big))[0] == 503
            assert (server.responses_refused, server.responses_preempted) == (1, 0)

            mock_clock.jump(grace)  # both have read nothing since
            status, _, body, size = await get(port, big)
            assert (status, size) == (200, job)
            assert json.loads(body)["id"] == BIG_ID
            assert (server.responses_refused, server.responses_preempted) == (1, 1)
            await until(lambda: server.held_bytes == job, "the reader's answer written")
            # The first slow client (behind the longest) lost its answer: a reset.
            assert await drain(first) < job
            # With room, a large answer takes nobody's place.
            status, _, _, size = await get(port, big)
            assert (status, size) == (200, job)
            assert (server.responses_refused, server.responses_preempted) == (1, 1)
            assert server.held_bytes == job


async def test_the_access_log_shows_the_503_sent_for_the_budget(
    mock_clock: trio.testing.MockClock, grace: float, caplog: pytest.LogCaptureFixture,
) -> None:
    """A large answer refused for the budget is logged with the 503 the client got, not
    with the status the app gave it."""
    mock_clock.rate = 1.0
    big = f"/jobs/{BIG_ID}"
    with caplog.at_level(logging.INFO, logger="trioqueue.server"):
        async with big_jobs_server(0, access_log=True) as (server, port, _):
            with SlowClients(port) as slow:
                await slow.get(big)
                await until(lambda: server.held_bytes > 0, "the slow client's answer held")
                assert (await get(port, big))[0] == 503
                assert (await get(port, "/healthz"))[0] == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "trioqueue.server"]
    assert f"GET {big} 503" in lines
    assert "GET /healthz 200" in lines
    assert f"GET {big} 200" not in lines  # the slow client's answer is not written yet


async def post_raw(port: int, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    async with connect(port) as peer:
        await peer.send(post(body, path, b"Content-Type: application/json\r\n").replace(
            b"Host: t", b"Host: 127.0.0.1:%d" % port))
        return await peer.response()


_BATCH = json.dumps({"jobs": [{"task": "echo", "payload": "x" * 1000, "delay": 3600}
                              for _ in range(100)]})


@pytest.mark.parametrize(("path", "body"), [
    ("/jobs/batch", _BATCH),  # 100 KB, its answer larger still
    # Bodies under 64 KiB whose answers are not: the room asked for was the body's
    # length, and such a POST was done, then answered past the budget.
    ("/jobs", '{"task":"echo","delay":3600,"payload":"' + "\u00e9" * 20_000 + '"}'),  # 120 KB
    ("/jobs", '{"task":"echo","delay":3600,"payload":[' + ",".join(["1e15"] * 4_000)
     + "]}"),  # 20 KB of 1e15, 76 KB of 1000000000000000.0
])
async def test_a_post_whose_answer_has_no_room_is_refused_before_anything_is_done(
    mock_clock: trio.testing.MockClock, grace: float, path: str, body: str,
) -> None:
    """A POST whose answer would be large, while the budget has no room for it, gets 503
    before any of its jobs is made: a 503 after them would have the client send it again
    and make them twice.  The answer is judged by what it will be (JSON written as ASCII,
    numbers as Python writes them), not by the body's length."""
    mock_clock.rate = 1.0
    async with big_jobs_server(0) as (server, port, _):
        before = await all_ids(port)
        with SlowClients(port) as slow:
            await slow.get(f"/jobs/{BIG_ID}")
            await until(lambda: server.held_bytes > 0, "the slow client's answer held")
            status, headers, answer = await post_raw(port, path, body.encode())
            assert (status, headers["retry-after"]) == (503, "1")
            assert "nothing was done" in json.loads(answer)["error"]
            # A small one still goes through.
            status, _, answer = await post_raw(port, "/jobs", b'{"task": "echo", "payload": 1}')
            assert status == 202
            small = json.loads(answer)["id"]
        await until(lambda: server.held_bytes == 0, "the slow client gone")
        assert await all_ids(port) == [small, *before]  # none of the refused POST's
        status, _, answer = await post_raw(port, path, body.encode())
        assert status == 202
        assert len(answer) >= _room.LARGE_RESPONSE


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                          allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner,
                                                                max_size=4),
    max_leaves=20,
))
def test_growth_bounds_what_the_server_writes_of_a_body(value: Any) -> None:
    """``answer_bytes`` writes the payloads out only for bodies that could have a large
    answer: that needs the server's JSON of a value to be at most ``GROWTH`` times the
    shortest body that sends it."""
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    for number in ("1e15", "9e15", "1e-7", "-1e15"):  # the shortest ways to write floats
        body = body.replace(json.dumps(float(number)).encode(), number.encode())
    written = len(json_out.dumps(value))
    assert written <= _room.GROWTH * len(body)
    # So a large answer is never judged smaller than it is (a small one is not judged).
    answer = written + _room.JOB_FIELDS_BYTES
    if answer >= _room.LARGE_RESPONSE:
        assert _room.answer_bytes(body, [value]) == answer
    big = [value] * (_room.LARGE_RESPONSE // max(1, written) + 1)  # the same, made large
    big_body = b"[" + b",".join([body] * len(big)) + b"]"
    assert _room.answer_bytes(big_body, [big]) >= len(json_out.dumps(big))


async def test_the_answer_to_a_change_goes_out_past_the_budget(
    mock_clock: trio.testing.MockClock, grace: float,
) -> None:
    """Cancelling a big job while the budget is held: the job is cancelled, and the
    large answer that says so is sent, not refused (the client would think nothing
    was done)."""
    mock_clock.rate = 1.0
    async with big_jobs_server(0) as (server, port, _):
        with SlowClients(port) as slow:
            await slow.get(f"/jobs/{BIG_ID}")
            await until(lambda: server.held_bytes > 0, "the slow client's answer held")
            status, _, body = await post_raw(port, f"/jobs/{BIG_ID}/cancel", b"")
            assert status == 200
            answer = json.loads(body)
            assert (answer["id"], answer["status"]) == (BIG_ID, "cancelled")
            assert len(answer["payload"]["blob"]) == PAYLOAD
            assert server.responses_refused == 0


def test_a_client_falls_behind_when_it_stalls_or_reads_too_slowly() -> None:
    """``Hold.behind``: never within the grace nor outside a wait on the client; after it,
    when the socket took nothing for the grace, or less than the pace that ends the
    response within SEND_TIMEOUT (``size * (held - GRACE) / SEND_TIMEOUT``)."""
    size = 30 * 1024 * 1024
    pace = size / _h1.SEND_TIMEOUT  # bytes a second
    g = _budget.GRACE
    conn: Any = SimpleNamespace(waiting=trio.CancelScope())
    hold = _budget.Hold(conn, size, 100.0)
    hold.waiting = True
    assert hold.behind(100.0 + g / 2) is None  # within the grace, even reading nothing
    assert hold.behind(100.0 + g + 5) == g + 5  # read nothing since it came
    hold.waiting = False
    assert hold.behind(100.0 + g + 5) is None  # not waiting on its client: not taken
    hold.waiting = True
    conn.waiting = None
    assert hold.behind(100.0 + g + 5) is None
    conn.waiting = trio.CancelScope()
    # Reading at the pace (a second of it ahead): kept, however long it takes.
    for held in (g, g + 3, g + 20):
        hold.sent = int(pace * (held - g + 1))
        hold.progressed = 100.0 + held - g / 10
        assert hold.behind(100.0 + held) is None
    # Reading, but a second's worth behind the pace: taken.
    hold.sent = int(pace * 19)
    assert hold.behind(100.0 + g + 20) == pytest.approx(1.0, abs=1e-6)


async def test_the_settings_budget_reaches_the_server(grace: float) -> None:
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


async def test_refused_responses_let_go_of_their_bodies_before_others_run() -> None:
    """A crowd asks for large answers at once over a full budget: each refused one lets
    go of its body before another request runs (no schedule point in the refusal).  A
    refusal that yielded kept one built body per refused client alive at once: 300
    clients asking for 8 MiB pages took a server to 1.2 GB (benchmarks.slow_readers)."""
    crowd = 30
    arrived, inside, peak = 0, 0, 0
    everyone = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal arrived, inside, peak
        arrived += 1
        if arrived == crowd:
            everyone.set()
        await everyone.wait()  # then all build their bodies in one batch of the loop
        body = bytes(len(BIG))  # each its own, as a page is
        inside += 1
        peak = max(peak, inside)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
        finally:
            inside -= 1

    server = _lean.Server(app, 1024, response_budget=len(BIG))  # one answer at a time
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(server.accept, listener, nursery)
        with SlowClients(port) as clients:
            socks = [await clients.get("/big") for _ in range(crowd)]
            await until(lambda: server.responses_refused == crowd - 1, "the refusals")
            assert server.held_bytes > len(BIG)  # the one admitted, unread
            assert peak <= 2  # the holder, and the one being refused
            refused = 0
            for sock in socks:
                first = await sock.recv(64)
                refused += first.startswith(b"HTTP/1.1 503 ")
            assert refused == crowd - 1
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------- options


def options(argv: list[str], env: dict[str, str]) -> Any:
    return serve_options(build_parser().parse_args(["serve", *argv]), env)[2]


def check_byte_option(name: str, default: int) -> None:
    """A byte-count option of ``serve`` (``response_budget``, ``body_budget``): its
    default, its variable, its flag (which wins), and the errors of each and of
    ServerSettings."""
    flag, variable = "--" + name.replace("_", "-"), "TRIOQUEUE_" + name.upper()
    assert getattr(options([], {}), name) == default
    env = {variable: "5000"}
    assert getattr(options([], env), name) == 5000
    assert getattr(options([flag, "0"], env), name) == 0  # the flag wins
    with pytest.raises(UsageError, match=rf"^{flag}: expected bytes >= 0, got -1$"):
        options([flag, "-1"], {})
    with pytest.raises(UsageError, match=variable):
        options([], {variable: "lots"})
    with pytest.raises(ValueError, match=name):
        ServerSettings(**{name: -1})
    with pytest.raises(ValueError, match=name):
        ServerSettings(**{name: True})


def test_the_budget_option() -> None:
    assert _lean.RESPONSE_BUDGET == 64 * 1024 * 1024
    check_byte_option("response_budget", _lean.RESPONSE_BUDGET)
