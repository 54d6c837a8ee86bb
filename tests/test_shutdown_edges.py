"""Shutdowns that come at awkward moments: while the queue opens, twice in a row, from
outside.  What each must leave: a store file as clean as it was, one
``KeyboardInterrupt``, an account in the log of what was cut off."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import trioqueue
from tests.sqlite_util import sqlite_at


def cancelled_as_it_opens(monkeypatch: pytest.MonkeyPatch) -> trio.CancelScope:
    """A cancel scope that is cancelled once the store's thread has opened the file, before
    the queue's open returns to the loop (as a deadline or a second signal can)."""
    from trioqueue.testing import SqliteStore

    scope = trio.CancelScope()
    real = SqliteStore.open.__func__  # type: ignore[attr-defined]

    def opened_then_cancelled(cls: type[SqliteStore], *args: Any, **kwargs: Any) -> Any:
        store = real(cls, *args, **kwargs)
        trio.from_thread.run_sync(scope.cancel)
        return store

    monkeypatch.setattr(SqliteStore, "open", classmethod(opened_then_cancelled))
    return scope


def _clean(path: Path) -> str | None:
    with sqlite_at(path) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone()
    return None if row is None else str(row[0])


async def test_a_queue_cancelled_as_its_store_opens_leaves_the_file_clean(
    tmp_path: Path, caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel landed once the store's thread had opened the file and before the
    queue ran: the file was let go marked "not closed cleanly", and the next open
    warned of a crash and recovered as after one.  Nothing was read or written: the
    file is closed as clean as it was."""
    registry = trioqueue.TaskRegistry()

    @registry.task()
    async def echo(job: trioqueue.Job) -> Any:
        return job.payload

    config = trioqueue.QueueConfig(persist_path=tmp_path / "q.db")
    async with trioqueue.open_queue(registry, config) as q:
        await q.enqueue("echo", 1, job_id="later", delay=3600)
    assert _clean(tmp_path / "q.db") == "1"
    with monkeypatch.context() as patch:
        scope = cancelled_as_it_opens(patch)
        with scope:
            async with trioqueue.open_queue(registry, config):
                raise AssertionError("opened")  # pragma: no cover - the cancel comes first
    assert scope.cancelled_caught
    assert _clean(tmp_path / "q.db") == "1"
    async with trioqueue.open_queue(registry, config) as q:
        assert (await q.get("later")).status is trioqueue.JobStatus.SCHEDULED
    assert "not closed cleanly" not in caplog.text


async def test_a_file_that_was_not_clean_keeps_its_recovery_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same cancel on a file a crash left: it is left as it was, the next open
    recovers it."""
    registry = trioqueue.TaskRegistry()
    config = trioqueue.QueueConfig(persist_path=tmp_path / "q.db")
    async with trioqueue.open_queue(registry, config):
        pass
    with sqlite_at(tmp_path / "q.db") as conn:  # as a crash leaves it
        conn.execute("UPDATE meta SET value = '0' WHERE key = 'clean'")
    with cancelled_as_it_opens(monkeypatch) as scope:
        async with trioqueue.open_queue(registry, config):
            raise AssertionError("opened")  # pragma: no cover - the cancel comes first
    assert scope.cancelled_caught
    assert _clean(tmp_path / "q.db") == "0"


CTRL_C_TWICE = textwrap.dedent("""
    import logging, os, signal, threading
    import trio, trioqueue

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    registry = trioqueue.TaskRegistry()
    started = threading.Event()

    @registry.task()
    async def slow(job):
        started.set()
        await trio.sleep(1000)

    class SecondCtrlC(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("trioqueue shutting down"):
                os.kill(os.getpid(), signal.SIGINT)  # again, during the shutdown

    logging.getLogger("trioqueue").addHandler(SecondCtrlC())
    logging.getLogger("trioqueue").setLevel(logging.INFO)

    async def main():
        config = trioqueue.QueueConfig(workers=1, shutdown_timeout=0.5, **STORE)
        async with trioqueue.open_queue(registry, config) as q:
            job = await q.enqueue("slow")
            while not started.is_set():
                await trio.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)
            await q.wait(job.id)

    try:
        trio.run(main)
    except KeyboardInterrupt:
        print("KeyboardInterrupt")
    except BaseException as exc:
        print("not a KeyboardInterrupt:", repr(exc))
""")


def test_ctrl_c_twice_in_a_program_is_one_keyboard_interrupt(tmp_path: Path) -> None:
    """The second Ctrl+C, during the shutdown the first began, made ``open_queue`` raise
    ``BaseExceptionGroup("the body raised, and an engine task failed", [KeyboardInterrupt,
    KeyboardInterrupt])``: ``except KeyboardInterrupt`` around ``trio.run`` missed it."""
    for store in ("{}", repr({"persist_path": str(tmp_path / "q.db")})):
        proc = subprocess.Popen(
            [sys.executable, "-c", f"STORE = {store}\n{CTRL_C_TWICE}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert out.strip() == "KeyboardInterrupt", (out, err[-3000:])


async def test_a_server_told_to_stop_as_it_starts_runs_none_of_the_stored_jobs(
    tmp_path: Path
) -> None:
    """A SIGTERM while ``trioqueue serve --db`` opened its store: the stored jobs were
    started once the queue was open (the workers began during the store's recovery),
    then cut off by the shutdown, each losing an attempt (``max_retries=0``: FAILED on
    the next open).  The workers begin once the queue is open, and a server whose
    ``stop`` was set meanwhile closes it before any of them runs."""
    from trioqueue.server import ServerSettings, serve

    started: list[str] = []
    registry = trioqueue.TaskRegistry()

    @registry.task(max_retries=0)
    async def slow(job: trioqueue.Job) -> None:
        started.append(job.id)
        await trio.sleep(1000)

    blocking = trio.Event()

    @registry.task()
    async def block(job: trioqueue.Job) -> None:
        started.append(job.id)
        blocking.set()
        await trio.sleep(1000)

    config = trioqueue.QueueConfig(persist_path=tmp_path / "q.db", workers=4,
                                   durability="sync", shutdown_timeout=0.1)
    async with trioqueue.open_queue(registry, attrs.evolve(config, workers=1)) as q:
        await q.enqueue("block")
        await blocking.wait()  # the one worker busy: the next jobs stay queued
        for i in range(3):
            await q.enqueue("slow", job_id=f"j{i}")
    started.clear()
    stop = trio.Event()
    stop.set()  # (as the CLI's signal watcher does, while the queue opens)
    for _ in range(4):  # (it depended on which task trio ran first: 2 in 3 runs met it)
        opened = trio.Event()  # (the CLI's: a signal before it is set stops the opening)
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve, registry, config, ServerSettings(port=0),
                                        stop=stop, opened=opened))
            assert opened.is_set()
    assert started == []
    async with trioqueue.open_queue(registry, attrs.evolve(config, workers=1)) as q:
        for i in range(3):
            job = await q.get(f"j{i}")
            assert (job.status, job.attempts) == (trioqueue.JobStatus.QUEUED, 0)


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_a_node_told_to_stop_while_redis_does_not_answer_stops_then(command: str) -> None:
    """``trioqueue worker`` read signals only once its queue was open: against a Redis
    that accepts and never answers it ignored SIGTERM, SIGTERM, SIGINT until its connect
    gave up (17 s), then died by the signal without its error line (``serve`` stopped
    at the second one).  A signal while the queue opens stops the opening: the node has
    run nothing yet."""
    import signal
    import socket

    from tests.redis_util import free_port

    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        argv = [sys.executable, "-m", "trioqueue", command, "--app",
                "tests.cli_redis_app:registry", "--redis", url, "--queue", "never"]
        if command == "serve":
            argv += ["--port", str(free_port())]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            silent.settimeout(60)
            conn, _ = silent.accept()  # the node is connecting (and will wait)
            with conn:
                proc.send_signal(signal.SIGTERM)
                out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (out, err[-3000:])
    assert "SIGTERM while the queue opens: stopping" in err
    assert "cannot use redis" not in err


async def test_a_queue_cancelled_from_outside_says_what_it_cut_off(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A deadline around ``open_queue`` with two jobs running: they ended FAILED
    (memory mode) and the log said "0 in flight", nothing of them."""
    registry = trioqueue.TaskRegistry()
    running = trio.Event()

    @registry.task()
    async def slow(job: trioqueue.Job) -> None:
        running.set()
        await trio.sleep(1000)

    with trio.move_on_after(10):
        async with trioqueue.open_queue(registry, trioqueue.QueueConfig(workers=2)) as q:
            for _ in range(3):
                await q.enqueue("slow")
            await running.wait()
            await trio.sleep_forever()
    assert ("2 running jobs interrupted at once, without shutdown_timeout (the code around "
            "the queue was cancelled, or an engine task failed): failed: aborted: the queue "
            "was cancelled") in caplog.text
    metrics = q.metrics()
    assert (metrics.failed, metrics.dropped) == (2, 1)


CTRL_C_AT_OPEN = textwrap.dedent("""
    import os, signal, sqlite3, sys
    import trio, trioqueue
    from trioqueue.testing import SqliteStore

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    path = sys.argv[1]
    registry = trioqueue.TaskRegistry()
    config = trioqueue.QueueConfig(persist_path=path)

    async def first():
        async with trioqueue.open_queue(registry, config):
            pass

    trio.run(first)
    real = SqliteStore.open.__func__

    def opened_then_ctrl_c(cls, *args, **kwargs):
        store = real(cls, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # the file is open: Ctrl+C now
        return store

    SqliteStore.open = classmethod(opened_then_ctrl_c)

    async def main():
        async with trioqueue.open_queue(registry, config):
            print("opened")

    try:
        trio.run(main)
    except KeyboardInterrupt:
        print("KeyboardInterrupt")
    with sqlite3.connect(path) as db:
        print("clean", db.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone()[0])
""")


def test_a_ctrl_c_as_the_store_opens_leaves_the_file_clean(tmp_path: Path) -> None:
    """In a program without signal handling of its own, Ctrl+C comes as a
    ``KeyboardInterrupt`` where a cancel would: the file is as clean as it was."""
    proc = subprocess.run([sys.executable, "-c", CTRL_C_AT_OPEN, str(tmp_path / "q.db")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.stdout.split() == ["KeyboardInterrupt", "clean", "1"], (
        proc.stdout, proc.stderr[-3000:])


async def test_a_recovery_that_fails_does_not_wait_for_workers_that_never_started(
    tmp_path: Path, autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers begin once the store's jobs are back: a recovery that raised left
    the shutdown waiting ``shutdown_timeout`` for workers that never ran."""
    from trioqueue.testing import LocalBackend

    async def broken(self: object) -> None:
        await trio.lowlevel.checkpoint()
        raise trioqueue.StoreError("q.db: cannot read")

    monkeypatch.setattr(LocalBackend, "recover", broken)
    start = trio.current_time()
    with pytest.raises(trioqueue.StoreError, match="cannot read"):
        async with trioqueue.open_queue(trioqueue.TaskRegistry(), trioqueue.QueueConfig(
                shutdown_timeout=30)):
            raise AssertionError("opened")  # pragma: no cover - the recovery fails first
    assert trio.current_time() - start < 30
