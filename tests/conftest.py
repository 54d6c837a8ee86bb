from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, settings

from .redis_util import admin, delete_queue, unique

# Where the environment says to write no bytecode (PYTHONDONTWRITEBYTECODE, as on the
# machines CI runs on), every process the tests start (xdist's workers, each CLI
# command, server and node: hundreds) compiled trioqueue, pytest's plugins and what they
# import again: 2-4 s a worker.  The tests' children keep a cache outside the tree.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
    os.environ.setdefault("PYTHONPYCACHEPREFIX", os.path.join(
        tempfile.gettempdir(), f"trioqueue-tests-pycache-{os.getuid()}"))

# Trio tests run under the mock clock or real I/O: wall-clock deadlines mean nothing.
settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    max_examples=100,
)
settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    max_examples=60,
    derandomize=True,
)
settings.load_profile("ci" if os.environ.get("CI") else "default")

# A pytest started in the background by a shell (`pytest &`, a CI script's job) has
# SIGINT ignored, and so would every process it starts: the tests that press Ctrl+C in
# a child (`enqueue --count`, `monitor`, the examples) need it at its default there, as
# a terminal's foreground job has it.  (A program started with SIGINT ignored keeps it
# so, as it should: that is the shell saying Ctrl+C is not for it.)
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


HEAVIEST_FIRST = (
    "test_cli.py", "browser/test_dashboard_fixes.py", "test_benchmarks.py",
    "test_monitor.py", "browser/test_dashboard.py", "test_examples.py",
    "test_queue_model.py", "test_server.py", "test_redis_chaos.py",
)
"""The files that take longest (of `pytest --durations=0`, summed by file), in that
order.  The two test processes (`--dist loadfile`) take the files in collection order,
each the next one as it finishes: one of these last would leave the other process idle
while it runs alone."""


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The :data:`HEAVIEST_FIRST` files first, each file's tests in their order."""
    here = Path(__file__).parent

    def weight(item: pytest.Item) -> int:
        name = Path(str(item.fspath)).relative_to(here).as_posix()
        return HEAVIEST_FIRST.index(name) if name in HEAVIEST_FIRST else len(HEAVIEST_FIRST)

    items.sort(key=weight)  # stable: the rest keep their order


@pytest.fixture
async def queue_name() -> AsyncIterator[str]:
    """A fresh Redis queue name; the queue's keys are deleted afterwards."""
    name = unique("queue")
    try:
        yield name
    finally:
        with trio.CancelScope(shield=True):
            async with admin() as client:
                await delete_queue(client, name)


@pytest.fixture(scope="session")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for the typing tests of a test process (tests/mypy_check.py)."""
    return tmp_path_factory.mktemp("mypy-cache")
