"""Crash tests: a real trioqueue process, killed with SIGKILL by its own pid.

Nothing here is simulated: the child (tests/crash_child.py) runs the engine with the
SQLite store in ``durability="sync"``, the test kills it at a random moment, and a second
process recovers the same file.  Every id the first process acknowledged must have run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.sqlite_util import sqlite_at

CHILD = str(Path(__file__).with_name("crash_child.py"))
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@contextmanager
def spawn(*args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """The child, killed on the way out if it still runs, its pipes closed."""
    child = subprocess.Popen(
        [sys.executable, CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env or ENV,
    )
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        for pipe in (child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
        ok: tuple[int, ...] = (0, -signal.SIGKILL)) -> int:
    proc = subprocess.run(  # kills the child if it overruns the timeout
        [sys.executable, CHILD, *args], capture_output=True, text=True, env=env or ENV,
        timeout=timeout, check=False,
    )
    if proc.returncode not in ok:
        raise AssertionError(f"child {args} exited {proc.returncode}:\n{proc.stderr}")
    return proc.returncode


def ran(db: Path) -> list[str]:
    path = Path(f"{db}.ran")
    return path.read_text().split() if path.exists() else []


def stored(db: Path, job_id: str) -> tuple[str, int, str | None]:
    with sqlite_at(db) as conn:
        row = conn.execute(
            "SELECT status, attempts, error FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
    assert row is not None, f"{job_id} not in the store"
    return row[0], row[1], row[2]


def test_sigkill_at_random_moments_loses_no_acknowledged_job(tmp_path: Path) -> None:
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    rnd = random.Random(seed)
    for round_ in range(3):
        db = tmp_path / f"crash{round_}.db"
        with spawn("produce", str(db)) as child:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "open", child.stderr
            target = rnd.randrange(20, 1500)
            acked: list[str] = []
            deadline = time.monotonic() + 30
            while len(acked) < target and time.monotonic() < deadline:
                line = child.stdout.readline()
                if not line:
                    break
                acked.append(line.strip())
            os.kill(child.pid, signal.SIGKILL)  # mid-flight: more enqueues are under way
            child.wait()
            assert child.returncode == -signal.SIGKILL
            # Whatever it printed after our last read was acknowledged too.
            acked += [line.strip() for line in child.stdout.read().split("\n") if line.strip()]
        assert len(acked) >= min(target, 20), f"seed {seed}: the child acknowledged too little"
        assert run("drain", str(db)) == 0
        missing = set(acked) - set(ran(db))
        assert not missing, f"seed {seed}, round {round_}: acknowledged but never ran: {missing}"
        for job_id in acked:
            assert stored(db, job_id)[0] == "completed", (seed, job_id)


def test_jobs_running_at_the_kill_run_again_after_restart(tmp_path: Path) -> None:
    db = tmp_path / "slow.db"
    with spawn("slow", str(db), "6") as child:
        assert child.stdout is not None
        started = set()
        acknowledged = False
        while len(started) < 4 or not acknowledged:  # 4 workers: 4 jobs in their handlers
            line = child.stdout.readline()
            assert line, child.stderr.read() if child.stderr else ""
            if line.startswith("started "):
                started.add(line.split()[1])
            acknowledged |= line.strip() == "enqueued"
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert run("drain", str(db), env={**ENV, "CRASH_CHILD_QUICK": "1"}) == 0
    runs = ran(db)
    for i in range(6):
        status, attempts, _ = stored(db, f"s{i}")
        assert status == "completed"
        if f"s{i}" in started:
            assert runs.count(f"s{i}") == 2  # at least once: it ran again
            assert attempts == 2  # the killed attempt counts
        else:
            assert runs.count(f"s{i}") == 1


def test_a_cancel_that_returned_survives_a_sigkill(tmp_path: Path) -> None:
    """With durability="sync", cancel() returns once the CANCELLED state is committed,
    as retry() does: a cancelled job does not come back and run after a crash."""
    db = tmp_path / "cancel.db"
    with spawn("cancel", str(db), env={**ENV, "CRASH_CHILD_QUICK": "0"}) as child:
        out, err = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL, err
        assert "cancelled" in out.split(), err
    assert stored(db, "c-running")[0] == "cancelled"
    assert stored(db, "c-later")[0] == "cancelled"
    assert run("drain", str(db), env={**ENV, "CRASH_CHILD_QUICK": "1"}) == 0
    assert ran(db) == ["c-running"]  # the one start before the cancel


def test_a_job_that_kills_its_process_every_time_ends_failed(tmp_path: Path) -> None:
    db = tmp_path / "suicide.db"
    assert run("suicide", str(db)) == -signal.SIGKILL
    restarts = 0
    while run("drain", str(db)) != 0:
        restarts += 1
        assert restarts <= 5, "the job keeps killing the process: attempts are not counted"
    status, attempts, error = stored(db, "boom")
    assert status == "failed"
    assert attempts == 3  # max_retries=2: three attempts counted, then the dead letter
    assert error is not None
    assert "ProcessDied" in error
    # It ran once in the first process (that attempt could not be counted: the crash came
    # before its start was stored) and once per counted attempt after.
    assert ran(db).count("boom") == 4
    assert restarts == 3


def test_ctrl_c_is_a_clean_shutdown(tmp_path: Path) -> None:
    db = tmp_path / "clean.db"
    with spawn("slow", str(db), "2", env={**ENV, "CRASH_CHILD_QUICK": "1"}) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "enqueued"
        child.send_signal(signal.SIGINT)  # KeyboardInterrupt: open_queue shuts down in order
        assert child.wait(timeout=30) == -signal.SIGINT  # KeyboardInterrupt came out
    with sqlite_at(db) as conn:
        clean = conn.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone()[0]
        statuses = [r[0] for r in conn.execute("SELECT status FROM jobs ORDER BY id")]
    assert clean == "1"
    assert statuses == ["completed", "completed"]
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0


def test_a_job_that_exits_its_process_every_time_ends_failed_after_bounded_runs(
    tmp_path: Path,
) -> None:
    """``os._exit(1)`` in the handler, max_retries=1: each restart after the first crash
    commits the attempt's start before the handler runs, so the attempts add up and the
    job ends FAILED instead of taking every restart down."""
    db = tmp_path / "exit.db"
    assert run("exit", str(db), ok=(1,)) == 1
    restarts = 0
    while run("drain", str(db), ok=(0, 1)) != 0:
        restarts += 1
        assert restarts <= 5, "the job keeps ending the process: attempts are not counted"
    status, attempts, error = stored(db, "bye")
    assert (status, attempts) == ("failed", 2)  # max_retries=1: two attempts counted
    assert error is not None
    assert error.startswith("ProcessDied: the process stopped while attempt 2 ran")
    # The first run's start was never stored (starts are committed first only after a
    # crash): max_retries + 2 runs in all, two of them after restarts; the third restart
    # fails the job without running it.
    assert ran(db).count("bye") == 3
    assert restarts == 2


def test_ctrl_c_in_a_handler_that_never_yields_is_the_graceful_shutdown(
    tmp_path: Path,
) -> None:
    """The Ctrl+C lands in the handler that is computing (trio raises it wherever the
    signal finds unprotected code).  It is not that job's failure: the job goes back to
    QUEUED with its attempt counted, the other running job finishes within
    shutdown_timeout as in any graceful shutdown, and KeyboardInterrupt comes out."""
    db = tmp_path / "ctrlc.db"
    with spawn("ctrlc", str(db)) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "busy"
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == -signal.SIGINT
        assert child.stderr is not None
        err = child.stderr.read()
    assert err.rstrip().endswith("KeyboardInterrupt"), err
    with sqlite_at(db) as conn:
        clean = conn.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone()[0]
        rows = dict(
            (r[0], r[1:]) for r in conn.execute("SELECT id, status, attempts, error FROM jobs")
        )
    assert clean == "1"
    assert rows["nap"] == ("completed", 1, None)  # not cut short: the shutdown was graceful
    assert rows["compute"] == ("queued", 1, None)  # put back, not failed
