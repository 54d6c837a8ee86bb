"""What a node logs about many jobs at once: one line naming them, not one line a job (an
outage can make hundreds at once: every job of a prefetch buffer whose lease ended, every
outcome of a call that Redis refused)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ._values import Outcome, some

log = logging.getLogger("trioqueue")


def log_lapsed(ids: Sequence[str]) -> None:
    """``ids`` were not started: their leases ended (by this node's clock) before a worker
    here took them, so another node may have run them; they go back unstarted."""
    log.warning("trioqueue: %d job(s) not started, their lease ended before a worker here "
                "took them (this node could not renew it): %s", len(ids), some(list(ids)))


def log_refused(outcomes: Sequence[Outcome], results: Sequence[str], lost: bool,
                gone: set[str]) -> None:
    """Say which of ``outcomes`` Redis refused (``results``: ``stale``), and why: another
    node took the job, or the job is gone with Redis' data (``lost``: the call was sent
    before this node saw Redis lose it; ``gone``: the jobs held or pending then, each
    forgotten here once its outcome is answered)."""
    with_data: list[str] = []
    moved_on: list[str] = []
    for o, r in zip(outcomes, results, strict=False):
        if o.kind == "progress":
            continue
        if gone:
            was_held = o.id in gone
            gone.discard(o.id)
        else:
            was_held = False
        if r != "stale":
            continue
        (with_data if lost or was_held else moved_on).append(f"{o.id} ({o.kind})")
    if with_data:
        log.warning("trioqueue: %d outcome(s) refused: redis lost its data after this node "
                    "claimed the job (its record is gone, or older): %s", len(with_data),
                    some(with_data))
    if moved_on:
        log.warning("trioqueue: %d outcome(s) refused, the job's lease moved on (it was "
                    "taken by another node): %s", len(moved_on), some(moved_on))


def log_close(node: str, lost: int, which: str, pending: int, unanswered: float | None
              ) -> None:
    """What a node's close could not do: ``lost`` jobs (``which``) that
    ``enqueue_nowait`` accepted and never wrote; ``pending`` outcomes never sent;
    ``unanswered``, the seconds after which it gave up waiting for Redis' answer to its
    last calls (the running jobs it handed back, the outcomes it sent, its own removal:
    maybe not done)."""
    if lost:
        log.error("trioqueue: %d jobs accepted by enqueue_nowait were never written to redis "
                  "(no room or no redis in the close's time) and are lost: %s", lost, which)
    if pending:
        log.warning("trioqueue: %d outcomes not sent to redis at close (those jobs run "
                    "again after their lease)", pending)
    if unanswered is not None:
        log.warning("trioqueue: redis did not answer node %s's last calls at its close "
                    "(waited up to %s s for each): the jobs it was running or handing "
                    "back may still show as processing, and run again on another node "
                    "after their lease", node, unanswered)
