"""The snapshot-persistence task and the seam between the engine and the store.

(Being built: see issue 3.  The engine calls exactly these methods.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ._config import QueueConfig
from ._exceptions import StoreError
from ._job import Job, JobStatus
from ._registry import TaskRegistry

if TYPE_CHECKING:
    from ._engine import JobQueue, JobRecord


class Persistence:
    """Owns the store; the engine talks to storage only through this object."""

    durable: bool
    """True with ``durability="sync"``: enqueuers wait for the commit holding their job."""

    @classmethod
    async def open(cls, config: QueueConfig, registry: TaskRegistry) -> Persistence:
        """Open (or create) the store file, off the event loop; raise :class:`StoreError`."""
        raise StoreError(f"{config.persist_path}: persistence is not available yet")

    async def run(
        self, queue: JobQueue, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The persistence task: flush changed records in batches until closed."""
        raise NotImplementedError

    async def recover(self, queue: JobQueue) -> None:
        """Put the store's live jobs back into ``queue`` (called once, at open)."""
        raise NotImplementedError

    def mark(self, rec: JobRecord) -> None:
        """``rec`` changed: include its latest state in the next flush."""
        raise NotImplementedError

    async def wait_committed(self, rec: JobRecord | None = None) -> None:
        """Return once everything marked so far is committed (group commit)."""
        raise NotImplementedError

    async def lookup(self, job_id: str) -> JobRecord | None:
        """The stored record of a job that is not in memory, or ``None``."""
        raise NotImplementedError

    async def list(self, queue: JobQueue, status: JobStatus | None, limit: int) -> list[Job]:
        raise NotImplementedError

    async def revive(self, queue: JobQueue, job_id: str) -> JobRecord | None:
        """Load a finished job from the store into memory so it can be retried."""
        raise NotImplementedError

    async def close(self) -> None:
        """Write the final snapshot and close the store (the last thing open_queue does)."""
        raise NotImplementedError
