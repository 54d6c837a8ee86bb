"""``trioqueue serve --redis`` and ``trioqueue worker``, run as a user would.

One queue in Redis (a name of its own, its keys deleted at the end) and three processes:
``serve --workers 0`` (it only enqueues and answers the API) and two ``worker`` nodes,
all with ``--app tests.cli_redis_app:registry``.  The client commands (``enqueue``,
``list``, ``cancel``, ``retry``, ``metrics``, ``tasks``) talk to the serve node.  The
``record`` task appends ``<pid> <job id> <attempt>`` to a file shared by the nodes and
prints the same line on its node's stdout, so a test knows which node ran what and how
often.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from tests.cli_redis_app import RUNS_VARIABLE
from tests.cli_redis_app import registry as app_registry
from tests.redis_util import REDIS_URL, admin, delete_queue, unique
from tests.test_server import running_server
from tests.test_server_app import call
from trioqueue import QueueConfig, open_queue
from trioqueue.cli import main
from trioqueue.client import Client
from trioqueue.server import App

APP = "tests.cli_redis_app:registry"
LEASE = "2"
START_TIMEOUT = 20.0


# ---------------------------------------------------------------------------- the nodes


@attrs.define
class Worker:
    proc: subprocess.Popen[bytes]
    buffered: bytes = b""
    """Read from its stdout, not yet split into lines."""
    banner: str = ""
    """Its first line (``trioqueue worker PID: N workers on queue ...``)."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_until(self, prefix: str, timeout: float = START_TIMEOUT) -> str:
        """The next stdout line starting with ``prefix`` (lines before it are skipped)."""
        out = self.proc.stdout
        assert out is not None
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buffered:
                raw, _, self.buffered = self.buffered.partition(b"\n")
                line = raw.decode()
                if line.startswith(prefix):
                    return line
            # poll(), not select(): a descriptor past 1023 (a busy pytest worker) is fine.
            poller = select.poll()
            poller.register(out.fileno(), select.POLLIN)
            wait_ms = max(0.0, deadline - time.monotonic()) * 1000
            ready = poller.poll(wait_ms)
            chunk = os.read(out.fileno(), 65536) if ready else b""
            if not chunk:
                pytest.fail(f"worker {self.pid}: no line starting {prefix!r}")
            self.buffered += chunk

    def rest(self) -> str:
        """Everything it prints until it exits (within 10 s)."""
        assert self.proc.stdout is not None
        self.proc.wait(10)
        return (self.buffered + self.proc.stdout.read()).decode()


@contextmanager
def workers(queue: str, runs: Path, *args: str, count: int = 1) -> Iterator[list[Worker]]:
    """``count`` ``trioqueue worker`` processes, each once it said it is running; each
    killed by its own pid at the end if it is still there."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", RUNS_VARIABLE: str(runs)}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "trioqueue", "worker", "--app", APP, "--redis", REDIS_URL,
         "--queue", queue, "--lease", LEASE, "--shutdown-timeout", "5", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    ) for _ in range(count)]
    try:
        nodes = [Worker(p) for p in procs]
        for node in nodes:
            node.banner = node.read_until("trioqueue worker ")
            assert f"worker {node.pid}: " in node.banner
        yield nodes
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            assert p.stdout is not None
            p.stdout.close()


@attrs.define
class Cluster:
    url: str
    queue: str
    runs: Path
    serve_pid: int
    nodes: list[Worker]
    """Two worker nodes."""
    leaving: Worker
    """A third, which the SIGTERM test stops."""

    def ran(self) -> list[tuple[int, str, int]]:
        """(pid, job id, attempt) of every run so far, in order."""
        out = []
        for line in self.runs.read_text().splitlines():
            pid, job_id, attempt = line.split()
            out.append((int(pid), job_id, int(attempt)))
        return out


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    queue = unique("cli")
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        runs.touch()
        try:
            # The workers start while the server does: their imports overlap.
            with workers(queue, runs, "--workers", "2", count=3) as nodes, running_server(
                "--app", APP, "--redis", REDIS_URL, "--queue", queue, "--workers", "0",
                "--lease", LEASE,
                env={RUNS_VARIABLE: str(runs), "TRIOQUEUE_PREFETCH": "8"},
            ) as srv:
                yield Cluster(srv.url, queue, runs, srv.proc.pid, nodes[:2], nodes[2])
            # SIGTERMed at the end of the block: a node without workers stops at once.
            assert srv.proc.returncode == 0, srv.captured
        finally:
            trio.run(_delete, queue)


async def _delete(queue: str) -> None:
    async with admin() as client:
        await delete_queue(client, queue)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``trioqueue ARGV`` (in this process): its exit status and what it printed."""
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().out


# ---------------------------------------------------------------------------- tests


async def test_jobs_run_once_on_the_worker_nodes_and_the_serve_node_streams_them(
    cluster: Cluster,
) -> None:
    worker_pids = {n.pid for n in [*cluster.nodes, cluster.leaving]}
    async with Client(cluster.url) as client, client.events(["completed"]) as events:
        # One job from the command line, waited for; 20 over HTTP meanwhile.
        done: list[subprocess.CompletedProcess[bytes]] = []

        async def by_cli() -> None:
            done.append(await trio.run_process(
                [sys.executable, "-m", "trioqueue", "enqueue", "record", "{}", "--wait",
                 "--url", cluster.url], capture_stdout=True, capture_stderr=True, check=False))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(by_cli)
            posted = [await client.enqueue("record", {"sleep": 0.02}) for _ in range(20)]
        (result,) = done
        assert result.returncode == 0, result.stderr
        by_cli_job = json.loads(result.stdout)
        assert by_cli_job["status"] == "completed"
        assert by_cli_job["result"] in worker_pids
        ids = {job.id for job in posted} | {by_cli_job["id"]}
        seen: set[str] = set()
        with trio.fail_after(15):
            async for event in events:  # events of jobs the worker nodes ran
                seen.add(event.job_id or "")
                if ids <= seen:
                    break
        finals = [await client.get(job_id) for job_id in sorted(ids)]
    assert all(j.status.value == "completed" and j.attempts == 1 for j in finals)
    ran_on = {j.result for j in finals}
    assert len(ran_on) >= 2  # the nodes share the work ...
    assert ran_on <= worker_pids  # ... and the serve node runs none
    runs = [r for r in cluster.ran() if r[1] in ids]
    assert Counter(job_id for _, job_id, _ in runs) == Counter(ids)  # each exactly once
    assert {pid for pid, _, _ in runs} == ran_on


def test_client_commands_against_the_serve_node(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ("--url", cluster.url)
    later = unique("later")
    code, out = cli(capsys, "enqueue", "record", "{}", "--id", later, "--delay", "60", *url)
    assert (code, json.loads(out)["status"]) == (0, "scheduled")
    code, out = cli(capsys, "cancel", later, *url)
    assert (code, json.loads(out)["status"]) == (0, "cancelled")
    code, out = cli(capsys, "list", "--status", "cancelled", "--json", *url)
    assert code == 0
    assert later in [j["id"] for j in json.loads(out)["jobs"]]
    code, out = cli(capsys, "retry", later, *url)
    assert (code, json.loads(out)["status"]) == (0, "queued")

    code, out = cli(capsys, "enqueue", "fail", "--wait", *url)  # FAILED: exit 1
    failed = json.loads(out)
    assert (code, failed["status"], failed["error"]) == (1, "failed", "RuntimeError: on purpose")
    code, out = cli(capsys, "retry", "--failed", "--task", "fail", *url)
    assert (code, json.loads(out)) == (0, {"retried": 1})

    with httpx.Client(base_url=cluster.url) as http:
        deadline = time.monotonic() + 10
        while http.get(f"/jobs/{later}").json()["status"] != "completed":
            assert time.monotonic() < deadline, "the retried job did not run"
            time.sleep(0.05)
        again = http.get(f"/jobs/{failed['id']}").json()
        assert again["status"] in ("queued", "processing", "failed")
        # An idempotent repeat is found in Redis, whichever node took the first one.
        again_id = unique("same")
        body = {"task": "record", "payload": {"n": 1}, "id": again_id}
        assert http.post("/jobs", json=body).status_code == 202
        assert http.post("/jobs", json=body).status_code == 200
        assert http.post("/jobs", json={**body, "payload": {"n": 2}}).status_code == 409
        page = http.get("/")
        assert page.status_code == 200
        assert "<title>trioqueue</title>" in page.text

    code, out = cli(capsys, "list", *url)
    assert code == 0
    assert later in out
    code, out = cli(capsys, "metrics", *url)
    metrics = json.loads(out)
    assert code == 0
    assert metrics["completed"] >= 1
    assert metrics["failed"] >= 1
    assert metrics["cancelled"] >= 1
    assert metrics["workers"] == 6  # the queue's: the worker nodes' 3 x 2 (serve runs none)
    code, out = cli(capsys, "metrics", "--prometheus", *url)
    assert code == 0
    assert "trioqueue_jobs_completed_total" in out
    code, out = cli(capsys, "tasks", "--json", *url)
    assert (code, [t["name"] for t in json.loads(out)["tasks"]]) == (0, ["fail", "record"])


async def test_sigterm_on_a_worker_exits_0_and_leaves_queued_jobs_for_the_others(
    cluster: Cluster,
) -> None:
    leaving = cluster.leaving
    others = [n.proc for n in cluster.nodes]
    async with Client(cluster.url) as client, client.events(["completed"]) as events:
        # The other nodes are stopped (they hold no job): the queued jobs can only
        # wait for them, whatever the timing.
        for proc in others:
            proc.send_signal(signal.SIGSTOP)
        try:
            posted = [await client.enqueue("record", {"sleep": 0.3}) for _ in range(6)]
            ids = {job.id for job in posted}
            # Once the leaving node runs one of them, SIGTERM it: it finishes what
            # it runs, and exits 0.
            while True:
                line = await trio.to_thread.run_sync(leaving.read_until, "ran ")
                if line.split()[2] in ids:
                    break
            leaving.proc.send_signal(signal.SIGTERM)
            rest = await trio.to_thread.run_sync(leaving.rest)
            assert leaving.proc.returncode == 0
            assert "stopped" in rest
            ran_there = {r[1] for r in cluster.ran() if r[0] == leaving.pid} & ids
            assert 1 <= len(ran_there) <= 2
            queued = {j.id for j in await client.list_jobs("queued")} & ids
            assert queued == ids - ran_there  # left for the others, none held
            assert not {j.id for j in await client.list_jobs("processing")} & ids
        finally:
            for proc in others:
                proc.send_signal(signal.SIGCONT)
        completed: set[str] = set()
        with trio.fail_after(15):
            async for event in events:
                completed.add(event.job_id or "")
                if ids <= completed:
                    break
    runs = [r for r in cluster.ran() if r[1] in ids]
    assert Counter(job_id for _, job_id, _ in runs) == Counter(ids)  # each ran once
    assert {pid for pid, job_id, _ in runs if job_id not in ran_there} <= {
        n.pid for n in cluster.nodes}


async def test_a_workers_banner_names_its_node_lease_and_prefetch() -> None:
    """The line a worker prints once it is connected names the node id that events' and
    metrics' ``node`` carry (it showed only the pid), and its ``--lease`` and
    ``--prefetch``."""
    from tests.test_redis_chaos import until

    queue = unique("banner")
    try:
        with tempfile.TemporaryDirectory() as tmp, workers(
            queue, Path(tmp) / "runs", "--workers", "2", "--prefetch", "3"
        ) as (node,):
            start = f"trioqueue worker {node.pid}: 2 workers on queue {queue!r} at "
            assert node.banner.startswith(start), node.banner
            match = re.search(r", node ([0-9a-f]{12}), lease 2 s, prefetch 3, tasks ",
                              node.banner)
            assert match, node.banner
            config = QueueConfig(redis_url=REDIS_URL, queue_name=queue, workers=0)
            async with open_queue(app_registry, config) as q:

                async def listed() -> bool | None:
                    return True if match[1] in (q.metrics().nodes or {}) else None

                await until(listed)  # the id the cluster knows the node by
    finally:
        await _delete(queue)


def test_bad_redis_urls_are_one_line_errors(capsys: pytest.CaptureFixture[str],
                                            caplog: pytest.LogCaptureFixture) -> None:
    queue = ("--queue", unique("cli"))
    caplog.set_level(logging.INFO, logger="trioqueue")
    with warnings.catch_warnings():  # coredis' pool of the failed connect, collected here
        warnings.simplefilter("ignore", ResourceWarning)
        code = main(["serve", "--port", "0", "--redis", "redis://:hunter2@127.0.0.1:1/0",
                     *queue])
        gc.collect()
    err = capsys.readouterr().err.strip()
    assert code == 1
    # A queue that could not open says only why (it said "trioqueue open", then "closed").
    said = [r.getMessage() for r in caplog.records if r.name == "trioqueue"]
    assert not [m for m in said if m.startswith(("trioqueue open", "trioqueue closed"))]
    assert err.startswith("trioqueue serve: cannot use redis at redis://:***@127.0.0.1:1/0 ")
    assert err.count("cannot use redis at") == 1, err  # (open_queue names the URL too)
    assert "hunter2" not in err
    assert "\n" not in err
    code = main(["worker", "--redis", "http://127.0.0.1/", *queue])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "trioqueue worker: --redis: expected a redis://, rediss:// or unix:// URL, got "
        "'http://127.0.0.1/'")
    # What the Redis client would raise a traceback for: named at once, no password.
    for url, said in (("redis://127.0.0.1:6390/abc", "the database 'abc' is not a number"),
                      ("redis://:hunter2@127.0.0.1:abc/9", "the port 'abc' is not a number")):
        assert main(["worker", "--redis", url, *queue]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"trioqueue worker: --redis: {said}"), err
        assert "hunter2" not in err


async def test_a_retry_on_a_full_redis_queue_answers_429_at_once() -> None:
    """The server reads the job from Redis (not this process's memory) to see that its
    priority is full: 429 with Retry-After, not a request waiting for room."""
    queue = unique("cli")
    config = QueueConfig(redis_url=REDIS_URL, queue_name=queue, workers=0, capacity=1,
                         shutdown_timeout=1)
    try:
        async with open_queue(app_registry, config) as q:
            app = App(q)
            status, _, later = await call(app, "POST", "/jobs", {"task": "record", "delay": 60})
            assert status == 202
            assert (await call(app, "POST", f"/jobs/{later['id']}/cancel"))[0] == 200
            assert (await call(app, "POST", "/jobs", {"task": "record"}))[0] == 202  # full
            with trio.fail_after(5):
                status, headers, _ = await call(app, "POST", f"/jobs/{later['id']}/retry")
            assert status == 429
            assert b"retry-after" in headers
    finally:
        await _delete(queue)
