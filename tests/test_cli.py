"""The ``trioqueue`` command: option resolution in-process, the commands against a server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_server import Server, running_server
from trioqueue import Event
from trioqueue.cli import MonitorView, UsageError, build_parser, load_registry, serve_options


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 30
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trioqueue", *args], capture_output=True, text=True,
        timeout=timeout, cwd=cwd, check=False,
    )


# ---------------------------------------------------------------------------- options


def options(argv: list[str], env: dict[str, str]) -> tuple[object, object, object]:
    return serve_options(build_parser().parse_args(["serve", *argv]), env)


def test_flags_win_over_the_environment() -> None:
    env = {"TRIOQUEUE_PORT": "9001", "TRIOQUEUE_WORKERS": "7", "TRIOQUEUE_HOST": "::1",
           "TRIOQUEUE_TOKEN": "env-token", "TRIOQUEUE_CAPACITY": "33"}
    registry, config, settings = options([], env)
    assert (settings.port, settings.host, settings.token) == (9001, "::1", "env-token")  # type: ignore[attr-defined]
    assert (config.workers, config.capacity) == (7, 33)  # type: ignore[attr-defined]
    _, config, settings = options(["--port", "9002", "--workers", "2", "--token", "flag"], env)
    assert (settings.port, settings.token, config.workers) == (9002, "flag", 2)  # type: ignore[attr-defined]
    assert sorted(registry) == ["echo", "fail", "flaky", "sleep"]  # type: ignore[call-overload]


def test_platform_variables_are_accepted() -> None:
    _, config, settings = options([], {"PORT": "8123", "WORKER_COUNT": "3",
                                       "JOB_QUEUE_CAPACITY": "12"})
    assert settings.port == 8123  # type: ignore[attr-defined]
    assert (config.workers, config.capacity) == (3, 12)  # type: ignore[attr-defined]
    _, _, settings = options([], {})
    assert (settings.host, settings.port, settings.token) == ("127.0.0.1", 8080, None)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        ([], {"TRIOQUEUE_PORT": "eighty"}, "TRIOQUEUE_PORT"),
        (["--port", "70000"], {}, "port"),
        ([], {"TRIOQUEUE_WORKERS": "many"}, "TRIOQUEUE_WORKERS"),
        (["--workers", "0"], {}, "workers"),
        (["--app", "nocolon"], {}, "MODULE:REGISTRY"),
        (["--app", "no_such_module_xyz:registry"], {}, "cannot import"),
        (["--app", "trioqueue.demo:nothing"], {}, "has no"),
        (["--app", "trioqueue.demo:echo"], {}, "not a TaskRegistry"),
    ],
)
def test_bad_options_are_usage_errors(argv: list[str], env: dict[str, str], needle: str
                                      ) -> None:
    with pytest.raises(UsageError, match=needle):
        options(argv, env)


def test_app_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    (tmp_path / "my_tasks_for_cli_test.py").write_text(
        "import trioqueue\nregistry = trioqueue.TaskRegistry()\n"
        "@registry.task\nasync def shout(job):\n    return str(job.payload).upper()\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert list(load_registry("my_tasks_for_cli_test:registry")) == ["shout"]


# ---------------------------------------------------------------------------- serve


def test_serve_reports_a_bad_store_file_clearly(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    foreign.write_text("not a database at all")
    result = run_cli("serve", "--port", "0", "--db", str(foreign))
    assert result.returncode == 1
    assert str(foreign) in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_reports_a_taken_port_clearly() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(port))
    assert result.returncode == 1
    assert "cannot serve on 127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_bad_flag_exits_2() -> None:
    result = run_cli("serve", "--app", "nope")
    assert result.returncode == 2
    assert "MODULE:REGISTRY" in result.stderr


def test_serve_an_app_from_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "shouting.py").write_text(
        "import trioqueue\nregistry = trioqueue.TaskRegistry()\n"
        "@registry.task\nasync def shout(job):\n    return str(job.payload).upper()\n"
    )
    import httpx

    with running_server("--app", "shouting:registry", cwd=tmp_path) as srv, httpx.Client(
        base_url=srv.url
    ) as client:
        job = client.post("/jobs", json={"task": "shout", "payload": "hi"}).json()
        assert client.post("/jobs", json={"task": "echo"}).status_code == 404
        result = run_cli("enqueue", "shout", '"again"', "--wait", "--url", srv.url)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["result"] == "AGAIN"
        assert job["task"] == "shout"


# ---------------------------------------------------------------------------- client commands


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running_server("--workers", "2") as srv:
        yield srv


def test_enqueue_then_status(server: Server) -> None:
    result = run_cli("enqueue", "echo", '{"a": 1}', "--priority", "high", "--id", "cli-1",
                     "--wait", "--url", server.url)
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert (job["id"], job["status"], job["result"]) == ("cli-1", "completed", {"a": 1})
    status = run_cli("status", "cli-1", "--url", server.url)
    assert status.returncode == 0
    assert json.loads(status.stdout)["priority"] == "high"


def test_status_of_an_unknown_job_exits_1(server: Server) -> None:
    result = run_cli("status", "nope", "--url", server.url)
    assert result.returncode == 1
    assert "JobNotFound" in result.stderr
    assert "Traceback" not in result.stderr


def test_enqueue_errors_exit_1(server: Server) -> None:
    result = run_cli("enqueue", "no_such_task", "--url", server.url)
    assert result.returncode == 1
    assert "UnknownTask" in result.stderr
    bad = run_cli("enqueue", "echo", "{oops", "--url", server.url)
    assert bad.returncode == 2
    assert "payload" in bad.stderr


def test_enqueue_count_shows_progress_without_a_tty(server: Server) -> None:
    result = run_cli("enqueue", "echo", "[1]", "--count", "40", "--url", server.url)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["enqueued"] == 40
    assert "enqueued 40/40" in result.stderr


def test_unreachable_server_exits_1() -> None:
    result = run_cli("status", "x", "--url", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "cannot reach the server" in result.stderr


def test_monitor_without_a_tty(server: Server) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "trioqueue", "monitor", "--url", server.url, "--interval",
         "0.3", "--duration", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        assert proc.stdout is not None
        assert "watching" in proc.stdout.readline()  # connected: events from now on count
        assert run_cli("enqueue", "fail", "--max-retries", "0", "--url", server.url
                       ).returncode == 0
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "completed" in out
    assert "recent failures:" in out
    assert "on purpose" in out


def test_monitor_view_is_pure() -> None:
    view = MonitorView()
    view.add(Event(seq=1, type="metrics", at=0.0, metrics={"completed": 5, "workers": 4,
                                                             "queued": {"high": 2}}))
    for i in range(3):
        view.add(Event(seq=2 + i, type="completed", at=0.0, job_id=f"j{i}", task="echo"))
    view.add(Event(seq=9, type="failed", at=0.0, job_id="x", task="fail", attempt=1,
                   error="DemoFailure: boom"))
    view.add(Event(seq=10, type="lagged", at=0.0, dropped=7))
    view.tick(now=view._last_at + 1.0)
    text = "\n".join(view.lines())
    assert "completed 3.0/s" in text
    assert "high 2" in text
    assert "lagged    7 events" in text
    assert "DemoFailure: boom" in text
