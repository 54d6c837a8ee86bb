"""The Host check of ``trioqueue worker --metrics-port`` (DNS rebinding: a page whose
name is made to resolve to 127.0.0.1 must not read a worker's metrics): ``/metrics``
answers the names ``serve`` would answer (the bind address, ``localhost``,
``127.0.0.1``, ``[::1]``, ``--allowed-hosts``), with ``serve``'s 400 for any other;
``/healthz`` answers any Host.  The matrix in process, the CLI wiring in one worker
process on Redis database 11."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import coredis
import httpx
import pytest

from tests.cli_redis_app import RUNS_VARIABLE
from tests.redis_util import delete_queue
from tests.test_cli_redis import APP, Worker
from tests.test_server_app import call
from trioqueue import JobQueue, QueueConfig, TaskRegistry, open_queue
from trioqueue.cli import UsageError, build_parser, main
from trioqueue.server import App, ServerSettings
from trioqueue.testing import NodeMetricsApp, metrics_options

REDIS_URL = "redis://127.0.0.1:6379/11"  # this file's database
EVIL = "rebind.evil.example"
REFUSED = (f"host: {EVIL!r} is not one this server answers to (add its name to "
           "--allowed-hosts or TRIOQUEUE_ALLOWED_HOSTS)")


@pytest.fixture
async def queue() -> AsyncIterator[JobQueue]:
    async with open_queue(TaskRegistry(), QueueConfig(workers=1)) as q:
        yield q


async def get(app: Any, path: str, host: str | None) -> tuple[int, dict[bytes, bytes], Any]:
    return await call(app, "GET", path, headers=None if host is None else {"host": host})


async def test_metrics_answer_only_the_hosts_serve_would(queue: JobQueue) -> None:
    app = NodeMetricsApp(queue)  # bound on 127.0.0.1, as by default
    for host in ("127.0.0.1:9108", "127.0.0.1", "localhost", "LOCALHOST.:9108", "[::1]:9108",
                 None):  # no Host: HTTP/1.0 (a browser always sends one)
        status, _, body = await get(app, "/metrics", host)
        assert (host, status, body["workers"]) == (host, 200, 1)
    status, headers, body = await get(app, "/metrics", EVIL)
    assert (status, body, headers[b"connection"]) == (400, {"error": REFUSED}, b"close")
    assert (await get(app, "/metrics", f"{EVIL}:9108"))[0] == 400
    assert (await get(app, "/metrics", "10.0.0.7"))[0] == 400  # not bound there
    assert (await get(app, "/metrics", "bad host"))[2] == {
        "error": "host: 'bad host' is not a valid host"}
    two = await call(app, "GET", "/metrics", headers={"host": "localhost", "Host": EVIL})
    assert two[::2] == (400, {"error": "host: more than one Host header"})
    # Before the route: an unknown path or method says nothing to such a page either.
    assert (await get(app, "/jobs", EVIL))[0] == 400
    assert (await call(app, "POST", "/metrics", headers={"host": EVIL}))[0] == 400
    # The probe answers any Host: load balancers come by address.
    assert (await get(app, "/healthz", EVIL))[::2] == (200, {"status": "ok"})
    assert (await get(app, "/healthz", "bad host"))[0] == 200


async def test_a_refused_host_gets_what_serve_gives_it(queue: JobQueue) -> None:
    node = await get(NodeMetricsApp(queue), "/metrics", f"{EVIL}:9108")
    served = await get(App(queue, ServerSettings()), "/metrics", f"{EVIL}:9108")
    assert (node[0], node[2]) == (served[0], served[2])
    assert node[1][b"connection"] == served[1][b"connection"]


async def test_bind_address_and_allowed_hosts(queue: JobQueue) -> None:
    app = NodeMetricsApp(queue, host="10.0.0.7", allowed_hosts=("metrics.internal",))
    for host in ("10.0.0.7:9108", "metrics.internal", "Metrics.Internal.:9108", "localhost"):
        assert (host, (await get(app, "/metrics", host))[0]) == (host, 200)
    assert (await get(app, "/metrics", "10.0.0.8"))[0] == 400
    assert (await get(app, "/metrics", EVIL))[0] == 400
    # Every interface: any IP address (it cannot be rebound), but still no other name.
    app = NodeMetricsApp(queue, host="0.0.0.0")
    assert (await get(app, "/metrics", "192.168.1.20:9108"))[0] == 200
    assert (await get(app, "/metrics", EVIL))[0] == 400
    app = NodeMetricsApp(queue, allowed_hosts=("*",))  # the check off
    assert (await get(app, "/metrics", EVIL))[0] == 200


def test_allowed_hosts_flag_and_variable() -> None:
    from trioqueue.testing import metrics_allowed_hosts

    def options(argv: list[str], env: dict[str, str]) -> tuple[str, ...]:
        args = build_parser().parse_args(["worker", *argv])
        return metrics_allowed_hosts(args, env, metrics_options(args, env))

    port = ["--metrics-port", "9108"]
    assert options(port, {}) == ()
    assert options([*port, "--allowed-hosts", "Metrics.Internal.,[::1],*"], {}) == (
        "metrics.internal", "::1", "*")
    assert options(port, {"TRIOQUEUE_ALLOWED_HOSTS": "a.internal, b.internal"}) == (
        "a.internal", "b.internal")
    assert options([*port, "--allowed-hosts", "a.internal"],
                   {"TRIOQUEUE_ALLOWED_HOSTS": "b.internal"}) == ("a.internal",)  # flag wins
    with pytest.raises(UsageError, match=r"^--allowed-hosts: 'a.internal:9108': expected a "
                       r"host name or an IP address without a port"):
        options([*port, "--allowed-hosts", "a.internal:9108"], {})
    with pytest.raises(UsageError, match=r"^TRIOQUEUE_ALLOWED_HOSTS: 'bad host': expected"):
        options(port, {"TRIOQUEUE_ALLOWED_HOSTS": "bad host"})
    # Without a metrics port: the flag does nothing, so it is refused; the variable is
    # serve's too (one environment for every node), so it is left alone.
    with pytest.raises(UsageError, match=r"^--allowed-hosts: applies with --metrics-port "):
        options(["--allowed-hosts", "a.internal"], {})
    assert options([], {"TRIOQUEUE_ALLOWED_HOSTS": "bad host"}) == ()


def test_a_bad_allowed_hosts_exits_2_naming_it(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the worker opens its queue (nothing of Redis is touched)."""
    base = ["worker", "--redis", REDIS_URL, "--queue", "tq-hosts-never", "--metrics-port", "0"]
    assert main([*base, "--allowed-hosts", "metrics.internal:9108"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trioqueue worker: --allowed-hosts: 'metrics.internal:9108': ")
    monkeypatch.setenv("TRIOQUEUE_ALLOWED_HOSTS", "http://metrics.internal")
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.startswith("trioqueue worker: TRIOQUEUE_ALLOWED_HOSTS: 'http://metrics.internal'")


@contextmanager
def worker_process(queue: str, *args: str) -> Iterator[Worker]:
    """A ``trioqueue worker`` on this file's database, killed by its pid at the end."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        runs.touch()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", RUNS_VARIABLE: str(runs)}
        env.pop("TRIOQUEUE_ALLOWED_HOSTS", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "trioqueue", "worker", "--app", APP, "--redis", REDIS_URL,
             "--queue", queue, "--workers", "1", "--shutdown-timeout", "1", *args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        try:
            yield Worker(proc)
        finally:
            proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()


async def _delete(queue: str) -> None:
    async with coredis.Redis.from_url(REDIS_URL, decode_responses=True) as client:
        await delete_queue(client, queue)


async def test_a_worker_process_checks_the_host_of_its_metrics_port() -> None:
    queue = f"tq-hosts-{uuid.uuid4().hex[:12]}"
    try:
        with worker_process(queue, "--metrics-port", "0",
                            "--allowed-hosts", "metrics.internal") as node:
            line = node.read_until(f"trioqueue worker {node.pid}: metrics on ")
            found = re.fullmatch(r".*: metrics on (http://127\.0\.0\.1:(\d+))/metrics "
                                 r"\(answers to Host (.*)\)", line)
            assert found is not None, line
            base, port, hosts = found.groups()
            assert hosts == "127.0.0.1, [::1], localhost, metrics.internal"
            async with httpx.AsyncClient(base_url=base) as http:
                async def status(path: str, host: str | None = None) -> int:
                    headers = None if host is None else {"host": host}
                    return (await http.get(path, headers=headers)).status_code

                refused = await http.get("/metrics", headers={"host": EVIL})
                assert (refused.status_code, refused.json()) == (400, {"error": REFUSED})
                assert await status("/metrics") == 200  # Host: 127.0.0.1:PORT
                assert await status("/metrics", f"localhost:{port}") == 200
                assert await status("/metrics", "metrics.internal") == 200
                assert await status("/healthz", EVIL) == 200
    finally:
        await _delete(queue)
