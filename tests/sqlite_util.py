"""A connection to a store file for a test to look into it with another connection."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def sqlite_at(path: str | Path) -> Iterator[sqlite3.Connection]:
    """``with sqlite3.connect(path) as conn`` commits (or rolls back) the block but
    leaves the connection open until the collector finds it: a test reading a store a
    thousand times left thousands of file descriptors open in its pytest worker, and a
    later test's ``select()`` there failed.  This one commits and closes."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            yield conn
    finally:
        conn.close()
