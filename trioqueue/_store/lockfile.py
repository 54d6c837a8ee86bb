"""The lock file beside a store: one queue per store file, across processes."""

from __future__ import annotations

import os
from pathlib import Path

from .._exceptions import StoreError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, so no one-queue-per-file check
    fcntl = None  # type: ignore[assignment]


class StoreLock:
    """``<store>.lock``, locked with ``flock`` while a queue has the store open: two
    processes running the jobs of one file would run each job twice.  The kernel drops
    the lock when the process dies, however it dies.  The lock is beside the file the
    path resolves to (symbolic links followed, as SQLite follows them for its journal), so
    that another name for the same file finds it taken."""

    def __init__(self, fd: int, path: Path, created: bool) -> None:
        self._fd: int | None = fd
        self._path = path
        self._created = created

    @classmethod
    def take(cls, store: Path) -> StoreLock:
        real = Path(os.path.realpath(store))
        path = real.with_name(real.name + ".lock")
        created = not path.exists()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(
                f"{store}: cannot open: cannot create its lock file {path.name} "
                f"({exc.strerror}); check that the directory exists and is writable"
            ) from exc
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StoreError(
                f"{store}: in use by another trioqueue queue"
                + (f" (process {holder})" if holder.isdigit() else "")
                + "; one queue per store file"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd, path, created)

    def release(self, *, failed: bool = False) -> None:
        if self._fd is None:
            return
        if failed and self._created:  # leave nothing behind next to a file we refused
            self._path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
