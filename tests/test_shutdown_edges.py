"""Shutdowns that come at awkward moments: while the queue opens, twice in a row, from
outside.  What each must leave: a store file as clean as it was, one
``KeyboardInterrupt``, an account in the log of what was cut off."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

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
