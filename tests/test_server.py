"""End to end: a real ``trioqueue serve`` subprocess on 127.0.0.1, spoken to over HTTP.

One server per module (a fixture) keeps this fast; tests that stop or reconfigure a server
start their own.  Every status code of API.md's table is asked for here.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed

from trioqueue.client import open_websocket

START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0


@attrs.define
class Server:
    proc: subprocess.Popen[str]
    url: str
    log: Path
    captured: str | None = None
    """The log, kept when the server's temporary directory goes."""

    @property
    def ws(self) -> str:
        return "ws" + self.url[len("http"):] + "/events"

    def stderr(self) -> str:
        if self.captured is not None:
            return self.captured
        return self.log.read_text(errors="replace")

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` (None: it was sent already) and return the exit status."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the server did not exit within {timeout} s\n{self.stderr()}")


@contextmanager
def running_server(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
                   ) -> Iterator[Server]:
    """``trioqueue serve --port 0 ARGS`` until the block ends (then SIGTERM, then kill)."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        for name in ("TRIOQUEUE_TOKEN", "TRIOQUEUE_PORT", "PORT", "TRIOQUEUE_HOST"):
            if env is None or name not in env:
                full_env.pop(name, None)
        with open(log, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "trioqueue", "serve", "--port", "0", *args],
                stdout=subprocess.PIPE, stderr=err, text=True, env=full_env, cwd=cwd,
            )
        srv = None
        try:
            srv = Server(proc, _read_url(proc, log), log)
            yield srv
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
            if srv is not None:
                srv.captured = log.read_text(errors="replace")


def _read_url(proc: subprocess.Popen[str], log: Path) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    poller = select.poll()  # (not select(): a descriptor past 1023 is fine)
    poller.register(proc.stdout.fileno(), select.POLLIN)
    while time.monotonic() < deadline:
        if poller.poll(200):
            line = proc.stdout.readline()
            if line.startswith("trioqueue serving on "):
                return line.split()[-1]
            if not line:
                break
    proc.kill()
    proc.wait()
    pytest.fail(f"trioqueue serve did not start:\n{log.read_text()}")


def wait_for(client: httpx.Client, job_id: str, statuses: set[str], within: float = 10.0
             ) -> dict[str, Any]:
    """Poll GET /jobs/{id} until its status is one of ``statuses`` (bounded)."""
    deadline = time.monotonic() + within
    while True:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} still {job['status']} after {within} s")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running_server("--workers", "4", "--event-buffer", "5000",
                        env={"TRIOQUEUE_RETRY_BASE": "0.05"}) as srv:
        yield srv


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10.0) as client:
        yield client


JOB_KEYS = {"id", "task", "payload", "priority", "status", "attempts", "max_retries",
            "created_at", "scheduled_for", "started_at", "finished_at", "result", "error"}


# ---------------------------------------------------------------------------- POST /jobs


def test_post_new_job_202_then_it_completes(http: httpx.Client) -> None:
    response = http.post("/jobs", json={"task": "echo", "payload": {"hi": 1},
                                         "priority": "high"})
    assert response.status_code == 202
    assert response.headers["content-type"] == "application/json"
    job = response.json()
    assert JOB_KEYS <= set(job)
    assert job["task"] == "echo"
    assert job["priority"] == "high"
    assert job["status"] == "queued"
    assert job["created_at"].endswith("Z")
    done = wait_for(http, job["id"], {"completed"})
    assert done["result"] == {"hi": 1}
    assert done["attempts"] == 1
    assert done["finished_at"] is not None


def test_post_same_id_same_body_200_other_body_409(http: httpx.Client) -> None:
    body = {"task": "echo", "payload": [1, 2], "id": "idem-1"}
    assert http.post("/jobs", json=body).status_code == 202
    again = http.post("/jobs", json=body)
    assert again.status_code == 200
    assert again.json()["id"] == "idem-1"
    other = http.post("/jobs", json={**body, "payload": [3]})
    assert other.status_code == 409
    assert "idem-1" in other.json()["error"]
    assert http.post("/jobs", json={**body, "task": "sleep"}).status_code == 409


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"{not json", "body"),
        (b"", "body"),
        (b"[1, 2]", "body"),
        (b'{"payload": 1}', "task"),
        (b'{"task": 5}', "task"),
        (b'{"task": "echo", "priority": "urgent"}', "priority"),
        (b'{"task": "echo", "delay": -1}', "delay"),
        (b'{"task": "echo", "timeout": 0}', "timeout"),
        (b'{"task": "echo", "max_retries": -1}', "max_retries"),
        (b'{"task": "echo", "max_retries": 1.5}', "max_retries"),
        (b'{"task": "echo", "id": "has space"}', "id"),
        (b'{"task": "echo", "id": 7}', "id"),
        (b'{"task": "echo", "payload": NaN}', "body"),
        (b'{"task": "echo", "colour": "red"}', "colour"),
        (b'{"task": "echo", "task": "fail"}', "duplicate key 'task'"),
        (b'{"task": "echo", "payload": {"a": 1, "b": 2, "a": 3}}', "duplicate key 'a'"),
    ],
)
def test_post_bad_body_400_names_the_field(http: httpx.Client, content: bytes, needle: str
                                           ) -> None:
    response = http.post("/jobs", content=content,
                         headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]


def test_post_needs_json_content_type(http: httpx.Client) -> None:
    response = http.post("/jobs", content=b'{"task": "echo"}',
                         headers={"content-type": "text/plain"})
    assert response.status_code == 400
    assert "content-type" in response.json()["error"]


def test_post_unknown_task_404(http: httpx.Client) -> None:
    response = http.post("/jobs", json={"task": "no_such_task"})
    assert response.status_code == 404
    assert "no_such_task" in response.json()["error"]


def test_post_over_body_limit_413(http: httpx.Client) -> None:
    big = {"task": "echo", "payload": "x" * (1024 * 1024)}
    response = http.post("/jobs", json=big)
    assert response.status_code == 413
    assert "limit" in response.json()["error"]
    # Streamed without a content-length, the limit holds as well.
    def chunks() -> Iterator[bytes]:
        yield b'{"task": "echo", "payload": "'
        for _ in range(17):
            yield b"y" * 65536
        yield b'"}'
    streamed = http.post("/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


# ---------------------------------------------------------------------------- reads


def test_get_job_200_and_404(http: httpx.Client) -> None:
    job = http.post("/jobs", json={"task": "echo", "id": "get-me"}).json()
    assert http.get(f"/jobs/{job['id']}").status_code == 200
    missing = http.get("/jobs/does-not-exist")
    assert missing.status_code == 404
    assert "does-not-exist" in missing.json()["error"]


def test_list_jobs_by_status_and_limit(http: httpx.Client) -> None:
    failed = http.post("/jobs", json={"task": "fail", "max_retries": 0}).json()
    wait_for(http, failed["id"], {"failed"})
    response = http.get("/jobs", params={"status": "failed", "limit": 100})
    assert response.status_code == 200
    jobs = response.json()["jobs"]
    assert failed["id"] in {j["id"] for j in jobs}
    assert all(j["status"] == "failed" for j in jobs)
    assert len(http.get("/jobs", params={"limit": 1}).json()["jobs"]) == 1
    assert http.get("/jobs", params={"status": "bogus"}).status_code == 400
    assert http.get("/jobs", params={"limit": "0"}).status_code == 400
    assert http.get("/jobs", params={"limit": "many"}).status_code == 400


# ---------------------------------------------------------------------------- cancel, retry


def test_cancel_200_then_409_and_404(http: httpx.Client) -> None:
    job = http.post("/jobs", json={"task": "echo", "delay": 60}).json()
    assert job["status"] == "scheduled"
    cancelled = http.post(f"/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert http.post(f"/jobs/{job['id']}/cancel").status_code == 409
    assert http.post("/jobs/nope/cancel").status_code == 404


def test_cancel_a_running_job(http: httpx.Client) -> None:
    job = http.post("/jobs", json={"task": "sleep", "payload": {"seconds": 30}}).json()
    wait_for(http, job["id"], {"processing"})
    cancelled = http.post(f"/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"


def test_retry_202_then_409_and_404(http: httpx.Client) -> None:
    job = http.post("/jobs", json={"task": "flaky", "payload": {"fail_times": 1},
                                   "max_retries": 0}).json()
    failed = wait_for(http, job["id"], {"failed"})
    assert "planned failures" in failed["error"]
    retried = http.post(f"/jobs/{job['id']}/retry")
    assert retried.status_code == 202
    assert retried.json()["status"] in ("queued", "processing", "completed", "failed")
    # retry() resets attempts, so flaky fails its first attempt again: FAILED once more.
    wait_for(http, job["id"], {"failed"})
    done = http.post("/jobs", json={"task": "echo"}).json()
    wait_for(http, done["id"], {"completed"})
    assert http.post(f"/jobs/{done['id']}/retry").status_code == 409
    assert http.post("/jobs/nope/retry").status_code == 404


def test_retries_with_backoff_then_completed(http: httpx.Client) -> None:
    job = http.post("/jobs", json={"task": "flaky", "payload": {"fail_times": 2},
                                   "max_retries": 3}).json()
    done = wait_for(http, job["id"], {"completed"})
    assert done["attempts"] == 3
    assert done["result"] == {"attempts": 3}


# ---------------------------------------------------------------------------- the rest


def test_metrics_json_and_prometheus(http: httpx.Client) -> None:
    data = http.get("/metrics").json()
    for key in ("enqueued", "started", "completed", "failed", "retried", "cancelled",
                "rejected", "queued", "scheduled", "processing", "workers", "busy_workers",
                "utilization", "wait_p50", "wait_p99", "run_p50", "run_p99"):
        assert key in data
    assert set(data["queued"]) == {"high", "medium", "low"}
    assert data["workers"] == 4
    text = http.get("/metrics", params={"format": "prometheus"})
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    assert "trioqueue_jobs_enqueued_total" in text.text
    by_accept = http.get("/metrics", headers={"accept": "text/plain"})
    assert by_accept.headers["content-type"].startswith("text/plain")
    assert http.get("/metrics", params={"format": "xml"}).status_code == 400


def test_healthz_and_openapi(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    doc = http.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/jobs", "/jobs/{id}", "/jobs/{id}/cancel", "/jobs/{id}/retry", "/metrics",
            "/healthz", "/openapi.json"} <= set(doc["paths"])


def test_unknown_route_404_and_wrong_method_405(http: httpx.Client) -> None:
    assert http.get("/nowhere").status_code == 404
    wrong = http.delete("/jobs")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET, HEAD, POST"
    assert "error" in wrong.json()
    assert http.get("/events").status_code == 426


def test_cross_origin_browser_requests_are_refused(http: httpx.Client) -> None:
    response = http.post("/jobs", json={"task": "echo"},
                         headers={"origin": "https://evil.example"})
    assert response.status_code == 403


# ---------------------------------------------------------------------------- websocket


async def _messages(ws: Any, until: Any, within: float = 10.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    with trio.fail_after(within):
        while not until(got):
            got.append(json.loads(await ws.get_message()))
    return got


async def test_events_for_a_job_posted_after_connecting(server: Server) -> None:
    async with open_websocket(server.ws) as ws, httpx.AsyncClient(
        base_url=server.url
    ) as client:
        job = (await client.post("/jobs", json={"task": "echo", "payload": 1})).json()
        got = await _messages(ws, lambda g: any(
            e.get("job_id") == job["id"] and e["type"] == "completed" for e in g))
    mine = [e["type"] for e in got if e.get("job_id") == job["id"]]
    assert mine == ["enqueued", "started", "completed"]
    completed = next(e for e in got if e.get("job_id") == job["id"] and e["type"] == "completed")
    for key in ("seq", "type", "job_id", "task", "priority", "status", "attempt", "at",
                "worker", "error", "duration"):
        assert key in completed
    assert completed["status"] == "completed"


async def test_event_filters_by_type_and_job_id(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        url = f"{server.ws}?types=completed,failed&job_id=filtered-2"
        async with open_websocket(url) as ws:
            await client.post("/jobs", json={"task": "echo", "id": "filtered-1"})
            await client.post("/jobs", json={"task": "fail", "id": "filtered-2",
                                             "max_retries": 1})
            got = await _messages(ws, lambda g: len(g) >= 1)
    assert [(e["type"], e["job_id"]) for e in got] == [("failed", "filtered-2")]
    assert got[0]["attempt"] == 2
    assert "on purpose" in got[0]["error"]


async def test_event_snapshot_first(server: Server) -> None:
    async with open_websocket(f"{server.ws}?snapshot=true") as ws:
        first = json.loads(await ws.get_message())
    assert first["type"] == "metrics"
    assert "completed" in first["metrics"]


@pytest.mark.parametrize("query", ["types=completed,bogus", "snapshot=maybe", "job_id=,"])
async def test_bad_event_filter_closes_1008(server: Server, query: str) -> None:
    async with open_websocket(f"{server.ws}?{query}") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            with trio.fail_after(5):
                await ws.get_message()
    assert closed.value.reason is not None
    assert closed.value.reason.code == 1008
    assert closed.value.reason.reason


# ---------------------------------------------------------------------------- token auth


async def test_token_auth() -> None:
    with running_server("--token", "s3cret") as srv:
        async with httpx.AsyncClient(base_url=srv.url) as client:
            assert (await client.get("/healthz")).status_code == 200
            for method, path in (("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/metrics"),
                                 ("GET", "/jobs/x"), ("GET", "/openapi.json"),
                                 ("POST", "/jobs/x/cancel")):
                response = await client.request(method, path)
                assert response.status_code == 401, (method, path)
                assert response.headers["www-authenticate"] == "Bearer"
            wrong = await client.get("/jobs", headers={"authorization": "Bearer nope"})
            assert wrong.status_code == 401
            right = {"authorization": "Bearer s3cret"}
            assert (await client.get("/jobs", headers=right)).status_code == 200
            posted = await client.post("/jobs", json={"task": "echo"}, headers=right)
            assert posted.status_code == 202
        # The websocket takes the header or ?token=, and closes 1008 without it.
        for url, headers in ((f"{srv.ws}?snapshot=1", [(b"authorization", b"Bearer s3cret")]),
                             (f"{srv.ws}?token=s3cret&snapshot=1", None)):
            async with open_websocket(url, headers) as ws:
                assert json.loads(await ws.get_message())["type"] == "metrics"
        for url in (srv.ws, f"{srv.ws}?token=wrong"):
            async with open_websocket(url) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    with trio.fail_after(5):
                        await ws.get_message()
            assert closed.value.reason is not None
            assert closed.value.reason.code == 1008
        assert srv.stop() == 0


def test_token_from_the_environment() -> None:
    with running_server(env={"TRIOQUEUE_TOKEN": "from-env"}) as srv, httpx.Client(
        base_url=srv.url
    ) as client:
        assert client.get("/jobs").status_code == 401
        assert client.get("/jobs", headers={"authorization": "Bearer from-env"}
                          ).status_code == 200


# ---------------------------------------------------------------------------- backpressure


def test_full_queue_429_at_once_with_retry_after() -> None:
    with running_server("--workers", "1", "--capacity", "2", "--shutdown-timeout", "0.5"
                        ) as srv, httpx.Client(
        base_url=srv.url
    ) as client:
        codes = []
        for _ in range(6):
            started = time.monotonic()
            response = client.post("/jobs", json={"task": "sleep", "payload": {"seconds": 30}})
            codes.append(response.status_code)
            if response.status_code == 429:
                assert time.monotonic() - started < 2.0  # answered at once, not after room
                assert int(response.headers["retry-after"]) >= 1
                assert "error" in response.json()
                break
        assert codes[-1] == 429, codes
        assert set(codes[:-1]) == {202}
        assert client.get("/metrics").json()["rejected"] >= 1
        # The shutdown timeout cuts the 30 s sleeps short; the exit is still clean.
        assert srv.stop() == 0


# ---------------------------------------------------------------------------- shutdown


async def test_sigterm_with_a_job_in_flight() -> None:
    with running_server("--workers", "2") as srv:
        async with httpx.AsyncClient(base_url=srv.url) as client, open_websocket(
            f"{srv.ws}?types=completed"
        ) as ws:
            job = (await client.post("/jobs", json={"task": "sleep",
                                                    "payload": {"seconds": 1.5}})).json()
            with httpx.Client(base_url=srv.url) as sync_client:
                await trio.to_thread.run_sync(
                    wait_for, sync_client, job["id"], {"processing"}
                )
            srv.proc.send_signal(signal.SIGTERM)
            with trio.fail_after(5):
                while True:
                    if (await client.get("/healthz")).status_code == 503:
                        break
                    await trio.sleep(0.01)  # the signal is on its way
            refused = await client.post("/jobs", json={"task": "echo"})
            assert refused.status_code == 503
            assert "error" in refused.json()
            assert (await client.get("/healthz")).json() == {"status": "shutting_down"}
            # The in-flight job finishes; the event stream sees it, then ends (1001).
            with trio.fail_after(10):
                event = json.loads(await ws.get_message())
            assert (event["type"], event["job_id"]) == ("completed", job["id"])
            with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
                await ws.get_message()
            assert closed.value.reason is not None
            assert closed.value.reason.code == 1001
        code = await trio.to_thread.run_sync(srv.stop, None)
    assert code == 0
    assert "Traceback" not in srv.stderr()


def test_second_signal_stops_at_once() -> None:
    with running_server() as srv, httpx.Client(base_url=srv.url) as client:
        job = client.post("/jobs", json={"task": "sleep", "payload": {"seconds": 60}}).json()
        wait_for(client, job["id"], {"processing"})
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGINT)
        while client.get("/healthz").status_code == 200:
            time.sleep(0.01)
        code = srv.stop(signal.SIGINT, timeout=10)
        assert time.monotonic() - started < 10
    assert code == 128 + signal.SIGINT
    assert "second SIGINT" in srv.stderr()
    assert "Traceback" not in srv.stderr()


def test_sigterm_then_restart_on_the_same_db(tmp_path: Path) -> None:
    db = str(tmp_path / "jobs.db")
    with running_server("--db", db, "--shutdown-timeout", "0.5") as srv, httpx.Client(
        base_url=srv.url
    ) as client:
        job = client.post("/jobs", json={"task": "sleep", "payload": {"seconds": 3}}).json()
        wait_for(client, job["id"], {"processing"})
        srv.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while client.get("/healthz").status_code == 200:  # the signal is on its way
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert client.post("/jobs", json={"task": "echo"}).status_code == 503
        assert srv.stop(None) == 0
    # Interrupted by the shutdown timeout, the job was recorded back as queued: it runs
    # again after the restart.
    with running_server("--db", db) as srv, httpx.Client(base_url=srv.url) as client:
        done = wait_for(client, job["id"], {"completed"}, within=15)
        assert done["attempts"] == 2
        assert srv.stop() == 0


def test_idempotent_post_sees_jobs_that_left_memory(tmp_path: Path) -> None:
    """With result_ttl=0 a finished job lives in the store only; its id still counts."""
    db = str(tmp_path / "jobs.db")
    with running_server("--db", db, env={"TRIOQUEUE_RESULT_TTL": "0"}) as srv, httpx.Client(
        base_url=srv.url
    ) as client:
        body = {"task": "echo", "payload": {"n": 1, "m": [2]}, "id": "kept-1"}
        assert client.post("/jobs", json=body).status_code == 202
        wait_for(client, "kept-1", {"completed"})
        again = client.post("/jobs", json=body)
        assert again.status_code == 200
        assert again.json()["status"] == "completed"
        # The same payload with its keys in another order (another client's JSON library).
        reordered = b'{"id": "kept-1", "payload": {"m": [2], "n": 1}, "task": "echo"}'
        assert client.post("/jobs", content=reordered,
                           headers={"content-type": "application/json"}).status_code == 200
        assert client.post("/jobs", json={**body, "payload": {"n": 2}}).status_code == 409
        assert srv.stop() == 0


# ---------------------------------------------------------------------------- slow clients


def _stalled_websocket(ws_url: str) -> socket.socket:
    """A websocket client that completes the handshake and then never reads."""
    host_port = ws_url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(
        f"GET /events HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def test_slow_websocket_client_does_not_slow_the_queue() -> None:
    with running_server("--workers", "4", "--slow-client-timeout", "1",
                        "--event-buffer", "100") as srv:
        stalled = _stalled_websocket(srv.ws)
        try:
            async with httpx.AsyncClient(base_url=srv.url) as client, open_websocket(
                f"{srv.ws}?types=completed,lagged"
            ) as watcher:
                total = 500
                started = trio.current_time()
                limiter = trio.CapacityLimiter(16)
                counts = {"seen": 0, "dropped": 0}
                all_seen = trio.Event()

                async def watch() -> None:
                    # A reading client beside the stalled one sees every completion (or
                    # is told how many it missed).
                    while counts["seen"] + counts["dropped"] < total:
                        event = json.loads(await watcher.get_message())
                        if event["type"] == "lagged":
                            counts["dropped"] += event["dropped"]
                        else:
                            counts["seen"] += 1
                    all_seen.set()

                async def post(i: int) -> None:
                    async with limiter:
                        body = {"task": "echo", "payload": "z" * 200}
                        response = await client.post("/jobs", json=body)
                        assert response.status_code == 202

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch)
                    for i in range(total):
                        nursery.start_soon(post, i)
                    with trio.fail_after(30):
                        await all_seen.wait()
                elapsed = trio.current_time() - started
                metrics = (await client.get("/metrics")).json()
                assert metrics["completed"] == total
            print(f"posted and completed in {elapsed:.2f} s")
            assert elapsed < 30
            # The server cut the stalled client off (TCP_USER_TIMEOUT = 1 s): reading
            # what was buffered ends in EOF or a reset, not in a hang.
            await trio.sleep(1.5)  # past the 1 s: the kernel gives up on this peer
            stalled.settimeout(10)
            with trio.fail_after(20):
                await trio.to_thread.run_sync(_drain_until_closed, stalled)
        finally:
            stalled.close()
        assert srv.stop() == 0


def _drain_until_closed(sock: socket.socket) -> None:
    """Read what the server managed to send; it must end (EOF or reset), not time out."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass


def test_a_store_that_cannot_write_answers_500_and_keeps_no_job(tmp_path: Path) -> None:
    import resource

    db = tmp_path / "full.db"
    with running_server("--db", str(db)) as srv, httpx.Client(base_url=srv.url) as client:
        first = {"task": "echo", "payload": 1, "id": "first", "delay": 3600}
        assert client.post("/jobs", json=first).status_code == 202
        # A real write failure: cap the running server's file size, as a full disk would.
        grown = max(p.stat().st_size for p in tmp_path.iterdir() if p.is_file())
        limit = grown + 256 * 1024
        resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        try:
            for i in range(1000):
                body = {"task": "echo", "payload": {"pad": "x" * 4000}, "id": f"j{i}",
                        "delay": 3600}
                response = client.post("/jobs", json=body)
                if response.status_code != 202:
                    break
            assert response.status_code == 500, response.text
            assert str(db) in response.json()["error"]
            assert client.get(f"/jobs/j{i}").status_code == 404  # not acknowledged: gone
            assert client.get("/jobs/first").status_code == 200  # the rest is untouched
        finally:
            resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE,
                             (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        deadline = time.monotonic() + 10  # the store retries its writes every second
        while True:
            again = client.post("/jobs", json={"task": "echo", "payload": 2, "id": "after"})
            if again.status_code == 202 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert again.status_code == 202, again.text
