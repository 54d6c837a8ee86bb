"""``GET /readyz``: 503 while the queue cannot take jobs (its store fails to write, Redis
does not answer, shutdown), 200 again once it can; ``/healthz`` (liveness) stays 200
meanwhile.  Each failure is a real one: a ``trioqueue serve`` whose file size limit is
lowered under it (SQLite's writes fail as on a full disk), a redis-server of the test's
own killed and started again."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import trioqueue
from trioqueue import QueueConfig, TaskRegistry
from trioqueue.client import Client
from trioqueue.server import App, ServerSettings, ServerState

from .redis_util import unique
from .test_redis_chaos import until
from .test_redis_dataloss import empty_redis
from .test_server_app import call

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def _serve(db: Path, token: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "trioqueue", "serve", "--port", "0", "--db", str(db),
         "--token", token],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )


async def _poll(http: httpx.AsyncClient, want: int) -> httpx.Response:
    """GET /readyz until it answers ``want`` (the store tries a failed write again about
    once a second: another process's progress, which cannot be awaited)."""
    with trio.fail_after(30):
        while True:
            got = await http.get("/readyz")
            if got.status_code == want:
                return got
            await trio.sleep(0.05)


async def test_a_store_that_cannot_write_makes_the_server_unready_until_it_can(
    tmp_path: Path,
) -> None:
    db = tmp_path / "q.db"
    token = "s3cret"
    server = _serve(db, token)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # "trioqueue serving on http://127.0.0.1:PORT ..."
        url = next(word for word in line.split() if word.startswith("http://"))
        auth = {"authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=url.rstrip("/.,"), headers=auth) as http:
            ok = await http.get("/readyz")
            assert (ok.status_code, ok.json()) == (200, {"status": "ok"})
            # Writes fail from now on, as on a full disk (root cannot pass this limit).
            size = db.stat().st_size + (tmp_path / "q.db-wal").stat().st_size
            resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
            body = {"task": "echo", "payload": {"pad": "x" * 200_000}}
            for _ in range(50):
                if (await http.post("/jobs", json=body)).status_code == 500:
                    break
            else:
                pytest.fail("no write failed under the file size limit")
            down = await _poll(http, 503)
            assert down.json()["status"] == "unavailable"
            assert down.json()["reason"].startswith("the store fails to write: ")
            assert str(db) in down.json()["reason"]
            async with Client(str(http.base_url), token=token) as client:
                assert (await client.unavailable()) == down.json()["reason"]
            async with Client(str(http.base_url)) as anonymous_client:
                assert (await anonymous_client.unavailable()) == "unavailable"
            # Without the token: the status, not the reason (it names a file).
            async with httpx.AsyncClient(base_url=http.base_url) as anonymous:
                bare = await anonymous.get("/readyz")
                assert (bare.status_code, bare.json()) == (503, {"status": "unavailable"})
                assert (await anonymous.get("/healthz")).status_code == 200  # alive
            resource.prlimit(server.pid, resource.RLIMIT_FSIZE,
                             (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            back = await _poll(http, 200)
            assert back.json() == {"status": "ok"}
            async with Client(str(http.base_url), token=token) as client:
                assert (await client.unavailable()) is None
            assert (await http.post("/jobs", json={"task": "echo"})).status_code == 202
    finally:
        server.kill()
        server.wait()


async def test_redis_not_answering_makes_the_server_unready_until_it_does(
    tmp_path: Path,
) -> None:
    reg = TaskRegistry()

    @reg.task
    async def echo(job: trioqueue.Job) -> Any:
        return job.payload

    async with empty_redis(tmp_path) as redis:
        config = QueueConfig(redis_url=redis.url, queue_name=unique("ready"), prefetch=0)
        async with trioqueue.open_queue(reg, config) as q:
            app = App(q, ServerSettings(token="t"))
            auth = {"authorization": "Bearer t"}
            assert await call(app, "GET", "/readyz") == (
                200, {b"content-type": b"application/json", b"content-length": b"15"},
                {"status": "ok"})
            redis.kill()

            async def refused() -> str | None:
                return q.unavailable

            reason = await until(refused)
            assert reason.startswith("redis unavailable for ")
            status, _, body = await call(app, "GET", "/readyz", headers=auth)
            assert (status, body["status"]) == (503, "unavailable")
            assert body["reason"].startswith("redis unavailable for ")
            # A page rebound to this server (its Host a name the server does not answer
            # to) gets the status, never the reason (Redis' address); nor on a server
            # without a token, where every request may read the queue.
            rebound = {**auth, "host": "rebind.evil.example"}
            for where in (app, App(q, ServerSettings())):
                status, _, body = await call(where, "GET", "/readyz", headers=rebound)
                assert (status, body) == (503, {"status": "unavailable"})
                status, _, body = await call(where, "GET", "/readyz", headers=auth)
                assert body["reason"].startswith("redis unavailable for ")
            assert (await call(app, "GET", "/healthz"))[0] == 200
            await redis.start()

            async def answering() -> bool | None:
                return True if q.unavailable is None else None

            await until(answering)
            status, _, body = await call(app, "GET", "/readyz")
            assert (status, body) == (200, {"status": "ok"})


async def test_readyz_says_shutting_down_once_the_queue_closes() -> None:
    reg = TaskRegistry()
    async with trioqueue.open_queue(reg, QueueConfig(workers=1)) as q:
        state = ServerState()
        app = App(q, state=state)
        assert (await call(app, "GET", "/readyz"))[2] == {"status": "ok"}
        state.closing = True  # what serve sets when the shutdown begins
        status, _, body = await call(app, "GET", "/readyz", headers={"host": "anything"})
        assert (status, body) == (503, {"status": "shutting_down"})
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            assert await Client("http://127.0.0.1", http=http).unavailable() == "shutting down"

