"""Helpers for tests against the real Redis (never a mock).

``TRIOQUEUE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) names the server;
only a loopback address is accepted.  An unreachable Redis fails the test: these tests do
not skip.  Every test uses a queue name of its own (a uuid) and deletes its keys at the
end (``SCAN`` + ``DEL`` on ``tq:{<name>}:*``), so tests can run beside each other and
beside other users of the same Redis.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlparse

import coredis
import trio

REDIS_URL = os.environ.get("TRIOQUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_host = urlparse(REDIS_URL).hostname
if _host not in ("127.0.0.1", "localhost", "::1"):
    raise RuntimeError(f"TRIOQUEUE_TEST_REDIS_URL: only a loopback Redis, got {REDIS_URL!r}")


async def poll(fn: Any, timeout: float = 5.0) -> Any:
    """Call ``fn`` until it returns something true; for what waits on Redis' clock."""
    with trio.fail_after(timeout):
        while True:
            got = await fn()
            if got:
                return got
            await trio.sleep(0.01)


def free_port() -> int:
    """A loopback TCP port nothing listens on now (for a redis-server of a test's own)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique(prefix: str = "t") -> str:
    """A fresh queue (or client) name."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def admin() -> AsyncIterator[coredis.Redis[str]]:
    """A plain coredis client for the test's own look-ups and cleanup."""
    async with coredis.Redis.from_url(REDIS_URL, decode_responses=True, pool_timeout=5.0,
                                      stream_timeout=15.0) as client:
        yield client


async def delete_queue(client: coredis.Redis[str], queue: str) -> int:
    """Delete every key of ``queue``; returns how many there were."""
    keys = [k async for k in client.scan_iter(match=f"tq:{{{queue}}}:*", count=1000)]
    for i in range(0, len(keys), 500):
        await client.delete(keys[i : i + 500])
    return len(keys)


async def kill_clients(client: coredis.Redis[str], name: str, cmd: str | None = None) -> int:
    """CLIENT KILL every connection named ``name`` (optionally only those running
    ``cmd``, e.g. ``"blpop"``); returns how many."""
    killed = 0
    for info in await client.client_list():
        entry: dict[str, Any] = dict(info)
        if entry.get("name") == name and (cmd is None or entry.get("cmd") == cmd):
            killed += int(await client.client_kill(identifier=int(entry["id"])))
    return killed


async def blocked_clients(client: coredis.Redis[str], name: str, cmd: str) -> int:
    """How many connections named ``name`` are in command ``cmd`` right now."""
    return sum(
        1 for info in await client.client_list()
        if dict(info).get("name") == name and dict(info).get("cmd") == cmd
    )
