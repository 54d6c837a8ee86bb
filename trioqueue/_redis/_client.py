"""The adapter over coredis: the only module that imports it.

Two rules make coredis safe under Trio here (docs/redis-design.md says why):

* **Never cancel a blocking call in flight.**  Cancelling BLPOP or XREAD BLOCK leaves the
  waiter armed in the server (it swallows the next item pushed) and, in coredis 6.9.0,
  loses a pool slot for good: after ``max_connections`` of them every command on that
  client hangs.  So :meth:`RedisClient.blpop` and :meth:`RedisClient.xread` run in a
  shielded scope with a short server-side timeout (at most :data:`MAX_BLOCK` seconds), and
  their callers check a stop flag between calls.
* **A slot lost anyway is not a hang.**  A blocked connection the server drops (``CLIENT
  KILL``, a failover, a timeout) loses its slot too.  Blocking calls therefore get a client
  of their own (the *lane*), without automatic re-sends, which is rebuilt after any such
  failure once its calls in flight have returned.  Every pool has a timeout, so a slot
  shortage is an error, never a hang; the main client is rebuilt after a timeout too.

The scripts (:meth:`RedisClient.run`, every call on a job's path) go through a lean
pipelined connection of our own (:mod:`._pipe`: hiredis parses and packs RESP over a Trio
socket), measured at about a sixth of coredis' client CPU per call; like coredis it
pipelines concurrent calls on one socket, times out, and re-sends a command after a lost
connection, which is why every script is idempotent.  A ``rediss://`` URL runs the scripts
on coredis' main client instead.  The few other reads go through that main client, whose
connections are shared by all tasks (coredis releases a connection as soon as a
non-blocking command is written) and which re-sends too.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast
from urllib.parse import urlparse

import coredis
import trio
from coredis.commands.script import Script
from coredis.exceptions import (
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.response.types import StreamEntry
from coredis.retry import NoRetryPolicy

from .._config import redacted
from .._exceptions import TrioQueueError
from ._pipe import REFUSALS, Endpoint, Lost, NoScript, Pipe, Refused, pack


class _OneLine(logging.Filter):
    """coredis logs a failed connection attempt (a Redis that does not answer its
    handshake within ``connect_timeout``: a stopped or partitioned server) at ERROR with
    its whole exception group, ~100 lines, several times per outage.  The node says what
    matters itself (``redis unavailable (...)``, :mod:`._outage`): these become one
    WARNING line naming the cause.  Nothing else of coredis' is touched."""

    MESSAGES = frozenset(("Connection attempt failed unexpectedly!",
                          "Connection closed unexpectedly!"))

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.msg in self.MESSAGES:
            exc = record.exc_info[1]
            record.msg = f"{record.msg} ({_cause(exc)})"
            record.exc_info = record.exc_text = None
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _cause(exc: BaseException | None) -> str:
    while exc is not None and not isinstance(exc, trio.Cancelled):
        if exc.__cause__ is not None:
            exc = exc.__cause__
        elif isinstance(exc, BaseExceptionGroup):
            exc = exc.exceptions[-1]
        else:
            break
    if exc is None or isinstance(exc, trio.Cancelled):
        return "cut short: no answer within connect_timeout, or the client closed"
    return f"{type(exc).__name__}: {exc}"


if not any(isinstance(f, _OneLine) for f in logging.getLogger("coredis").filters):
    logging.getLogger("coredis").addFilter(_OneLine())

MAX_BLOCK = 5.0
"""Longest server-side timeout a blocking call may ask for (seconds): the time a caller
can be kept in a shielded scope."""


class RedisUnavailable(TrioQueueError):
    """Redis could not be reached, or did not answer in time (after coredis' re-sends)."""


class RedisNotSent(RedisUnavailable):
    """No connection to Redis took the call (refused, unreachable, no connection in
    time, the handshake failed): it was never sent, so nothing was done."""


class RedisRefused(RedisUnavailable):
    """Redis refused a call before running any of it (out of memory, loading its data,
    busy, a read-only replica: :data:`~trioqueue._redis._pipe.REFUSALS`).  Nothing was
    done; callers retry it as they would a lost connection, but know it was not applied.
    ``writes``: only writes are refused (:data:`WRITE_REFUSALS`): reads still answer."""

    def __init__(self, message: str, *, writes: bool = False) -> None:
        super().__init__(message)
        self.writes = writes


def at_open(exc: BaseException, url: str, queue: str) -> RedisUnavailable | None:
    """``exc`` as ``open_queue`` raises it, if it is a :class:`RedisUnavailable`: its
    type and attributes kept, its message naming the Redis and queue it could not open,
    the URL's password shown as ``***`` (the client's own messages name at most a host
    and port); else ``None``."""
    if not isinstance(exc, RedisUnavailable):
        return None

    named = copy.copy(exc)
    named.args = (f"cannot use redis at {redacted(url)} (queue {queue!r}): "
                  f"{str(exc).removeprefix('redis: ')}",)
    return named


WRITE_REFUSALS = frozenset(("OOM", "READONLY", "NOREPLICAS"))
"""Refusals of writes only (over ``maxmemory``, a read-only replica, too few replicas):
a call that wrote nothing still succeeds meanwhile, so its answer does not mean that
Redis takes the node's calls again (:class:`~trioqueue._redis._outage.Outage`)."""


class Waiting:
    """Whether script calls wait for Redis, and since when it last answered one.

    ``calls``: script calls in flight (:meth:`RedisClient.run`: sent, being re-sent or
    connecting); ``since``: while there are any, when Redis last answered one of them or
    (none answered since) when the first was sent, on trio's clock.  At most one clock
    read per call, none per job.  Blocking calls (BLPOP, XREAD BLOCK) are not counted:
    they wait by design."""

    __slots__ = ("calls", "since")

    def __init__(self) -> None:
        self.calls = 0
        self.since = 0.0

    def stalled(self, now: float) -> float:
        """Seconds the calls in flight have waited with no answer from Redis (0 if none
        waits)."""
        return now - self.since if self.calls else 0.0


def _refused(message: str, exc: ResponseError) -> RedisRefused:
    code = str(exc).partition(" ")[0]
    return RedisRefused(message, writes=code in WRITE_REFUSALS
                        or isinstance(exc, ReadOnlyError))


class _Holder:
    """One coredis client, rebuilt on request once no call is using it.

    :meth:`run` is a task of the adapter's nursery: it enters the client's context (its
    pool's task group lives there), hands the client out, and when :meth:`broken` was
    called, stops handing it out, waits until the calls in flight returned, exits it and
    enters a fresh one.
    """

    def __init__(self, make: Callable[[], coredis.Redis[str]]) -> None:
        self._make = make
        self._client: coredis.Redis[str] | None = None
        self._ready = trio.Event()
        self._broken = trio.Event()
        self._idle = trio.Event()
        self.inflight = 0
        self.rebuilds = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        while True:
            async with self._make() as client:
                self._client = client
                self._ready.set()
                if not started:
                    started = True
                    task_status.started()
                await self._broken.wait()
                self._client = None
                self._ready = trio.Event()
                while self.inflight:
                    self._idle = trio.Event()
                    await self._idle.wait()
            self._broken = trio.Event()
            self.rebuilds += 1

    async def acquire(self) -> coredis.Redis[str]:
        """The current client, counted in flight until :meth:`release`."""
        while self._client is None:
            await self._ready.wait()
        self.inflight += 1
        return self._client

    def release(self) -> None:
        self.inflight -= 1
        if not self.inflight:
            self._idle.set()

    def broken(self) -> None:
        """Replace the client once its calls in flight have returned."""
        self._broken.set()

    async def drained(self) -> None:
        while self.inflight:
            self._idle = trio.Event()
            await self._idle.wait()


class LuaScript:
    """A script for :meth:`RedisClient.run`: its text and SHA1 (EVALSHA, and EVAL once
    after NOSCRIPT, which loads it)."""

    __slots__ = ("_coredis", "sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode("utf-8")).hexdigest()
        self._coredis: Script[str] | None = None

    def on_coredis(self) -> Script[str]:
        """The same script as a coredis object (for a client without the lean pipe)."""
        if self._coredis is None:
            self._coredis = Script[str](None, self.text)
        return self._coredis


def lua_script(text: str) -> LuaScript:
    """A script object for :meth:`RedisClient.run` (EVALSHA, loaded again on NOSCRIPT)."""
    return LuaScript(text)


class RedisClient:
    """The few Redis calls trioqueue makes, over coredis, by the rules above.

    Open it with :func:`connect`.  Errors reaching Redis raise :class:`RedisUnavailable`;
    a script's own error raises ``coredis.exceptions.ResponseError`` (a bug, not weather).
    """

    def __init__(self, main: _Holder, lane: _Holder, pipe: Pipe | None = None) -> None:
        self._main = main
        self._lane = lane
        self._pipe = pipe
        self.waiting = Waiting()
        """The script calls in flight and when Redis last answered one (a Redis that
        hangs: SIGSTOP, a network partition, shows here long before a timeout)."""

    @property
    def rebuilds(self) -> tuple[int, int]:
        """How many times the main client and the blocking lane were rebuilt."""
        return self._main.rebuilds, self._lane.rebuilds

    @property
    def pipe_connects(self) -> int:
        """How many connections the scripts' pipe opened (1 until one is lost)."""
        return 0 if self._pipe is None else self._pipe.connects

    async def run(
        self, script: LuaScript, keys: Sequence[str], args: Sequence[str | int]
    ) -> Any:
        """Run a Lua script (EVALSHA) and return its raw reply.

        A script's own error raises ``coredis.exceptions.ResponseError`` (as on coredis);
        a NOSCRIPT answer (the server's cache was flushed, a failover) sends the script
        once with EVAL, which loads it.
        """
        waiting = self.waiting
        if not waiting.calls:
            waiting.since = trio.current_time()
        waiting.calls += 1
        answered = False
        try:
            reply = await self._run(script, keys, args)
            answered = True
        except RedisUnavailable as exc:
            answered = isinstance(exc, RedisRefused)  # (Redis answered: a refusal)
            raise
        except ResponseError:
            answered = True  # a script's own error
            raise
        finally:
            waiting.calls -= 1
            if answered and waiting.calls:
                waiting.since = trio.current_time()
        return reply

    async def _run(
        self, script: LuaScript, keys: Sequence[str], args: Sequence[str | int]
    ) -> Any:
        pipe = self._pipe
        if pipe is None:
            return await self._run_on_coredis(script, keys, args)
        try:
            reply = await pipe.execute(pack(("EVALSHA", script.sha, len(keys), *keys, *args)))
            if isinstance(reply, NoScript):
                reply = await pipe.execute(pack(("EVAL", script.text, len(keys), *keys,
                                                 *args)))
            if isinstance(reply, ResponseError):
                if isinstance(reply, Refused):
                    raise _refused(f"redis: {reply}", reply)
                raise reply
        except Lost as exc:
            if not exc.sent:
                raise RedisNotSent(f"redis: {exc}") from None
            raise RedisUnavailable(f"redis: {exc}") from None
        return reply

    async def _run_on_coredis(
        self, script: LuaScript, keys: Sequence[str], args: Sequence[str | int]
    ) -> Any:
        client = await self._main.acquire()
        try:
            return await script.on_coredis()(keys=keys, args=args, client=client)
        except TimeoutError as exc:
            self._main.broken()
            raise RedisUnavailable(f"redis: no answer in time ({exc})") from None
        except RedisConnectionError as exc:
            raise RedisUnavailable(f"redis: {exc}") from None
        except ResponseError as exc:
            if _refusal(exc):
                raise _refused(f"redis: {exc}", exc) from None
            raise
        finally:
            self._main.release()

    async def blpop(self, keys: Sequence[str], timeout: float) -> tuple[str, str] | None:
        """BLPOP with a server-side ``timeout`` (seconds), never cancelled in flight.

        Returns ``(key, value)`` or ``None`` when the timeout passed.  The calling task
        cannot be cancelled for up to ``timeout`` (plus a round trip).
        """
        _check_block(timeout)
        client = await self._lane.acquire()
        try:
            with trio.CancelScope(shield=True):
                reply = await client.blpop(keys, timeout)
        except (RedisConnectionError, TimeoutError) as exc:
            self._lane.broken()
            raise RedisUnavailable(f"redis: blocking call lost ({exc})") from None
        except ResponseError as exc:
            if _refusal(exc):  # LOADING after a restart, say
                raise _refused(f"redis: {exc}", exc) from None
            raise
        finally:
            self._lane.release()
        if reply is None:
            return None
        return reply[0], reply[1]

    async def xread(
        self, key: str, after: str, count: int, block_ms: int
    ) -> list[tuple[str, Mapping[str, str]]]:
        """XREAD COUNT ``count`` BLOCK ``block_ms`` from one stream, after id ``after``;
        never cancelled in flight (see :meth:`blpop`)."""
        _check_block(block_ms / 1000)
        client = await self._lane.acquire()
        try:
            with trio.CancelScope(shield=True):
                reply = await client.xread({key: after}, count=count, block=block_ms)
        except (RedisConnectionError, TimeoutError) as exc:
            self._lane.broken()
            raise RedisUnavailable(f"redis: blocking call lost ({exc})") from None
        except ResponseError as exc:
            if _refusal(exc):  # LOADING after a restart, say
                raise _refused(f"redis: {exc}", exc) from None
            raise
        finally:
            self._lane.release()
        if not reply:
            return []
        return [_entry(e) for e in reply.get(key, ())]

    async def last_entry(self, key: str) -> tuple[str, Mapping[str, str]] | None:
        """The newest entry of a stream (XREVRANGE + - COUNT 1), or ``None``."""
        client = await self._main.acquire()
        try:
            entries = await client.xrevrange(key, "+", "-", count=1)
        except TimeoutError as exc:
            self._main.broken()
            raise RedisUnavailable(f"redis: no answer in time ({exc})") from None
        except RedisConnectionError as exc:
            raise RedisUnavailable(f"redis: {exc}") from None
        except ResponseError as exc:
            if _refusal(exc):
                raise _refused(f"redis: {exc}", exc) from None
            raise
        finally:
            self._main.release()
        if not entries:
            return None
        return _entry(entries[0])

    async def ping(self) -> str:
        """Round trip to the server, its version (``"7.0.15"``); raises
        :class:`RedisUnavailable` if it fails."""
        client = await self._main.acquire()
        try:
            info = await client.info("server")
            return str(info.get("redis_version", ""))
        except TimeoutError as exc:
            self._main.broken()
            raise RedisUnavailable(f"redis: no answer in time ({exc})") from None
        except RedisError as exc:
            raise RedisUnavailable(f"redis: {exc}") from None
        finally:
            self._main.release()

    async def config_limits(self) -> tuple[int, int] | None:
        """The server's ``proto-max-bulk-len`` and ``client-query-buffer-limit`` (bytes),
        or ``None`` when it will not say (``CONFIG`` renamed or not allowed, as managed
        services do); raises :class:`RedisUnavailable` if it does not answer."""
        client = await self._main.acquire()
        try:
            got = await client.config_get(["proto-max-bulk-len", "client-query-buffer-limit"])
        except TimeoutError as exc:
            self._main.broken()
            raise RedisUnavailable(f"redis: no answer in time ({exc})") from None
        except RedisConnectionError as exc:
            raise RedisUnavailable(f"redis: {exc}") from None
        except RedisError:  # (refused: an unknown command, no permission)
            return None
        finally:
            self._main.release()
        try:
            return int(got["proto-max-bulk-len"]), int(got["client-query-buffer-limit"])
        except (KeyError, ValueError, TypeError):
            return None


def major_version(version: str) -> int:
    """The major version of ``version`` (``"7.0.15"``: 7); 0 when it does not read (a
    server that says nothing of it: taken as too old)."""
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


_REFUSED_ON_COREDIS = (AuthorizationError, BusyLoadingError, ClusterDownError,
                       ReadOnlyError, TryAgainError)
"""What coredis raises for the :data:`~trioqueue._redis._pipe.REFUSALS` it knows by code
(it takes the code off the message); the others keep theirs."""


def _refusal(exc: ResponseError) -> bool:
    """Whether coredis' ``exc`` is a refusal before anything ran."""
    return isinstance(exc, _REFUSED_ON_COREDIS) or str(exc).partition(" ")[0] in REFUSALS


def _entry(e: StreamEntry) -> tuple[str, Mapping[str, str]]:
    # decode_responses=True: ids, fields and values are str.
    return cast(str, e.identifier), cast(Mapping[str, str], e.field_values)


def _check_block(seconds: float) -> None:
    if not (0 < seconds <= MAX_BLOCK) or math.isnan(seconds):
        raise ValueError(f"timeout: expected 0 < seconds <= {MAX_BLOCK}, got {seconds!r}")


@asynccontextmanager
async def connect(
    url: str = "redis://127.0.0.1:6379/0",
    *,
    client_name: str = "trioqueue",
    max_connections: int = 16,
    blocking_connections: int = 8,
    pool_timeout: float = 5.0,
    stream_timeout: float = 15.0,
    connect_timeout: float = 5.0,
) -> AsyncIterator[RedisClient]:
    """Open the adapter on ``url`` (``redis://``, ``rediss://`` or ``unix://``).

    ``max_connections`` bounds the main pool and ``blocking_connections`` the lane's (one
    connection per blocking call in flight); ``pool_timeout`` is how long a call waits for
    a free connection before :class:`RedisUnavailable`.  ``stream_timeout`` bounds every
    reply wait (it must exceed :data:`MAX_BLOCK`).  Nothing connects until the first call.
    On exit, blocking calls still in flight are given ``MAX_BLOCK`` + 1 s to return.
    """
    scheme = urlparse(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"redis_url: expected redis://, rediss:// or unix://, got {url!r}")
    if stream_timeout <= MAX_BLOCK:
        raise ValueError(f"stream_timeout: must exceed {MAX_BLOCK} s, got {stream_timeout!r}")
    for name, value in (("max_connections", max_connections),
                        ("blocking_connections", blocking_connections)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")

    def make_main() -> coredis.Redis[str]:
        return coredis.Redis.from_url(
            url, decode_responses=True, pool_timeout=pool_timeout,
            max_connections=max_connections, stream_timeout=stream_timeout,
            connect_timeout=connect_timeout, client_name=client_name,
        )

    def make_lane() -> coredis.Redis[str]:
        return coredis.Redis.from_url(
            url, decode_responses=True, pool_timeout=pool_timeout,
            max_connections=blocking_connections, stream_timeout=stream_timeout,
            connect_timeout=connect_timeout, client_name=client_name,
            retry_policy=NoRetryPolicy(),
        )

    main, lane = _Holder(make_main), _Holder(make_lane)
    async with trio.open_nursery() as nursery:
        await nursery.start(main.run)
        await nursery.start(lane.run)
        pipe = None
        if scheme != "rediss":
            pipe = Pipe(Endpoint(url, client_name), nursery, connect_timeout=connect_timeout,
                        stream_timeout=stream_timeout)
        try:
            yield RedisClient(main, lane, pipe)
        finally:
            with trio.move_on_after(MAX_BLOCK + 1.0) as scope:
                scope.shield = True
                await lane.drained()
            if pipe is not None:
                pipe.close()
            nursery.cancel_scope.cancel()
