"""The local backend: the queue's state in this process (memory, and memory plus the
SQLite snapshot).  See :mod:`trioqueue._local.backend`."""
