"""The plan: every case of every scenario, with full, ``--quick`` and ``--smoke`` sizes.

A case is one system measured in one scenario with fixed parameters.  Cases of the same
``group`` are compared with that group's bare-Trio case (its baseline), run in the same
invocation.  ``precheck`` runs in the parent before any subprocess is spent: a missing
package or an unreachable service makes the case "skipped: <reason>" at once.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .common import Skip, need_redis

WORKERS = 4
LATENCY_RATES = (1_000, 10_000, 50_000)
IO_WORKERS = (10, 100, 1_000)
SQLITE_LOAD = 100_000
"""Rows/s written beside ``noop/ceiling/await-1-beside-sqlite``: about what the store
writes in the ``sqlite-batch`` cases (one row per job)."""


@dataclass(frozen=True)
class Sizes:
    noop_n: int
    peer_n: int  # peers are 50-200x slower: a smaller count, stated in the table
    sync1_n: int  # one producer waiting for a commit per job
    latency_s: float  # seconds of offered load per rate
    latency_peer_max: int  # at most this many jobs per rate for a peer
    io_n: int
    memory_n: int
    priorities_s: float
    http_n: int
    fanout_n: int
    wrk_s: float  # seconds of wrk load
    timeout: float  # per subprocess
    redis_n: int = 10_000  # trioqueue on Redis: jobs per throughput case
    redis_peer_n: int = 2_000  # SAQ, streaq, arq, dramatiq beside it (100-2,000 jobs/s)
    redis_latency_n: int = 1_000  # 2 s at 500 jobs/s
    dashboard_rounds: int = 3  # http/post-dashboard: rounds of (none, dashboard) ...
    dashboard_s: float = 2.5  # ... of this many seconds of load each
    dashboard_client: str = "auto"  # browser where Chromium is installed, else websocket


FULL = Sizes(noop_n=200_000, peer_n=5_000, sync1_n=10_000, latency_s=2.0,
             latency_peer_max=2_000, io_n=10_000, memory_n=100_000, priorities_s=2.0,
             http_n=5_000, fanout_n=1_000, wrk_s=5.0, timeout=900.0)
QUICK = Sizes(noop_n=5_000, peer_n=200, sync1_n=200, latency_s=0.2, latency_peer_max=200,
              io_n=200, memory_n=10_000, priorities_s=0.3, http_n=200, fanout_n=50,
              wrk_s=1.0, timeout=120.0, redis_n=500, redis_peer_n=100, redis_latency_n=100,
              dashboard_rounds=1, dashboard_s=0.5, dashboard_client="websocket")
SMOKE = Sizes(noop_n=1_200, peer_n=50, sync1_n=50, latency_s=0.05, latency_peer_max=50,
              io_n=100, memory_n=1_000, priorities_s=0.3, http_n=32, fanout_n=8,
              wrk_s=1.0, timeout=60.0, redis_n=50, redis_peer_n=20, redis_latency_n=20,
              dashboard_rounds=1, dashboard_s=0.5, dashboard_client="websocket")
"""``--smoke`` (the test suite's run): every case once with the least work that still
takes each through its code: ``noop_n`` above the default capacity of 1,000 (so
``nowait-retry`` meets QueueFull) and not a multiple of 1,000 (so ``many-1000`` sends a
short last batch); 32 POSTs, one per client.  What runs for a time rather than a count
keeps ``QUICK``'s: ``wrk`` counts whole seconds only, and on a loaded machine 0.1 s of
``priorities`` picked no job at all (ZeroDivisionError) and 0.2 s of dashboard load can
answer none."""
REDIS_LATENCY_RATE = 500
"""Jobs/s offered in the ``redis-latency@500`` group (the issue's p99 target is there)."""


@dataclass
class Case:
    id: str
    scenario: str
    group: str
    system: str
    label: str
    func: str
    params: dict[str, Any]
    prechecks: tuple[Callable[[], None], ...] = ()
    peer: bool = False

    @property
    def is_baseline(self) -> bool:
        return self.id == f"{self.group}/trio"

    def precheck(self) -> str | None:
        for check in self.prechecks:
            try:
                check()
            except Skip as skip:
                return str(skip)
        return None

    def child_spec(self) -> dict[str, Any]:
        return {"system": self.system, "func": self.func, "params": self.params}


@dataclass
class _Memo:
    """Prechecks that touch the network run once per invocation."""

    results: dict[str, str | None] = field(default_factory=dict)

    def once(self, key: str, check: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            if key not in self.results:
                try:
                    check()
                    self.results[key] = None
                except Skip as skip:
                    self.results[key] = str(skip)
            reason = self.results[key]
            if reason is not None:
                raise Skip(reason)

        return run


def _module(name: str, extra: str = "bench") -> Callable[[], None]:
    def check() -> None:
        if importlib.util.find_spec(name) is None:
            raise Skip(f"package {name!r} is not installed (pip install -e '.[{extra}]')")

    return check


def _program(name: str) -> Callable[[], None]:
    def check() -> None:
        if shutil.which(name) is None:
            raise Skip(f"{name} is not installed (Debian: apt-get install {name})")

    return check


def plan(sizes: Sizes) -> list[Case]:
    memo = _Memo()
    redis = memo.once("redis", need_redis)
    huey = (_module("huey"),)
    saq = (_module("saq"), _module("redis"), redis)
    streaq = (_module("streaq"), _module("redis"), redis)
    server = (_module("trioqueue.cli", "test"), _module("httpx", "test"))
    arq = (_module("arq"), _module("redis"), redis)
    dramatiq = (_module("dramatiq"), _module("redis"), redis)
    tq_redis = (_module("coredis"), _module("redis"), redis)
    n, pn = sizes.noop_n, sizes.peer_n
    cases: list[Case] = []

    def add(*args: Any, **kwargs: Any) -> None:
        cases.append(Case(*args, **kwargs))

    # -- no-op throughput ------------------------------------------------------------
    add("noop/trio", "noop", "noop", "trio", "bare trio: memory channel(1000), await send",
        "noop", {"n": n, "workers": WORKERS})
    add("noop/asyncio", "noop", "noop", "asyncio", "asyncio.Queue(1000), await put",
        "noop", {"n": n, "workers": WORKERS})
    add("noop/trioqueue/nowait", "noop", "noop", "trioqueue",
        "trioqueue memory: enqueue_nowait loop (capacity = n), then run",
        "noop", {"n": n, "variant": "nowait", "workers": WORKERS})
    add("noop/trioqueue/nowait-retry", "noop", "noop", "trioqueue",
        "trioqueue memory: enqueue_nowait, checkpoint + retry on QueueFull",
        "noop", {"n": n, "variant": "nowait-retry", "workers": WORKERS})
    add("noop/trioqueue/await-1", "noop", "noop", "trioqueue",
        "trioqueue memory: await enqueue, 1 producer",
        "noop", {"n": n, "variant": "await", "producers": 1, "workers": WORKERS})
    add("noop/trioqueue/await-8", "noop", "noop", "trioqueue",
        "trioqueue memory: await enqueue, 8 producers",
        "noop", {"n": n, "variant": "await", "producers": 8, "workers": WORKERS})
    add("noop/trioqueue/await-64", "noop", "noop", "trioqueue",
        "trioqueue memory: await enqueue, 64 producers (the pair of sqlite-sync-64)",
        "noop", {"n": n, "variant": "await", "producers": 64, "workers": WORKERS})
    add("noop/trioqueue/sqlite-batch", "noop", "noop", "trioqueue",
        "trioqueue SQLite batch: enqueue_nowait loop + flush()",
        "noop", {"n": n, "variant": "nowait", "durability": "batch", "workers": WORKERS})
    add("noop/trioqueue/sqlite-batch-await-1", "noop", "noop", "trioqueue",
        "trioqueue SQLite batch: await enqueue, 1 producer, + flush() (the pair of await-1)",
        "noop", {"n": n, "variant": "await", "producers": 1, "durability": "batch",
                 "workers": WORKERS})
    add("noop/trioqueue/sqlite-sync-1", "noop", "noop", "trioqueue",
        "trioqueue SQLite sync: await enqueue, 1 producer",
        "noop", {"n": sizes.sync1_n, "variant": "await", "producers": 1,
                 "durability": "sync", "workers": WORKERS})
    add("noop/trioqueue/sqlite-sync-64", "noop", "noop", "trioqueue",
        "trioqueue SQLite sync: await enqueue, 64 producers",
        "noop", {"n": n, "variant": "await", "producers": 64, "durability": "sync",
                 "workers": WORKERS})
    # Batches (enqueue_many): memory beside the store's two durabilities.
    for b in (100, 1000):
        add(f"noop/trioqueue/many-{b}", "noop", "noop", "trioqueue",
            f"trioqueue memory: await enqueue_many of {b}, 1 producer (capacity {2 * b})",
            "noop", {"n": n, "variant": "many", "batch": b, "workers": WORKERS})
        add(f"noop/trioqueue/sqlite-sync-many-{b}", "noop", "noop", "trioqueue",
            f"trioqueue SQLite sync: await enqueue_many of {b} (one commit each), "
            f"1 producer", "noop", {"n": n, "variant": "many", "batch": b,
                                    "durability": "sync", "workers": WORKERS})
        add(f"noop/trioqueue/sqlite-batch-many-{b}", "noop", "noop", "trioqueue",
            f"trioqueue SQLite batch: await enqueue_many of {b}, 1 producer, + flush()",
            "noop", {"n": n, "variant": "many", "batch": b, "durability": "batch",
                     "workers": WORKERS})
    # What the SQLite targets are up against (docs/benchmarks.md#ceilings): not ways to
    # run trioqueue, but the same runs with one cost taken away or one added.
    add("noop/ceiling/trio-commit-wait-64", "noop", "noop", "trio",
        "ceiling: bare trio, 64 producers each waiting for a group commit that writes "
        "nothing", "noop_commit_wait", {"n": n, "producers": 64, "workers": WORKERS})
    add("noop/ceiling/sqlite-batch-await-1-nullwriter", "noop", "noop", "trioqueue",
        "ceiling: sqlite-batch-await-1 with the write itself a no-op",
        "noop", {"n": n, "variant": "await", "producers": 1, "durability": "batch",
                 "writer": "null", "workers": WORKERS})
    add("noop/ceiling/sqlite-sync-64-nullwriter", "noop", "noop", "trioqueue",
        "ceiling: sqlite-sync-64 with the write itself a no-op",
        "noop", {"n": n, "variant": "await", "producers": 64, "durability": "sync",
                 "writer": "null", "workers": WORKERS})
    add("noop/ceiling/await-1-beside-sqlite", "noop", "noop", "trioqueue",
        f"ceiling: await-1 (memory) while another process writes {SQLITE_LOAD:,} rows/s "
        "to SQLite", "noop", {"n": n, "variant": "await", "producers": 1,
                              "beside_sqlite": SQLITE_LOAD, "workers": WORKERS})
    # MemoryHuey is fast enough to take the same job count as trioqueue; the peers that
    # run at 1k jobs/s get ``peer_n`` (5,000) so that a full run stays near 15 minutes.
    add("noop/huey-memory", "noop", "noop", "huey", "huey MemoryHuey, 4 worker threads",
        "noop", {"n": n, "storage": "memory", "workers": WORKERS}, huey, peer=True)
    add("noop/huey-sqlite", "noop", "noop", "huey", "huey SqliteHuey, 4 worker threads",
        "noop", {"n": pn, "storage": "sqlite", "workers": WORKERS}, huey, peer=True)
    add("noop/saq", "noop", "noop", "saq", "SAQ (asyncio, Redis), concurrency 4",
        "noop", {"n": pn, "workers": WORKERS}, saq, peer=True)
    add("noop/streaq", "noop", "noop", "streaq", "streaq on trio (Redis streams), concurrency 4",
        "noop", {"n": pn, "workers": WORKERS}, streaq, peer=True)

    # -- mixed priorities under saturation ---------------------------------------------
    add("priorities/trioqueue", "priorities", "priorities", "trioqueue",
        "trioqueue: 3 producers keep HIGH/MEDIUM/LOW backlogged",
        "priorities", {"duration": sizes.priorities_s, "workers": WORKERS})

    # -- latency at a fixed offered load -----------------------------------------------
    for rate in LATENCY_RATES:
        count = max(1, int(rate * sizes.latency_s))
        pcount = min(count, sizes.latency_peer_max)
        g = f"latency@{rate}"
        add(f"{g}/trio", "latency", g, "trio", "bare trio", "latency",
            {"rate": rate, "n": count, "workers": WORKERS})
        add(f"{g}/asyncio", "latency", g, "asyncio", "asyncio.Queue", "latency",
            {"rate": rate, "n": count, "workers": WORKERS})
        add(f"{g}/trioqueue", "latency", g, "trioqueue", "trioqueue memory, await enqueue",
            "latency", {"rate": rate, "n": count, "workers": WORKERS})
        add(f"{g}/trioqueue-nowait", "latency", g, "trioqueue",
            "trioqueue memory, enqueue_nowait per tick", "latency",
            {"rate": rate, "n": count, "workers": WORKERS, "nowait": True})
        add(f"{g}/huey-memory", "latency", g, "huey", "huey MemoryHuey", "latency",
            {"rate": rate, "n": pcount, "storage": "memory", "workers": WORKERS}, huey,
            peer=True)
        add(f"{g}/huey-sqlite", "latency", g, "huey", "huey SqliteHuey", "latency",
            {"rate": rate, "n": pcount, "storage": "sqlite", "workers": WORKERS}, huey,
            peer=True)
        add(f"{g}/saq", "latency", g, "saq", "SAQ", "latency",
            {"rate": rate, "n": pcount, "workers": WORKERS}, saq, peer=True)
        add(f"{g}/streaq", "latency", g, "streaq", "streaq on trio", "latency",
            {"rate": rate, "n": pcount, "workers": WORKERS}, streaq, peer=True)

    # -- I/O-bound ---------------------------------------------------------------------
    for w in IO_WORKERS:
        g = f"io@{w}"
        for system, label in (("trio", "bare trio"), ("asyncio", "asyncio.Queue"),
                              ("trioqueue", "trioqueue memory")):
            add(f"{g}/{system}", "io", g, system, f"{label}, {w} workers, sleep 10 ms",
                "io", {"n": sizes.io_n, "workers": w})

    # -- memory ------------------------------------------------------------------------
    for system, label in (("trio", "bare trio: channel of (name, payload) tuples"),
                          ("asyncio", "asyncio.Queue of (name, payload) tuples"),
                          ("trioqueue", "trioqueue memory, jobs waiting")):
        add(f"memory/{system}", "memory", "memory", system, label, "memory",
            {"n": sizes.memory_n})

    # -- HTTP --------------------------------------------------------------------------
    add("http/post", "http", "http-post", "trioqueue-http",
        "trioqueue serve: POST /jobs, 32 keep-alive httpx clients", "post",
        {"n": sizes.http_n, "clients": 32}, server)
    add("http/post-wrk", "http", "http-post-wrk", "trioqueue-http",
        "trioqueue serve: POST /jobs from wrk, 32 keep-alive connections", "post_wrk",
        {"duration": sizes.wrk_s, "connections": 32}, (*server, _program("wrk")))
    for k in (1, 10):
        add(f"http/fanout-{k}", "http", f"http-fanout-{k}", "trioqueue-http",
            f"trioqueue serve: websocket /events fan-out to {k} client(s)", "fanout",
            {"n": sizes.fanout_n, "clients": k}, server)
    add("http/post-dashboard", "http", "http-post-dashboard", "trioqueue-dashboard",
        "trioqueue serve: POST /jobs with one dashboard open (Chromium where installed), "
        "interleaved with none", "post_dashboard",
        {"rounds": sizes.dashboard_rounds, "seconds": sizes.dashboard_s,
         "client": sizes.dashboard_client}, server)

    # -- Redis: nodes in processes of their own, beside the Redis peers ---------------
    # (benchmarks/sys_redis.py; docs/benchmarks.md#redis).  Group ``redis`` has no
    # bare-trio baseline: benchmarks/redis_report.py compares with the best peer.
    rn, rpn = sizes.redis_n, sizes.redis_peer_n
    for nodes in (1, 2):
        for prefetch in (0, 128):
            add(f"redis/trioqueue-{nodes}node-p{prefetch}", "noop", "redis", "trioqueue-redis",
                f"trioqueue on Redis: {nodes} node process(es) x {WORKERS} workers, "
                f"prefetch {prefetch}", "noop",
                {"n": rn, "nodes": nodes, "prefetch": prefetch, "workers": WORKERS},
                tq_redis)
    add("redis/saq", "noop", "redis", "saq", "SAQ (asyncio, Redis), concurrency 4", "noop",
        {"n": rpn, "workers": WORKERS}, saq, peer=True)
    add("redis/streaq", "noop", "redis", "streaq",
        "streaq on trio (Redis streams), concurrency 4", "noop",
        {"n": rpn, "workers": WORKERS}, streaq, peer=True)
    add("redis/arq", "noop", "redis", "arq", "arq (asyncio, Redis), max_jobs 4, poll 10 ms",
        "noop", {"n": rpn, "workers": WORKERS}, arq, peer=True)
    add("redis/dramatiq", "noop", "redis", "dramatiq",
        "dramatiq (threads, Redis broker), 4 worker threads", "noop",
        {"n": rpn, "workers": WORKERS}, dramatiq, peer=True)
    g = f"redis-latency@{REDIS_LATENCY_RATE}"
    ln = sizes.redis_latency_n
    for nodes in (1, 2):
        add(f"{g}/trioqueue-{nodes}node-p0", "latency", g, "trioqueue-redis",
            f"trioqueue on Redis: {nodes} node process(es), prefetch 0, one await enqueue "
            "per job", "latency", {"rate": REDIS_LATENCY_RATE, "n": ln, "nodes": nodes,
                                   "prefetch": 0, "workers": WORKERS}, tq_redis)
    add(f"{g}/saq", "latency", g, "saq", "SAQ", "latency",
        {"rate": REDIS_LATENCY_RATE, "n": ln, "workers": WORKERS}, saq, peer=True)
    add(f"{g}/streaq", "latency", g, "streaq", "streaq on trio", "latency",
        {"rate": REDIS_LATENCY_RATE, "n": ln, "workers": WORKERS}, streaq, peer=True)
    add(f"{g}/arq", "latency", g, "arq", "arq, poll 10 ms", "latency",
        {"rate": REDIS_LATENCY_RATE, "n": ln, "workers": WORKERS}, arq, peer=True)
    add(f"{g}/dramatiq", "latency", g, "dramatiq", "dramatiq, Redis broker", "latency",
        {"rate": REDIS_LATENCY_RATE, "n": ln, "workers": WORKERS}, dramatiq, peer=True)
    return cases


def select(cases: list[Case], only: str | None) -> list[Case]:
    """Cases whose id starts with one of the comma-separated names (``noop``,
    ``latency@1000``, ``noop/trioqueue``), plus the bare-Trio baseline of every group
    selected, so that every ratio is to a baseline of the same run."""
    if not only:
        return cases
    names = [s.strip().strip("/") for s in only.split(",") if s.strip()]
    chosen = [c for c in cases if any(c.id == s or c.id.startswith(s + "/")
                                      or c.id.startswith(s + "@") or c.group == s
                                      for s in names)]
    if not chosen:
        known = sorted({c.id.split("/")[0] for c in cases} | {c.id for c in cases})
        raise SystemExit(f"--only {only!r} matches no case; known: {', '.join(known)}")
    groups = {c.group for c in chosen}
    keep = {c.id for c in chosen} | {c.id for c in cases if c.is_baseline and c.group in groups}
    return [c for c in cases if c.id in keep]
