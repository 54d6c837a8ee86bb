"""``trioqueue worker --metrics-port``: a node without the HTTP API that Prometheus can
scrape, run as a user would (a ``trioqueue worker`` process, killed by its pid at the
end), and its flags and variables."""

from __future__ import annotations

import logging
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from tests.cli_redis_app import registry as app_registry
from tests.redis_util import REDIS_URL, unique
from tests.test_cli_redis import _delete, workers
from tests.test_metrics_prometheus import check_exposition, value
from tests.test_server_app import call
from trioqueue import Job, QueueConfig, TaskRegistry, open_queue
from trioqueue.cli import UsageError, build_parser, main
from trioqueue.testing import NodeMetricsApp, metrics_options


@pytest.fixture
def runs() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "runs"
        path.touch()
        yield path


async def test_a_worker_serves_its_metrics_and_they_move_as_it_runs_jobs(runs: Path) -> None:
    queue = unique("wm")
    try:
        with workers(queue, runs, "--workers", "2", "--metrics-port", "0") as (node,):
            line = node.read_until(f"trioqueue worker {node.pid}: metrics on ")
            url = line.split()[5]  # "... metrics on URL (answers to Host ...)"
            base, _, route = url.rpartition("/")
            assert (base.startswith("http://127.0.0.1:"), route) == (True, "metrics")
            async with httpx.AsyncClient(base_url=base) as http:
                before = (await http.get("/metrics")).json()
                assert (before["started"], before["run_count"]) == (0, 0)
                assert before["workers"] >= 2
                # Jobs from another process on the same queue: this node runs them.
                config = QueueConfig(redis_url=REDIS_URL, queue_name=queue, workers=0)
                async with open_queue(app_registry, config) as q:
                    jobs = [await q.enqueue("record", {}) for _ in range(5)]
                    for job in jobs:
                        assert (await q.wait(job.id)).result == node.pid
                after = (await http.get("/metrics")).json()
                assert (after["started"], after["run_count"]) == (5, 5)
                assert after["busy_seconds"] >= after["run_sum"] > 0
                # The Prometheus text, as a scraper asks for it.
                scraped = await http.get("/metrics", headers={"accept": "text/plain"})
                assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
                text = scraped.text
                families = check_exposition(text)
                assert value(families, "jobs_started") == 5
                assert value(families, "job_run_seconds", "_count") == 5
                assert ("# HELP trioqueue_jobs_started_total Attempts started. This node's "
                        "own.\n") in text
                by_query = await http.get("/metrics", params={"format": "prometheus"})
                assert by_query.text.startswith("# HELP trioqueue_jobs_enqueued_total ")
                assert (await http.get("/healthz")).json() == {"status": "ok"}
                # Nothing of the API: no jobs, no writes.
                missing = await http.get("/jobs")
                assert missing.status_code == 404
                assert "GET /metrics and GET /healthz only" in missing.json()["error"]
                assert (await http.post("/metrics", json={})).status_code == 405
                assert (await http.get("/metrics", params={"format": "xml"})).status_code == 400
    finally:
        await _delete(queue)


def test_metrics_flags_and_variables() -> None:
    def options(argv: list[str], env: dict[str, str]) -> tuple[str, int] | None:
        return metrics_options(build_parser().parse_args(["worker", *argv]), env)

    assert options([], {}) is None
    assert options(["--metrics-port", "9108"], {}) == ("127.0.0.1", 9108)
    assert options([], {"TRIOQUEUE_METRICS_PORT": "9108",
                        "TRIOQUEUE_METRICS_HOST": "0.0.0.0"}) == ("0.0.0.0", 9108)
    assert options(["--metrics-port", "1", "--metrics-host", "::1"],
                   {"TRIOQUEUE_METRICS_PORT": "2"}) == ("::1", 1)  # a flag wins
    with pytest.raises(UsageError, match=r"^TRIOQUEUE_METRICS_PORT: expected an integer"):
        options([], {"TRIOQUEUE_METRICS_PORT": "nine"})
    with pytest.raises(UsageError, match=r"^--metrics-port: expected a port 0..65535, got "
                       r"70000"):
        options(["--metrics-port", "70000"], {})
    with pytest.raises(UsageError, match=r"^--metrics-host: applies with --metrics-port "):
        options(["--metrics-host", "0.0.0.0"], {})
    with pytest.raises(UsageError, match=r"^TRIOQUEUE_METRICS_HOST: applies with "):
        options([], {"TRIOQUEUE_METRICS_HOST": "0.0.0.0"})


def test_a_metrics_port_in_use_stops_the_worker_with_a_line_naming_it(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    """Before it opens its queue: it joined the cluster (``trioqueue open: 4 workers``)
    and only then found the port taken."""
    caplog.set_level(logging.INFO)
    queue = unique("wm")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            code = main(["worker", "--redis", REDIS_URL, "--queue", queue,
                         "--metrics-port", str(port)])
        finally:
            trio.run(_delete, queue)
    out, err = capsys.readouterr()
    assert code == 1
    assert f"trioqueue worker: cannot serve metrics on 127.0.0.1:{port}: " in err
    assert "in use" in err
    assert "metrics on" not in out
    assert not [r for r in caplog.records if "trioqueue open" in r.getMessage()]


async def test_while_a_node_shuts_down_healthz_says_so_and_metrics_still_answer() -> None:
    gate = trio.Event()
    reg = TaskRegistry()

    @reg.task
    async def hold(job: Job) -> None:
        await gate.wait()

    seen: list[tuple[int, Any]] = []
    async with trio.open_nursery() as nursery:
        async with open_queue(reg, QueueConfig(workers=1, shutdown_timeout=60)) as q:
            app = NodeMetricsApp(q)
            assert (await call(app, "GET", "/healthz"))[::2] == (200, {"status": "ok"})
            await q.enqueue("hold", {})
            await trio.testing.wait_all_tasks_blocked()

            async def in_the_drain() -> None:
                await trio.testing.wait_all_tasks_blocked()  # the shutdown waits on hold
                seen.append((await call(app, "GET", "/healthz"))[::2])
                seen.append((await call(app, "GET", "/metrics"))[::2])
                gate.set()

            nursery.start_soon(in_the_drain)
    assert seen[0] == (503, {"status": "shutting_down"})
    status, metrics = seen[1]
    assert (status, metrics["processing"], metrics["started"]) == (200, 1, 1)
