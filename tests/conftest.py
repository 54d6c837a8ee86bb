from __future__ import annotations

import os
from collections.abc import AsyncIterator

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
