"""The scripts' lean connection (trioqueue/_redis/_pipe.py) against the real Redis, with
coredis as the reference: the same decoded replies, replies matched to requests across
concurrent tasks, re-sends after CLIENT KILL, the watchdog, and the connection handshake
(database, client name, password, unix socket)."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio
from coredis.exceptions import ResponseError

from tests.redis_util import (
    REDIS_URL,
    admin,
    blocked_clients,
    free_port,
    kill_clients,
    poll,
    unique,
)
from trioqueue.testing import (
    Endpoint,
    Lost,
    Pipe,
    RedisClient,
    RedisUnavailable,
    connect,
    lua_script,
    pack,
)

REPLIES = [
    "return {1, 'abc', {2, false}, 'é😀 \\0 x'}",
    "return false",
    "return true",
    "return -3.7",
    "return {}",
    "return ''",
    "return {ok='fine'}",
    "return {1, {err='inner'}, {{}, {'deep', {7}}}}",
    "return redis.call('HGETALL', KEYS[1])",
    "return {ARGV[1], tonumber(ARGV[2]), #ARGV[3]}",
    "return string.rep('é', 300000)",
]


@pytest.fixture
async def pair() -> AsyncIterator[tuple[RedisClient, coredis.Redis[str], str]]:
    name = unique("c")
    async with admin() as ref, connect(REDIS_URL, client_name=name) as client:
        yield client, ref, name


def _same(a: Any, b: Any) -> bool:
    """Equal replies; errors compare by type and message."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, BaseException) or isinstance(b, BaseException):
        return type(a) is type(b) and str(a) == str(b)
    return type(a) is type(b) and a == b


async def test_replies_decode_as_coredis_does(pair: tuple[RedisClient, Any, str]) -> None:
    client, ref, _ = pair
    key = f"tq:{{{unique('q')}}}:h"
    await ref.hset(key, {"f": "v é", "n": "1"})
    try:
        args = ["ünï", "42", "x" * 1000]
        for body in REPLIES:
            mine = await client.run(lua_script(body), [key], args)
            theirs = await ref.eval(body, [key], args)
            assert _same(mine, theirs), body
        # A script's own error raises, with coredis' exception and message.
        for body in ("return {err='boom'}", "return redis.call('NOPE')",
                     "error('raised in lua')"):
            with pytest.raises(ResponseError) as mine_err:
                await client.run(lua_script(body), [key], [])
            with pytest.raises(ResponseError) as ref_err:
                await ref.eval(body, [key], [])
            assert str(mine_err.value) == str(ref_err.value)
    finally:
        await ref.delete([key])


async def test_concurrent_calls_get_their_own_replies(
    pair: tuple[RedisClient, Any, str],
) -> None:
    """300 tasks at once on one socket, one of them sending 8 MB (partial writes, drained
    in order): each gets its own answer; a task cancelled while it waits leaves the
    others' replies in place."""
    client = pair[0]
    echo = lua_script("return {ARGV[1], #ARGV[2]}")
    got: dict[int, Any] = {}

    async def one(i: int) -> None:
        got[i] = await client.run(echo, ["k"], [str(i), "y" * (8_000_000 if i == 150 else i)])

    async def cancelled() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()  # at its first checkpoint: after the send, before the reply
            await client.run(echo, ["k"], ["gone", ""])

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for i in range(300):
                nursery.start_soon(one, i)
                if i % 50 == 0:
                    nursery.start_soon(cancelled)
    assert got == {i: [str(i), 8_000_000 if i == 150 else i] for i in range(300)}
    assert client.pipe_connects == 1


async def test_client_kill_re_sends_the_requests_in_flight() -> None:
    """A blocking command on the pipe (only a test sends one) is in flight when CLIENT
    KILL drops the connection: it and the request queued behind it are sent again on a
    new connection, as coredis re-sends."""
    name, key = unique("c"), f"tq:{{{unique('q')}}}:l"
    async with admin() as ref, trio.open_nursery() as nursery:
        pipe = Pipe(Endpoint(REDIS_URL, name), nursery, connect_timeout=2.0,
                    stream_timeout=10.0)
        got: list[Any] = []

        async def call(cmd: tuple[str | int, ...]) -> None:
            got.append(await pipe.execute(pack(cmd)))

        with trio.fail_after(8):
            async with trio.open_nursery() as calls:
                calls.start_soon(call, ("BLPOP", key, 5))
                await poll(lambda: blocked_clients(ref, name, "blpop"))
                calls.start_soon(call, ("ECHO", "behind"))
                await trio.sleep(0.05)
                assert await kill_clients(ref, name) == 1
                await poll(lambda: blocked_clients(ref, name, "blpop"))  # sent again
                await ref.rpush(key, ["item"])
        assert got == [[key, "item"], "behind"] or got == ["behind", [key, "item"]]
        assert pipe.connects == 2
        # An idle connection killed: the next call reconnects.
        assert await kill_clients(ref, name) == 1
        assert await pipe.execute(pack(("ECHO", "after"))) == "after"
        assert pipe.connects == 3
        pipe.close()
        nursery.cancel_scope.cancel()


async def test_no_reply_in_time_fails_the_connection() -> None:
    """The watchdog: a request with no reply for ``stream_timeout`` fails its connection;
    after every send timed out, :class:`Lost` (RedisUnavailable in the adapter)."""
    name, key = unique("c"), f"tq:{{{unique('q')}}}:never"
    async with trio.open_nursery() as nursery:
        pipe = Pipe(Endpoint(REDIS_URL, name), nursery, connect_timeout=2.0,
                    stream_timeout=0.1)
        with trio.fail_after(3), pytest.raises(Lost, match=r"no reply in 0\.1 s"):
            await pipe.execute(pack(("BLPOP", key, 2)))
        assert pipe.connects == 3
        assert await pipe.execute(pack(("ECHO", "x"))) == "x"
        pipe.close()
        nursery.cancel_scope.cancel()


async def test_handshake_selects_the_database_and_names_the_connection() -> None:
    name = unique("c")
    db_url = REDIS_URL.rsplit("/", 1)[0] + "/13"
    async with connect(db_url, client_name=name) as client:
        info = await client.run(lua_script("return 1"), [], [])
        assert info == 1
        async with admin() as ref:
            (entry,) = [dict(c) for c in await ref.client_list() if dict(c)["name"] == name]
        assert str(entry["db"]) == "13"


def _start_redis(port: int, path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--requirepass", "s3cr/t", "--unixsocket", str(path), "--dir", str(path.parent)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_password_and_unix_socket(tmp_path: Path) -> None:
    """A private redis-server with a password and a unix socket."""
    port, path = free_port(), tmp_path / "r.sock"
    server = _start_redis(port, path)
    try:
        with trio.fail_after(10):
            await poll(lambda: trio.Path(path).exists())
            one = lua_script("return redis.call('INCR', KEYS[1])")
            for n, url in enumerate((f"redis://:s3cr%2Ft@127.0.0.1:{port}/2",
                        f"unix://:s3cr%2Ft@{path}?db=2",
                        # redis-py's query form (unix:// has no netloc for a password)
                        f"redis://127.0.0.1:{port}/2?password=s3cr%2Ft",
                        f"unix://{path}?db=2&password=s3cr%2Ft"), 1):
                async with connect(url) as client:
                    assert await client.run(one, ["n"], []) == n  # (all in db 2)
            async with connect(f"redis://:wrong@127.0.0.1:{port}/2", connect_timeout=1.0
                               ) as client:
                with pytest.raises(RedisUnavailable, match="AUTH refused"):
                    await client.run(one, ["n"], [])
    finally:
        server.kill()
        server.wait()


async def test_a_closed_client_refuses_calls() -> None:
    one = lua_script("return 1")
    async with connect(REDIS_URL, client_name=unique("c")) as client:
        assert await client.run(one, [], []) == 1
    with trio.fail_after(2), pytest.raises(RedisUnavailable, match="closed"):
        await client.run(one, [], [])


async def test_calls_waiting_for_a_connection_that_does_not_come_fail_together(
    autojump_clock: Any,
) -> None:
    """A Redis that accepts connections and answers nothing (stopped with SIGSTOP, a
    network that drops replies): the callers waiting for the one connecting take its
    failure rather than each try again in turn; 20 calls waited ``connect_timeout`` each,
    one after another, the last of them for minutes.  Here 10 calls all fail within the
    time of their own three attempts (virtual time)."""
    held: list[trio.SocketStream] = []

    async def silent(stream: trio.SocketStream) -> None:
        held.append(stream)  # read nothing, answer nothing
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, silent, 0)
        port = listeners[0].socket.getsockname()[1]
        pipe = Pipe(Endpoint(f"redis://127.0.0.1:{port}/0", unique("c")), nursery,
                    connect_timeout=0.5, stream_timeout=60.0)
        ended: list[float] = []
        start = trio.current_time()

        async def call() -> None:
            with pytest.raises(Lost, match=r"no connection within 0\.5 s"):
                await pipe.execute(pack(("PING",)))
            ended.append(trio.current_time() - start)

        async with trio.open_nursery() as calls:
            for _ in range(10):
                calls.start_soon(call)
        assert len(ended) == 10
        assert max(ended) < 3 * (0.5 + 0.01) + 0.1, ended  # three attempts, not 30
        assert pipe.connects == 0
        pipe.close()
        nursery.cancel_scope.cancel()
