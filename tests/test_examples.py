"""Smoke tests: every script in examples/ runs with --quick, by itself, in a subprocess.

Subprocesses, not imports: each example owns its ``trio.run`` and its peers (an SMTP
server in a thread, an HTTP receiver, a ``trioqueue serve``), and aiosmtpd warns about
asyncio APIs in ways that ``filterwarnings = error`` would turn into failures here.
Each run has a hard deadline; nothing sleeps and then asserts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from subprocess import Popen

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEADLINE = 120.0
"""A run that takes longer than this is stopped as hung.  (How long ``--quick`` takes is
not asserted: on a shared, loaded machine a wall-clock bound is a coin toss.)"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_example(name: str, *args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True, text=True, timeout=DEADLINE, env=_env(), cwd=cwd, check=False,
    )
    assert result.returncode == 0, (
        f"{name} exited {result.returncode}\n--- stdout\n{result.stdout}\n"
        f"--- stderr\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


@contextmanager
def started_example(name: str, *args: str, cwd: Path | None = None) -> Iterator[Popen[str]]:
    """The example running in the background; killed (if still running) and reaped on exit."""
    with Popen(
        [sys.executable, str(EXAMPLES / name), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=cwd,
    ) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def read_until(proc: Popen[str], marker: str) -> None:
    """Read stdout lines until one contains ``marker`` (the process must say it, or end).

    A process that never prints it ends by itself (every example does), so this is bounded.
    """
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            return
    pytest.fail(f"the example ended without printing {marker!r}:\n{''.join(lines)}")


def finish(proc: Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"no exit within {DEADLINE} s\n{out}\n{err}")
    return proc.returncode, out, err


# Each example and lines its --quick output must contain.
QUICK = {
    "embed_in_trio_app.py": ["finished: 120 of 120 files checksummed", "shut down cleanly"],
    "email_sender.py": ["60 emails", "57 delivered", "3 bounced", "mailbox on the relay: 57"],
    "image_pipeline.py": ["HIGH  user uploads", "LOW   batch thumbnails", "never starved"],
    "webhook_delivery.py": ["delivered", "FAILED"],
    "event_monitor.py": ["completed", "monitor done"],
}
MARKS: dict[str, list[pytest.MarkDecorator]] = {}


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(QUICK)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=MARKS.get(n, []), id=n.removesuffix(".py")) for n in QUICK]
)
def test_example_quick(name: str, tmp_path: Path) -> None:
    out = run_example(name, "--quick", cwd=tmp_path)
    for expected in QUICK[name]:
        assert expected in out, f"{expected!r} not in the output of {name}:\n{out}"


def test_embed_ctrl_c_shuts_down_cleanly() -> None:
    with started_example("embed_in_trio_app.py", "--quick") as proc:
        read_until(proc, "heartbeat")  # the queue is up and jobs are running
        proc.send_signal(signal.SIGINT)
        code, out, err = finish(proc)
    assert code == 0, f"{out}\n{err}"
    assert "Ctrl+C" in out
    assert "interrupted:" in out
    assert "shut down cleanly" in out
    assert "Traceback" not in err, err


def test_webhook_memory_mode_quick(tmp_path: Path) -> None:
    """The receiver, httpx, retries and the dead-letter list, without the store."""
    out = run_example("webhook_delivery.py", "--quick", "--memory", cwd=tmp_path)
    assert "all done" in out, out
    # The three webhooks to the always-500 endpoint are the dead letters.  (Others fail
    # only if 7 attempts in a row met a 503 or a down receiver: about 1 in 10^4.)
    dead = [line for line in out.splitlines() if line.startswith("  hook-")]
    assert len(dead) == 3, out
    assert all("  /hooks/legacy  " in line for line in dead), out


def test_webhook_resumes_after_ctrl_c(tmp_path: Path) -> None:
    with started_example("webhook_delivery.py", "--quick", cwd=tmp_path) as proc:
        read_until(proc, "delivered")  # some webhooks went out; others are still pending
        proc.send_signal(signal.SIGINT)
        code, out, err = finish(proc)
    assert code == 0, f"{out}\n{err}"
    assert "interrupted" in out, out
    out2 = run_example("webhook_delivery.py", "--quick", cwd=tmp_path)
    assert "resumed" in out2, out2
