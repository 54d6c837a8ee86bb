"""Crash tests: a real trioqueue process, killed with SIGKILL by its own pid.

Nothing here is simulated: the child (tests/crash_child.py) runs the engine with the
SQLite store in ``durability="sync"``, the test kills it at a random moment, and a second
process recovers the same file.  Every id the first process acknowledged must have run.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

CHILD = str(Path(__file__).with_name("crash_child.py"))
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env or ENV,
    )


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> int:
    proc = subprocess.run(
        [sys.executable, CHILD, *args], capture_output=True, text=True, env=env or ENV,
        timeout=timeout, check=False,
    )
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"child {args} exited {proc.returncode}:\n{proc.stderr}")
    return proc.returncode


def ran(db: Path) -> list[str]:
    path = Path(f"{db}.ran")
    return path.read_text().split() if path.exists() else []


def stored(db: Path, job_id: str) -> tuple[str, int, str | None]:
    with sqlite3.connect(db) as conn:
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
        child = spawn("produce", str(db))
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
        child.stdout.close()
        assert child.stderr is not None
        child.stderr.close()
        assert len(acked) >= min(target, 20), f"seed {seed}: the child acknowledged too little"
        assert run("drain", str(db)) == 0
        missing = set(acked) - set(ran(db))
        assert not missing, f"seed {seed}, round {round_}: acknowledged but never ran: {missing}"
        for job_id in acked:
            assert stored(db, job_id)[0] == "completed", (seed, job_id)


def test_jobs_running_at_the_kill_run_again_after_restart(tmp_path: Path) -> None:
    db = tmp_path / "slow.db"
    child = spawn("slow", str(db), "6")
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
    child.stdout.close()
    assert child.stderr is not None
    child.stderr.close()
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
    child = spawn("slow", str(db), "2", env={**ENV, "CRASH_CHILD_QUICK": "1"})
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "enqueued"
    child.send_signal(signal.SIGINT)  # KeyboardInterrupt: open_queue shuts down in order
    child.wait(timeout=30)
    child.stdout.close()
    assert child.stderr is not None
    child.stderr.close()
    with sqlite3.connect(db) as conn:
        clean = conn.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone()[0]
        statuses = [r[0] for r in conn.execute("SELECT status FROM jobs ORDER BY id")]
    assert clean == "1"
    assert statuses == ["completed", "completed"]
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
