"""The Lua scripts, read from this package's ``lua/`` directory.

Each script is ``common.lua`` (the prefix, the clock, events, helpers) followed by its own
file; see docs/redis-design.md for what each one does and guarantees.
"""

from __future__ import annotations

from importlib import resources

from ._client import LuaScript, lua_script

NAMES = (
    "enqueue", "finish_and_claim", "renew", "reap", "promote", "cancel", "retry", "get",
    "find", "list", "counts", "nodes",
)


FLAGS = {"get": "no-writes", "find": "no-writes", "counts": "no-writes",
         "list": "allow-oom", "renew": "allow-oom"}
"""Each script's flags (Redis 7's shebang), by what it may do when Redis is out of memory
(``maxmemory`` reached, ``noeviction``).  A script with no flags is refused whole there,
before it runs: without a shebang Redis refuses only its first command that adds data,
and only if nothing was written before it, so a script whose first write freed memory
(an ``LPOP`` of a claim, a ``ZREM`` of a reap) went on and wrote the rest, while the
renewals of the same node were refused: leases ran out under running jobs, which were
taken back, run again and failed as if their node had died.  Reads run (``no-writes``);
``renew`` runs (it only moves the scores of leases that exist, so the node's jobs keep
theirs while the queue waits), and so does ``list``, whose only write drops the index
entry of a record that has gone."""


def _read(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


def source(name: str) -> str:
    """The full text of script ``name`` as sent to Redis."""
    flags = FLAGS.get(name)
    shebang = "#!lua" if flags is None else f"#!lua flags={flags}"
    return shebang + "\n" + _read("common") + "\n" + _read(name)


def load_all() -> dict[str, LuaScript]:
    """Every script by name, ready for :meth:`RedisClient.run`."""
    return {name: lua_script(source(name)) for name in NAMES}
