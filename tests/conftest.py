from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, settings

from .redis_util import admin, delete_queue, unique

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
