"""The ``trioqueue`` command: option resolution in-process, the commands against a server."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.test_server import Server, running_server
from trioqueue import QueueConfig
from trioqueue.cli import (
    UsageError,
    build_parser,
    load_registry,
    main,
    queue_options,
    redacted,
    serve_options,
    transport_failure,
)
from trioqueue.testing import clean
from trioqueue.testing import client_options as read_client_options
from trioqueue.testing import table as render_table

CLIENT_VARIABLES = ("TRIOQUEUE_URL", "TRIOQUEUE_TOKEN", "TRIOQUEUE_PORT", "PORT")


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 30,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "trioqueue", *args], capture_output=True, text=True,
        timeout=timeout, cwd=cwd, check=False, env={**full_env, **(env or {})},
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
        (["--port", "70000"], {}, "--port: expected a port 0..65535, got 70000"),
        ([], {"TRIOQUEUE_WORKERS": "many"}, "TRIOQUEUE_WORKERS"),
        (["--workers", "0"], {}, "workers"),
        (["--app", "nocolon"], {}, "MODULE:REGISTRY"),
        (["--app", "no_such_module_xyz:registry"], {}, "cannot import"),
        (["--app", "trioqueue.demo:nothing"], {}, "has no"),
        (["--app", "trioqueue.demo:echo"], {}, "not a TaskRegistry"),
        (["--app", "trioqueue._job:MAX_RETRIES"], {}, "is an int, not a TaskRegistry"),
        # An empty secret would serve with no authentication at all.
        (["--token", ""], {}, "^--token: empty; leave it out to serve without a token$"),
        (["--token", " "], {}, "^--token: empty"),
        ([], {"TRIOQUEUE_TOKEN": ""}, "^TRIOQUEUE_TOKEN: empty"),
    ],
)
def test_bad_options_are_usage_errors(argv: list[str], env: dict[str, str], needle: str
                                      ) -> None:
    with pytest.raises(UsageError, match=needle):
        options(argv, env)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["serve", "--log-level", "verbose"], {}, "argument --log-level: invalid choice"),
        (["worker", "--log-level", "loud"], {}, "argument --log-level: invalid choice"),
        (["serve"], {"TRIOQUEUE_LOG_LEVEL": "bogus"}, "trioqueue serve: TRIOQUEUE_LOG_LEVEL: "
         "expected one of debug, info, warning, error, got 'bogus'"),
    ],
)
def test_a_log_level_no_logger_has_is_refused(
    argv: list[str], env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code  # type: ignore[assignment]
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "message"),
    [
        # The variable that was set is named, not the TRIOQUEUE_ one it stands for.
        ({"PORT": "eighty"}, "PORT: expected an integer, got 'eighty'"),
        ({"PORT": "70000"}, "PORT: expected a port 0..65535, got 70000"),
        ({"WORKER_COUNT": "many"}, "WORKER_COUNT: cannot parse 'many' for workers"),
        ({"WORKER_COUNT": "-1"}, "WORKER_COUNT: workers: expected an integer 0..10000, got -1"),
        # A typo of a few digits more started tasks until memory ran out.
        ({"TRIOQUEUE_WORKERS": "40000000"},
         "TRIOQUEUE_WORKERS: workers: expected an integer 0..10000, got 40000000"),
        ({"WORKER_COUNT": "0"}, "WORKER_COUNT: workers: 0 needs redis_url (a node that runs "
         "no jobs); a queue in memory or in a SQLite file needs at least 1 worker"),
        ({"JOB_QUEUE_CAPACITY": "-5"},
         "JOB_QUEUE_CAPACITY: capacity: expected a positive integer, got -5"),
        ({"TRIOQUEUE_CAPACITY": "0"},
         "TRIOQUEUE_CAPACITY: capacity: expected a positive integer, got 0"),
    ],
)
def test_platform_variables_are_named_in_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError) as refused:
        options([], env)
    assert str(refused.value) == message


@pytest.mark.parametrize(
    ("argv", "env", "source"),
    [
        (["--durability", "batch"], {}, "--durability"),
        (["--durability", "sync"], {}, "--durability"),
        ([], {"TRIOQUEUE_DURABILITY": "batch"}, "TRIOQUEUE_DURABILITY"),
        ([], {"TRIOQUEUE_FLUSH_INTERVAL": "0.5"}, "TRIOQUEUE_FLUSH_INTERVAL"),
        ([], {"TRIOQUEUE_FSYNC": "1"}, "TRIOQUEUE_FSYNC"),
        (["--durability", "batch", "--db", ""], {}, "--durability"),
    ],
)
def test_durability_options_without_a_store_are_refused(
    argv: list[str], env: dict[str, str], source: str
) -> None:
    with pytest.raises(UsageError) as refused:
        options(argv, env)
    assert str(refused.value).startswith(f"{source}: applies to a store only: give --db")


REDIS = "redis://127.0.0.1:6379/0"


def test_redis_options_from_flags_and_the_environment() -> None:
    env = {"TRIOQUEUE_REDIS_URL": REDIS, "TRIOQUEUE_QUEUE": "emails", "TRIOQUEUE_LEASE": "7",
           "TRIOQUEUE_PREFETCH": "64"}
    _, config, _ = options([], env)
    assert (config.redis_url, config.queue_name, config.lease, config.prefetch) == (  # type: ignore[attr-defined]
        REDIS, "emails", 7.0, 64)
    _, config, _ = options(["--redis", "redis://127.0.0.1:6379/3", "--queue", "q2",
                            "--lease", "2.5", "--prefetch", "8"], env)
    assert (config.redis_url, config.queue_name, config.lease, config.prefetch) == (  # type: ignore[attr-defined]
        "redis://127.0.0.1:6379/3", "q2", 2.5, 8)
    # A node that runs no jobs claims none, whatever TRIOQUEUE_PREFETCH says.
    _, config, _ = options(["--workers", "0"], env)
    assert (config.workers, config.prefetch) == (0, 0)  # type: ignore[attr-defined]
    _, config = queue_options(build_parser().parse_args(["worker", "--app", "trioqueue.demo:"
                                                         "registry"]), env, worker=True)
    assert (config.redis_url, config.queue_name, config.workers) == (REDIS, "emails", 4)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--redis", REDIS, "--db", "q.db"], {},
         "--redis and --db exclude each other: a queue lives either in Redis or in a SQLite "
         "file; give one of them"),
        (["--db", "q.db"], {"TRIOQUEUE_REDIS_URL": REDIS}, "TRIOQUEUE_REDIS_URL and --db "
         "exclude each other"),
        (["--redis", REDIS], {"TRIOQUEUE_DB": "q.db"}, "--redis and TRIOQUEUE_DB exclude"),
        (["--queue", "q"], {}, "--queue: applies to a queue in Redis only: give --redis URL"),
        ([], {"TRIOQUEUE_LEASE": "3"}, "TRIOQUEUE_LEASE: applies to a queue in Redis only"),
        (["--prefetch", "3"], {}, "--prefetch: applies to a queue in Redis only"),
        (["--workers", "0"], {}, "--workers: 0 needs --redis URL"),
        (["--redis", "http://127.0.0.1/"], {},
         "--redis: expected a redis://, rediss:// or unix:// URL, got 'http://127.0.0.1/'"),
        ([], {"TRIOQUEUE_REDIS_URL": "127.0.0.1:6379"},
         "TRIOQUEUE_REDIS_URL: redis_url: expected a redis://"),
        (["--redis", REDIS, "--queue", "no spaces"], {}, "--queue: expected 1-100 ASCII"),
        (["--redis", REDIS, "--lease", "0"], {}, "--lease: must be > 0, got 0.0"),
        (["--redis", REDIS, "--workers", "0", "--prefetch", "2"], {},
         "--prefetch: a node with workers=0 runs no jobs and must claim none"),
        (["--redis", REDIS, "--durability", "batch"], {},
         "--durability: applies to a store only: give --db PATH (or TRIOQUEUE_DB) too; "
         "without one, jobs are in Redis"),
    ],
)
def test_bad_redis_options_are_usage_errors(argv: list[str], env: dict[str, str],
                                            message: str) -> None:
    with pytest.raises(UsageError) as refused:
        options(argv, env)
    assert str(refused.value).startswith(message)


def test_a_worker_needs_redis_and_workers() -> None:
    args = build_parser().parse_args(["worker"])
    with pytest.raises(UsageError, match=r"^give --redis URL \(or TRIOQUEUE_REDIS_URL\)"):
        queue_options(args, {}, worker=True)
    args = build_parser().parse_args(["worker", "--redis", REDIS, "--workers", "0"])
    with pytest.raises(UsageError, match=r"^--workers: a worker node needs at least 1"):
        queue_options(args, {}, worker=True)


LEASE = ("lease: at most 3153600000 seconds (a century: Redis keeps times as integer "
         "milliseconds)")


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        # A traceback at start (ExceptionGroup, exit 1).
        (["--redis", REDIS, "--lease", "inf"], {}, f"--lease: {LEASE[len('lease: '):]}, "
         "got inf"),
        # Past Redis' integer milliseconds.
        ([], {"TRIOQUEUE_REDIS_URL": REDIS, "TRIOQUEUE_LEASE": "1e300"},
         f"TRIOQUEUE_LEASE: {LEASE}, got 1e+300"),
        # The store's writer spun (100 % CPU), the server never served nor stopped.
        (["--db", "q.db"], {"TRIOQUEUE_DURABILITY": "batch", "TRIOQUEUE_FLUSH_INTERVAL": "inf"},
         "TRIOQUEUE_FLUSH_INTERVAL: flush_interval: expected a finite number of seconds, "
         "got inf"),
        # A retried job's due time past any date: GET /jobs/ID and GET /jobs were 500.
        ([], {"TRIOQUEUE_RETRY_MAX": "1e300"}, "TRIOQUEUE_RETRY_MAX: retry_max: at most "
         "316224000 seconds (ten years), got 1e+300"),
        # Named by the retry policy's own fields ("base: expected ..."), no variable.
        ([], {"TRIOQUEUE_RETRY_BASE": "inf"},
         "TRIOQUEUE_RETRY_BASE: retry_base: expected a finite number, got inf"),
        ([], {"TRIOQUEUE_RETRY_JITTER": "inf"},
         "TRIOQUEUE_RETRY_JITTER: retry_jitter: expected a finite number, got inf"),
    ],
)
def test_times_the_queue_cannot_use_are_usage_errors(argv: list[str], env: dict[str, str],
                                                     message: str) -> None:
    with pytest.raises(UsageError) as refused:
        options(argv, env)
    assert str(refused.value) == message


def test_times_the_queue_can_use_are_taken() -> None:
    _, config, _ = options([], {"TRIOQUEUE_RESULT_TTL": "inf", "TRIOQUEUE_RETENTION": "inf",
                                "TRIOQUEUE_SHUTDOWN_TIMEOUT": "inf"})  # (in memory: kept)
    assert config.result_ttl == config.shutdown_timeout == float("inf")  # type: ignore[attr-defined]
    _, config, _ = options(["--redis", REDIS, "--lease", "3153600000"], {})
    assert config.lease == 3153600000  # type: ignore[attr-defined]
    # On Redis an infinite result TTL is a century (Redis takes only a finite expiry):
    # it crashed the node at start.
    _, config, _ = options(["--redis", REDIS], {"TRIOQUEUE_RESULT_TTL": "inf"})
    assert config.result_ttl == float("inf")  # type: ignore[attr-defined]


def test_the_worker_banner_counts_in_words() -> None:
    from trioqueue.cli import worker_banner

    url = "redis://:pw@127.0.0.1:6379/0"
    assert worker_banner(42, QueueConfig(redis_url=url, workers=1), "n1", ["b", "a"]) == (
        "trioqueue worker 42: 1 worker on queue 'default' at redis://:***@127.0.0.1:6379/0, "
        "node n1, lease 30 s, prefetch 0, tasks a, b")
    assert " 2 workers on " in worker_banner(42, QueueConfig(redis_url=url, workers=2),
                                             "n1", [])


def test_redacted_hides_only_the_password() -> None:
    assert redacted("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redacted("rediss://me:s3cret@host/1") == "rediss://me:***@host/1"
    assert redacted(REDIS) == REDIS
    assert (redacted("redis://127.0.0.1:6379/8?password=s3cret")
            == "redis://127.0.0.1:6379/8?password=***")
    assert (redacted("unix:///run/r.sock?db=2&password=s3cret&username=me")
            == "unix:///run/r.sock?db=2&password=***&username=me")


def test_a_redis_url_with_a_query_parameter_it_would_ignore_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^redis_url: unknown query parameters "
                       r"'socket_timeout', 'ssl' \(a redis:// or unix:// URL takes db, "
                       r"password, username\): it would be ignored$"):
        QueueConfig(redis_url="redis://127.0.0.1/0?socket_timeout=5&ssl=s3cret")
    QueueConfig(redis_url="unix:///run/r.sock?db=2&password=x&username=me")


def test_durability_options_with_a_store_are_taken(tmp_path: Path) -> None:
    db = str(tmp_path / "q.db")
    _, config, _ = options(["--durability", "batch", "--db", db], {})
    assert config.durability == "batch"  # type: ignore[attr-defined]
    _, config, _ = options([], {"TRIOQUEUE_DB": db, "TRIOQUEUE_DURABILITY": "batch",
                                "TRIOQUEUE_FSYNC": "1"})
    assert (config.durability, config.fsync) == ("batch", True)  # type: ignore[attr-defined]


def test_queue_config_refuses_batch_durability_without_a_store(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^durability: 'batch' needs persist_path"):
        QueueConfig(durability="batch")
    assert QueueConfig(durability="batch", persist_path=tmp_path / "q.db").durability == "batch"


def test_serve_durability_without_db_exits_2() -> None:
    result = run_cli("serve", "--port", "0", "--durability", "batch")
    assert result.returncode == 2
    assert "--durability: applies to a store only" in result.stderr


@pytest.mark.parametrize("argv", [["--slow-client-timeout", "inf"],
                                  ["--redis", "redis://127.0.0.1:9/0", "--lease", "inf"]])
def test_serve_refuses_a_time_it_cannot_use_before_it_opens_anything(
        tmp_path: Path, argv: list[str]) -> None:
    """``--slow-client-timeout nan``, ``inf`` or over 24.8 days was an ExceptionGroup
    traceback (exit 1) once the port was bound and the queue open; ``--lease inf`` one
    once Redis answered."""
    db = [] if "--redis" in argv else ["--db", str(tmp_path / "q.db")]
    result = run_cli("serve", "--port", "0", *db, *argv, cwd=tmp_path)
    assert (result.returncode, "Traceback" in result.stderr) == (2, False), result.stderr
    assert result.stderr.startswith(f"trioqueue serve: {argv[-2]}: "), result.stderr
    assert result.stderr.endswith(", got inf\n"), result.stderr
    assert list(tmp_path.iterdir()) == []  # no store file, no lock file


def client_options(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
                   ) -> tuple[str, str | None]:
    for name in CLIENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args: argparse.Namespace = build_parser().parse_args(["list", *argv])
    return read_client_options(args)


def test_client_commands_find_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    assert client_options([], {}, monkeypatch) == ("http://127.0.0.1:8080", None)
    assert client_options([], {"PORT": "9001"}, monkeypatch)[0] == "http://127.0.0.1:9001"
    assert client_options([], {"TRIOQUEUE_URL": "https://q.example", "TRIOQUEUE_TOKEN": "t"},
                          monkeypatch) == ("https://q.example", "t")
    assert client_options(["--url", "http://h:1", "--token", "f"],
                          {"TRIOQUEUE_URL": "http://x", "TRIOQUEUE_TOKEN": "t"},
                          monkeypatch) == ("http://h:1", "f")


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {"PORT": "eighty"}, "PORT: expected an integer, got 'eighty'"),
        ([], {"TRIOQUEUE_PORT": "0"}, "TRIOQUEUE_PORT: expected a port 1..65535, got 0"),
        (["--url", "127.0.0.1:8080"], {},
         "--url: expected http://HOST[:PORT] or https://..., got '127.0.0.1:8080'"),
        ([], {"TRIOQUEUE_URL": "ws://h"},
         "TRIOQUEUE_URL: expected http://HOST[:PORT] or https://..., got 'ws://h'"),
        # A route's URL (every request went to the wrong path: "job 'tasks' not found").
        (["--url", "http://h:1/jobs"], {}, "--url: expected the server's root, not its "
         "/jobs route: got 'http://h:1/jobs' (the root would be 'http://h:1')"),
        ([], {"TRIOQUEUE_URL": "https://h/q/metrics/"}, "TRIOQUEUE_URL: expected the "
         "server's root, not its /metrics route: got 'https://h/q/metrics/' (the root would "
         "be 'https://h/q')"),
    ],
)
def test_client_options_name_what_is_wrong(
    argv: list[str], env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UsageError) as refused:
        client_options(argv, env, monkeypatch)
    assert str(refused.value) == message


def test_options_and_positional_arguments_mix() -> None:
    """``enqueue echo --id ok1 '{"a":1}'`` was ``unrecognized arguments: {"a":1}``."""
    parser = build_parser()
    for argv in (["enqueue", "echo", "--id", "ok1", '{"a":1}'],
                 ["enqueue", "--id", "ok1", "echo", '{"a":1}'],
                 ["enqueue", "echo", '{"a":1}', "--id", "ok1"]):
        args = parser.parse_args(argv)
        assert (args.task, args.payload, args.id) == ("echo", '{"a":1}', "ok1"), argv
    assert parser.parse_args(["retry", "--task", "t", "--failed"]).failed
    assert parser.parse_args(["status", "-v", "j1"]).id == "j1"
    assert parser.parse_args(["enqueue", "echo", "-1", "--wait"]).payload == "-1"
    # After "--", all is positional, as before.
    args = parser.parse_args(["enqueue", "--wait", "--", "--odd-task", "[1]"])
    assert (args.task, args.payload, args.wait) == ("--odd-task", "[1]", True)


def test_client_url_help_names_the_port_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["list", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert ("--url URL server URL (TRIOQUEUE_URL; default http://127.0.0.1:PORT, the port "
            "from TRIOQUEUE_PORT or PORT, else 8080)") in help_text


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"trioqueue {importlib.metadata.version('trioqueue')}"


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


def test_serve_reports_a_taken_port_clearly_before_it_opens_the_queue(
        tmp_path: Path) -> None:
    """The port is bound first: a server that cannot serve never opened its store (so a
    periodic task's catch-up run was not enqueued, and on Redis no job was claimed)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(port), "--db", str(tmp_path / "q.db"))
    assert result.returncode == 1
    assert "cannot serve on 127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr
    assert "trioqueue open" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no store file, no lock file


def test_serve_bad_flag_exits_2() -> None:
    result = run_cli("serve", "--app", "nope")
    assert result.returncode == 2
    assert "MODULE:REGISTRY" in result.stderr


def test_an_app_that_raises_at_import_shows_its_traceback_and_what_it_was(
        tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text(
        "import trioqueue\nregistry = trioqueue.TaskRegistry()\n"
        "raise RuntimeError('no config file')\n")
    result = run_cli("serve", "--app", "broken_app:registry", "--port", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert 'broken_app.py", line 3, in <module>' in result.stderr  # the author's own line
    assert result.stderr.rstrip().endswith(
        "trioqueue serve: --app: importing 'broken_app' raised RuntimeError: no config "
        "file (its traceback is above)")
    (tmp_path / "factory_app.py").write_text(
        "def registry():\n    return {}['missing']\n")
    result = run_cli("serve", "--app", "factory_app:registry", "--port", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert "return {}['missing']" in result.stderr
    assert result.stderr.rstrip().endswith(
        "--app: calling factory_app:registry() raised KeyError: 'missing' (its traceback "
        "is above)")


def test_an_import_error_inside_the_app_shows_its_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only the module --app names (or a package of its path) not being there is one
    line; an ImportError from inside it (a name its own import lacks, a dependency not
    installed) is the app's error: its traceback, then the line."""
    (tmp_path / "cli_imp_tasks.py").write_text("registry = None\n")
    (tmp_path / "cli_imp_name.py").write_text("from cli_imp_tasks import nope_name\n")
    (tmp_path / "cli_imp_dep.py").write_text("import cli_imp_not_installed\n")
    (tmp_path / "cli_imp_pkg").mkdir()
    (tmp_path / "cli_imp_pkg" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec, line in (
        ("cli_imp_name:registry", "--app: importing 'cli_imp_name' raised ImportError: "
         "cannot import name 'nope_name' from 'cli_imp_tasks'"),
        ("cli_imp_dep:registry", "--app: importing 'cli_imp_dep' raised "
         "ModuleNotFoundError: No module named 'cli_imp_not_installed' (its traceback is "
         "above)"),
    ):
        with pytest.raises(UsageError) as refused:
            load_registry(spec)
        assert str(refused.value).startswith(line)
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last):"), err
        assert f'{spec.partition(":")[0]}.py", line 1, in <module>' in err
    for spec, line in (
        ("cli_imp_absent:registry", "--app: cannot import 'cli_imp_absent': No module "
         "named 'cli_imp_absent'"),
        ("cli_imp_pkg.absent:registry", "--app: cannot import 'cli_imp_pkg.absent': No "
         "module named 'cli_imp_pkg.absent'"),
        ("cli_imp_nopkg.sub:registry", "--app: cannot import 'cli_imp_nopkg.sub': No "
         "module named 'cli_imp_nopkg'"),
    ):
        with pytest.raises(UsageError) as refused:
            load_registry(spec)
        assert str(refused.value) == line
        assert capsys.readouterr().err == ""


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
        assert "trioqueue server: serving 1 task on http://" in srv.stderr()


# ---------------------------------------------------------------------------- client commands


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running_server("--workers", "2") as srv:
        yield srv
    assert srv.proc.returncode == 0, srv.captured  # no job kept it from stopping in time


def test_enqueue_then_status(server: Server) -> None:
    result = run_cli("enqueue", "echo", '{"a": 1}', "--priority", "high", "--id", "cli-1",
                     "--wait", "--url", server.url)
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert (job["id"], job["status"], job["result"]) == ("cli-1", "completed", {"a": 1})
    status = run_cli("status", "cli-1", "--url", server.url)
    assert status.returncode == 0
    assert json.loads(status.stdout)["priority"] == "high"


def test_enqueue_takes_its_payload_after_the_options(server: Server) -> None:
    result = run_cli("enqueue", "echo", "--id", "cli-mixed", '{"a": 1}', "--url", server.url,
                     "--wait")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert (job["id"], job["result"]) == ("cli-mixed", {"a": 1})


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


@pytest.mark.parametrize(("argv", "code", "needle"), [
    (["{\"a\": NaN}"], 2, "payload: not valid JSON (NaN is not a JSON value"),
    (["Infinity", "--count", "3"], 2, "payload: not valid JSON (Infinity is not a JSON"),
    (["1e400"], 1, "payload: not JSON-serializable"),
    (["[1e400]", "--count", "3"], 1, "payloads[0]: not JSON-serializable"),
    (["--delay", "nan"], 2, "--delay: expected a number of seconds >= 0, got nan"),
    (["--timeout", "inf"], 2, "--timeout: expected a number of seconds > 0, got inf"),
])
def test_enqueue_of_what_json_cannot_carry_is_one_line_not_a_traceback(
    server: Server, argv: list[str], code: int, needle: str,
) -> None:
    result = run_cli("enqueue", "echo", *argv, "--url", server.url)
    assert (result.returncode, "Traceback" in result.stderr) == (code, False), result.stderr
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_request_with_no_answer_is_named_not_left_blank() -> None:
    """httpx's timeouts have no text: "cannot reach the server: " said nothing (a cancel
    on Redis waiting for a dead node's lease, seen by a user), and the server was up."""
    import httpx

    assert transport_failure(httpx.ReadTimeout("")) == (
        "the server did not answer within 30 s (ReadTimeout); it may still carry the "
        "request out")
    assert transport_failure(httpx.ConnectError("")) == "cannot reach the server: ConnectError"
    assert transport_failure(OSError("refused")) == "cannot reach the server: refused"


def test_enqueue_count_shows_progress_without_a_tty(server: Server) -> None:
    result = run_cli("enqueue", "echo", "[1]", "--count", "40", "--url", server.url)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["enqueued"] == 40
    assert "enqueued 40/40" in result.stderr


def test_enqueue_count_run_again_with_its_ids_says_none_were_enqueued(server: Server) -> None:
    """The same ``--count --id`` command twice: the second makes no job, and says so
    (it said ``enqueued: 150``), in batches and, against a queue too small for one, a job
    a request."""
    with running_server("--workers", "1", "--capacity", "40") as small:
        for url, count in ((server.url, 150), (small.url, 45)):
            argv = ("enqueue", "echo", "[1]", "--count", str(count), "--id", "twice",
                    "--url", url)
            summaries = []
            for _ in range(2):
                result = run_cli(*argv)
                assert result.returncode == 0, result.stderr
                summaries.append(json.loads(result.stdout))
            assert [(s["enqueued"], s["existing"]) for s in summaries] == [
                (count, 0), (0, count)], summaries


def test_unreachable_server_exits_1() -> None:
    result = run_cli("status", "x", "--url", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "cannot reach the server" in result.stderr


# ---------------------------------------------------------------------------- enqueue --wait, -v


def test_enqueue_wait_exits_1_for_a_failed_job(server: Server) -> None:
    result = run_cli("enqueue", "fail", "--max-retries", "0", "--id", "cli-fails", "--wait",
                     "--url", server.url)
    assert result.returncode == 1
    assert json.loads(result.stdout)["status"] == "failed"  # the job is still shown
    assert "job cli-fails ended failed: DemoFailure" in result.stderr


def test_enqueue_wait_exits_1_for_a_cancelled_job(server: Server) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "trioqueue", "enqueue", "sleep", '{"seconds": 60}', "--id",
         "cli-cancelled", "--wait", "--url", server.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        try:
            # Cancel once the job exists (the command posts it, then waits).
            deadline = time.monotonic() + 20
            while run_cli("status", "cli-cancelled", "--url", server.url).returncode != 0:
                assert time.monotonic() < deadline, "the job was never posted"
            cancel = run_cli("cancel", "cli-cancelled", "--url", server.url)
            assert cancel.returncode == 0, cancel.stderr
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 1, err
    assert json.loads(out)["status"] == "cancelled"
    assert "job cli-cancelled ended cancelled" in err


def test_enqueue_wait_names_its_job_and_what_a_ctrl_c_left(server: Server) -> None:
    """Ctrl+C during ``enqueue --wait`` of a job without ``--id`` left the operator with
    nothing: exit 130 and no output, the job running on under an id never shown."""
    import select
    import signal

    with subprocess.Popen(
        [sys.executable, "-m", "trioqueue", "enqueue", "sleep", '{"seconds": 60}', "--wait",
         "--url", server.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        job_id = None
        try:
            assert proc.stderr is not None
            ready, _, _ = select.select([proc.stderr], [], [], 20)
            assert ready, "no line on stderr"
            line = proc.stderr.readline()
            assert line.startswith("trioqueue enqueue: job "), line
            assert line.endswith(" enqueued; waiting for it to finish\n"), line
            job_id = line.split()[3]
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            if job_id is not None:  # (the server fixture stops in time)
                run_cli("cancel", job_id, "--url", server.url)
    assert proc.returncode == 130, err
    assert (f"stopped waiting; job {job_id} was enqueued and may still run "
            f"(trioqueue status {job_id})") in err


def test_enqueue_count_stopped_by_ctrl_c_says_how_many_went(server: Server) -> None:
    """Ctrl+C during ``enqueue --count`` printed a ``BaseExceptionGroup`` traceback and
    exited 1, with no word of how many jobs were enqueued."""
    import select
    import signal

    with subprocess.Popen(
        [sys.executable, "-m", "trioqueue", "enqueue", "echo", "1", "--count", "1000000",
         "--url", server.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            for _ in range(3):  # a progress line (after a note that the queue is full)
                ready, _, _ = select.select([proc.stderr], [], [], 20)
                assert ready, "no progress line"
                line = proc.stderr.readline()
                if line.startswith("enqueued "):
                    break
                assert line.startswith("the queue is full ("), line
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert re.search(r"stopped with \d+ of 1000000 jobs enqueued \(first \w+, last \w+\)",
                     err), err


def test_enqueue_wait_with_count_is_a_usage_error(server: Server) -> None:
    result = run_cli("enqueue", "echo", "--count", "3", "--wait", "--url", server.url)
    assert result.returncode == 2
    assert "--wait: not with --count" in result.stderr
    for bad in ("0", "-1"):  # 0 waited forever, -1 was a traceback
        result = run_cli("enqueue", "echo", "--count", "3", "--concurrency", bad,
                         "--url", server.url)
        assert result.returncode == 2
        assert result.stderr.strip() == (
            f"trioqueue enqueue: --concurrency: expected a positive integer, got {bad}")


def test_no_http_request_lines_unless_verbose(server: Server) -> None:
    quiet = run_cli("enqueue", "echo", "[1]", "--count", "5", "--url", server.url)
    assert quiet.returncode == 0, quiet.stderr
    assert "HTTP Request" not in quiet.stderr
    assert "httpx" not in quiet.stderr
    assert "enqueued 5/5" in quiet.stderr  # the progress lines stay
    for argv in (["-v", "status", "cli-1"], ["status", "cli-1", "-v"]):
        loud = run_cli(*argv, "--url", server.url)
        assert "HTTP Request: GET" in loud.stderr, argv


# ---------------------------------------------------------------------------- list, cancel, retry


def test_list_as_a_table_and_as_json(server: Server) -> None:
    assert run_cli("enqueue", "echo", '"x"', "--id", "cli-list", "--wait", "--url", server.url
                   ).returncode == 0
    table = run_cli("list", "--status", "completed", "--url", server.url)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "TASK", "STATUS", "PRIORITY", "ATTEMPTS", "CREATED",
                              "(UTC)", "ERROR"]
    assert rows
    assert all(row.split()[2] == "completed" for row in rows)
    assert any(row.split()[:2] == ["cli-list", "echo"] for row in rows)
    raw = run_cli("list", "--limit", "1", "--json", "--url", server.url)
    jobs = json.loads(raw.stdout)["jobs"]
    assert len(jobs) == 1
    assert {"id", "task", "status", "created_at"} <= set(jobs[0])
    nothing = run_cli("list", "--status", "scheduled", "--url", server.url)
    assert nothing.stdout.strip() == "no jobs scheduled"


def test_list_by_task_page_by_page_and_all(server: Server) -> None:
    ids = []
    for i in range(3):
        done = run_cli("enqueue", "echo", str(i), "--id", f"cli-page-{i}", "--wait",
                       "--url", server.url)
        assert done.returncode == 0, done.stderr
        ids.append(f"cli-page-{i}")
    first = run_cli("list", "--task", "echo", "--limit", "2", "--json", "--url", server.url)
    assert first.returncode == 0, first.stderr
    page = json.loads(first.stdout)
    assert [j["id"] for j in page["jobs"]] == ["cli-page-2", "cli-page-1"]
    assert page["next"] == "cli-page-1"
    table = run_cli("list", "--task", "echo", "--limit", "2", "--url", server.url)
    assert table.returncode == 0, table.stderr
    assert [row.split()[0] for row in table.stdout.splitlines()[1:]] == ids[:0:-1]
    assert "--before cli-page-1" in table.stderr
    second = run_cli("list", "--task", "echo", "--limit", "1", "--before", "cli-page-1",
                     "--json", "--url", server.url)
    assert [j["id"] for j in json.loads(second.stdout)["jobs"]] == ["cli-page-0"]
    every = run_cli("list", "--task", "echo", "--all", "--json", "--url", server.url)
    listed = [j["id"] for j in json.loads(every.stdout)["jobs"]]
    assert listed[:3] == ids[::-1]
    assert json.loads(every.stdout)["next"] is None
    none = run_cli("list", "--task", "no-such-task", "--url", server.url)
    assert none.stdout.strip() == "no jobs of task no-such-task"
    bad = run_cli("list", "--before", "not an id", "--url", server.url)
    assert bad.returncode != 0
    assert "before: 'not an id' has characters other than" in bad.stderr


def test_table_cells_escape_control_characters() -> None:
    # A task name or an error text must not drive the terminal (an escape sequence).
    evil = "boom\x1b[2J\x1b]0;owned\x07\nsecond line\u202e"
    cell = clean(evil)
    assert cell.isprintable()
    assert cell == "boom\\x1b[2J\\x1b]0;owned\\x07\\nsecond line\\u202e"
    assert clean("x" * 100, 10) == "xxxxxxx..."
    assert clean(None) == "-"
    table = render_table(["A", "LONGER"], [["1", "2"], ["333", clean(evil, 11)]])
    assert table.splitlines() == ["A    LONGER", "1    2", "333  boom\\x1b..."]


def test_list_bad_flags_exit_2(server: Server) -> None:
    for argv in (["--limit", "0"], ["--status", "done"], ["--limit", "many"]):
        result = run_cli("list", *argv, "--url", server.url)
        assert result.returncode == 2, argv
        assert ("--limit" in result.stderr) or ("--status" in result.stderr)


def test_list_into_a_closed_pipe_is_quiet(server: Server) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: every write fails with EPIPE
    try:
        result = subprocess.run(
            [sys.executable, "-m", "trioqueue", "list", "--json", "--url", server.url],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=30, check=False)
    finally:
        os.close(write_end)
    assert result.returncode == 141
    assert result.stderr == ""


@pytest.mark.parametrize(("argv", "message"), [
    (["enqueue", "echo", "--delay", "-1"], "--delay: expected a number of seconds >= 0"),
    (["enqueue", "echo", "--delay", "nan"], "--delay: expected a number of seconds >= 0"),
    (["enqueue", "echo", "--timeout", "0"], "--timeout: expected a number of seconds > 0"),
    (["enqueue", "echo", "--max-retries", "-1"], "--max-retries: expected an integer 0.."),
    (["enqueue", "echo", "--id", "x y"], "--id: 'x y' has characters other than"),
    (["enqueue", "echo", "--id", "a" * 126, "--count", "100"],
     "--id: must be 1 to 128 characters, got 129"),  # (the last id, a...a-99)
    (["list", "--before", "bad id"], "--before: 'bad id' has characters other than"),
])
def test_bad_job_flags_are_usage_errors_naming_the_flag(argv: list[str], message: str) -> None:
    """They were sent, and the server's 400 named a JSON field (``max_retries``), exit 1;
    checked before any request now (no server here: a request would fail otherwise)."""
    result = run_cli(*argv, "--url", "http://127.0.0.1:9")
    assert result.returncode == 2, result.stderr
    assert f"trioqueue {argv[0]}: {message}" in result.stderr


def test_a_url_with_a_path_or_a_query_is_named_as_the_problem(server: Server) -> None:
    """``--url http://host:port/queue`` gave ``JobNotFound: no route for /queue/jobs/...``
    (``UnknownTask`` for enqueue), and ``?x=1`` sent the request to the dashboard."""
    status = run_cli("status", "some-job", "--url", server.url + "/queue")
    assert status.returncode == 1
    assert "JobNotFound" not in status.stderr
    assert "no route for /queue/jobs/some-job: is the client's URL the server's root" in (
        status.stderr)
    enqueue = run_cli("enqueue", "echo", "--url", server.url + "/queue")
    assert "UnknownTask" not in enqueue.stderr
    assert "is the client's URL the server's root" in enqueue.stderr
    query = run_cli("list", "--url", server.url + "?x=1")
    assert query.returncode == 2
    assert "--url: expected the server's address without a query or fragment" in query.stderr


def test_cancel_and_retry_one_job(server: Server) -> None:
    assert run_cli("enqueue", "echo", "--id", "cli-later", "--delay", "3600", "--url",
                   server.url).returncode == 0
    cancelled = run_cli("cancel", "cli-later", "--url", server.url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["status"] == "cancelled"
    again = run_cli("cancel", "cli-later", "--url", server.url)
    assert again.returncode == 1
    assert "InvalidTransition: job cli-later: cannot cancel a job that is cancelled" in (
        again.stderr)
    retried = run_cli("retry", "cli-later", "--url", server.url)
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["status"] in ("queued", "processing", "completed")
    for command in ("cancel", "retry"):
        missing = run_cli(command, "no-such-job", "--url", server.url)
        assert missing.returncode == 1
        assert "JobNotFound" in missing.stderr
        assert "no-such-job" in missing.stderr


def test_retry_failed_jobs_in_bulk(server: Server) -> None:
    for i in range(3):
        assert run_cli("enqueue", "fail", "--max-retries", "0", "--id", f"cli-bulk-{i}",
                       "--wait", "--url", server.url).returncode == 1
    none = run_cli("retry", "--failed", "--task", "echo", "--url", server.url)
    assert (none.returncode, json.loads(none.stdout)) == (0, {"retried": 0})
    typo = run_cli("retry", "--failed", "--task", "fial", "--url", server.url)
    assert typo.returncode == 1  # a misspelt task is refused (404), not 0 jobs retried
    assert "UnknownTask: task: no handler registered as 'fial'" in typo.stderr, typo.stderr
    result = run_cli("retry", "--failed", "--task", "fail", "--url", server.url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["retried"] >= 3
    status = json.loads(run_cli("status", "cli-bulk-0", "--url", server.url).stdout)
    assert status["attempts"] <= 1  # fresh attempts (it may have run and failed again)
    # Only echo's: every cancelled job would bring back test_enqueue_wait_exits_1_for_a_
    # cancelled_job's sleep of 60 s, which then held the server's shutdown until it was
    # killed (20 s).
    cancelled = run_cli("retry", "--cancelled", "--task", "echo", "--url", server.url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "retried" in json.loads(cancelled.stdout)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "expected a job ID, or --failed or --cancelled"),
        (["x", "--failed"], "a job ID or --failed, not both"),
        (["--task", "echo"], "--task: only with --failed or --cancelled"),
        (["x", "--task", "echo"], "--task: only with --failed or --cancelled"),
        (["--failed", "--cancelled"], "not allowed with argument"),
    ],
)
def test_retry_usage_errors_exit_2(server: Server, argv: list[str], message: str) -> None:
    result = run_cli("retry", *argv, "--url", server.url)
    assert result.returncode == 2
    assert message in result.stderr


# ---------------------------------------------------------------------------- metrics, tasks


def test_metrics(server: Server) -> None:
    result = run_cli("metrics", "--url", server.url)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert {"enqueued", "completed", "queued", "wait_p99"} <= set(metrics)
    text = run_cli("metrics", "--prometheus", "--url", server.url)
    assert text.returncode == 0, text.stderr
    assert "# TYPE trioqueue_jobs_completed_total counter" in text.stdout
    assert 'trioqueue_jobs_queued{priority="high"}' in text.stdout


def test_tasks(server: Server) -> None:
    result = run_cli("tasks", "--url", server.url)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "PRIORITY", "MAX_RETRIES", "TIMEOUT", "SCHEDULE",
                              "EVERY", "CONCURRENCY", "NEXT", "RUN", "(UTC)"]
    assert [row.split()[0] for row in rows] == ["echo", "fail", "flaky", "sleep"]
    assert rows[0].split()[1:] == ["medium", "3", "-", "-", "-", "-", "-"]
    raw = json.loads(run_cli("tasks", "--json", "--url", server.url).stdout)
    assert [t["name"] for t in raw["tasks"]] == ["echo", "fail", "flaky", "sleep"]


def test_tasks_shows_a_schedules_zone_and_the_next_run(tmp_path: Path) -> None:
    (tmp_path / "periodic.py").write_text(
        "import trioqueue\nregistry = trioqueue.TaskRegistry()\n"
        "@registry.task(schedule='0 9 * * *', tz='Europe/Paris')\n"
        "async def morning(job): ...\n"
        "@registry.task(schedule='@daily')\nasync def nightly(job): ...\n"
    )
    with running_server("--app", "periodic:registry", cwd=tmp_path) as srv:
        result = run_cli("tasks", "--url", srv.url)
        raw = json.loads(run_cli("tasks", "--json", "--url", srv.url).stdout)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "0 9 * * * (Europe/Paris)" in rows["morning"]
    assert "@daily" in rows["nightly"]
    for task in raw["tasks"]:  # the server's next run, shown in the table's format
        shown = datetime.fromisoformat(task["next_run"]).strftime("%Y-%m-%d %H:%M:%S")
        assert rows[task["name"]].endswith(shown), (rows, task)
    assert rows["nightly"].endswith("00:00:00")


def test_a_token_from_the_environment_and_a_clear_refusal_without_it() -> None:
    with running_server("--token", "s3cret") as srv:
        refused = run_cli("tasks", "--url", srv.url)
        assert refused.returncode == 1
        assert "Unauthorized" in refused.stderr
        assert "give --token or set TRIOQUEUE_TOKEN" in refused.stderr
        ok = run_cli("tasks", env={"TRIOQUEUE_URL": srv.url, "TRIOQUEUE_TOKEN": "s3cret"})
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.startswith("NAME")


def test_enqueue_count_stopped_names_the_jobs_that_did_not_go() -> None:
    """Stopped, ``enqueue --count`` named the first and last id of the requests that had
    ended (in the order they ended), not which jobs of the sequence were left: now the
    ranges not enqueued (or not answered), by id with ``--id``, which the same command
    enqueues again."""
    import select
    import signal

    with running_server("--workers", "1", "--capacity", "150",
                        "--shutdown-timeout", "1") as srv:
        # One batch of 100 fits beside the running job; the next two wait for room.
        with subprocess.Popen(
            [sys.executable, "-m", "trioqueue", "enqueue", "sleep", '{"seconds": 60}',
             "--count", "300", "--id", "st", "--url", srv.url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ) as proc:
            try:
                assert proc.stderr is not None
                said = b""
                while b"the queue is full (" not in said or b"enqueued 100/300" not in said:
                    ready, _, _ = select.select([proc.stderr], [], [], 20)
                    chunk = os.read(proc.stderr.fileno(), 4096) if ready else b""
                    assert chunk, f"no note that the queue is full: {said!r}"
                    said += chunk
                proc.send_signal(signal.SIGINT)
                _, rest = proc.communicate(timeout=30)
                err = (said + rest).decode()
            finally:
                if proc.poll() is None:
                    proc.kill()
        assert proc.returncode == 130, err
        match = re.search(r"stopped with 100 of 300 jobs enqueued \(first st-(\d+), last "
                          r"st-(\d+)\); not enqueued \(or unanswered\), ids: (.*); the same "
                          r"command again enqueues just those\n", err)
        assert match, err
        first, last = int(match[1]), int(match[2])
        assert (first % 100, last) == (0, first + 99)  # one batch, in order
        missing = [f"st-{a}..st-{b}" for a, b in ((0, first - 1), (last + 1, 299)) if a < b]
        assert match[3] == ", ".join(missing)  # the rest, in the order asked for
        assert run_cli("status", f"st-{last}", "--url", srv.url).returncode == 0
        for name in missing:
            gone = run_cli("status", name.split("..")[0], "--url", srv.url)
            assert gone.returncode == 1, gone.stdout
