"""Where a large flush of the SQLite snapshot is cut into transactions: never inside a
batch (``enqueue_many``, ``enqueue_batch``, ``POST /jobs/batch``), which commits whole."""

from __future__ import annotations

from itertools import islice

from .._record import JobRecord


def chunk_size(pending: dict[str, JobRecord], groups: dict[str, int], chunk: int) -> int:
    """How many of ``pending``'s first records the next transaction writes: ``chunk``,
    or more, to the end of a batch that a cut there would split.  ``groups``: the id of
    each batch's last record (its records are the ``n`` up to it, in order) -> ``n``."""
    if not groups or len(pending) <= chunk:
        return chunk
    end = chunk
    for i, job_id in enumerate(islice(pending, chunk, chunk + max(groups.values())), chunk):
        n = groups.get(job_id)
        if n is not None and i - n + 1 < chunk:  # a batch that began before the cut
            end = i + 1
    return end
