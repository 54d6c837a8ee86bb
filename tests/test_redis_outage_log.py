"""What a node logs while Redis cannot be reached: a warning when it starts, a reminder
at most every 30 s, a line when it ends; not a line per failed call (a node logged 55 in
20 s, the operator audit)."""

from __future__ import annotations

import logging

import pytest
import trio.testing

from trioqueue.testing import REMIND, Outage


def test_an_outage_is_told_at_its_start_every_30_s_and_at_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = trio.testing.MockClock()
    outage = Outage(clock.current_time)
    caplog.set_level(logging.WARNING, logger="trioqueue")
    error = ConnectionRefusedError("ECONNREFUSED")
    for _ in range(3):  # a minute of calls failing, ten a second
        for _ in range(10 * int(REMIND)):
            outage.failed("claims", error)
            clock.jump(0.1)
    outage.answered()
    outage.answered()  # (nothing more to say)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "trioqueue: redis unavailable (claims: ECONNREFUSED); retrying"
    assert [line.split(" (")[0] for line in lines[1:3]] == [
        "trioqueue: redis still unavailable after 30 s",
        "trioqueue: redis still unavailable after 60 s"]
    assert lines[3].startswith("trioqueue: redis answers again after 90.0 s (900 failed calls)")
    assert len(lines) == 4
    outage.failed("timer", error)  # a new outage is told again
    assert caplog.records[-1].getMessage().startswith("trioqueue: redis unavailable (timer")


def test_an_outage_of_a_redis_that_hangs_counts_from_when_answers_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Redis that hangs fails its first call a timeout after it stopped answering: the
    outage counted from that failure (245 s of SIGSTOP read "unavailable for 102 s")."""
    from trioqueue.testing import Waiting

    clock = trio.testing.MockClock()
    outage = Outage(clock.current_time)
    waiting = Waiting()
    outage.watch(waiting, 2.0)
    caplog.set_level(logging.WARNING, logger="trioqueue")
    clock.jump(100.0)
    waiting.calls, waiting.since = 3, clock.current_time()  # the last answer, then none
    clock.jump(15.0)  # a timeout later, the first failure
    outage.failed("claims", TimeoutError("no reply in 15 s"))
    assert (outage.describe() or "").startswith("redis unavailable for 15 s")
    clock.jump(5.0)
    waiting.calls = 0
    outage.answered()
    assert caplog.records[-1].getMessage().startswith(
        "trioqueue: redis answers again after 20.0 s")
    clock.jump(1.0)
    outage.failed("timer", ConnectionRefusedError("ECONNREFUSED"))  # nothing waited: now
    assert (outage.describe() or "").startswith("redis unavailable for 0 s")
