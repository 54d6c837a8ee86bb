"""A leak soak: does a long-running server (or queue) stay flat under churn?

    python -m benchmarks.soak_leaks [--minutes 5] [--backend memory|sqlite|redis|python]
                                    [--durability sync|batch] [--port 18110]
                                    [--redis-url redis://127.0.0.1:6379/7] [--json FILE]

``memory``, ``sqlite`` and ``redis`` start ``trioqueue serve`` (the demo tasks) in a child
process (``--db`` a temporary file; with ``redis`` also one ``trioqueue worker`` node) and
drive it over loopback, in rounds of ``--round`` seconds of churn followed by a quiet
moment in which the server is sampled:

- short connections (``Connection: close``): ``POST /jobs`` of every demo task (echo,
  sleep, fail, flaky; some delayed), ``POST /jobs/batch``, ``GET /jobs?...``, ``GET
  /jobs/{id}``, cancel, retry (one job and ``POST /jobs/retry``), ``/metrics`` (JSON and
  Prometheus), ``/readyz``, ``/healthz``, ``/tasks``;
- keep-alive connections making dozens of requests each;
- clients that drop: after part of a request head or body, right after the request,
  after a few bytes of a large response, or without sending anything;
- websocket ``/events`` subscribers, with and without filters (``types``, ``job_id``,
  ``snapshot``, ``history``, ``max_rate``), closing cleanly or dropping the TCP
  connection, and :meth:`trioqueue.client.Client.wait` (events plus ``GET``).

The child is ``trioqueue serve`` itself, run with a trio instrument that counts live
tasks (and, with ``--tracemalloc``, the top allocation growth): each sample is the
server's RSS, open fds and threads (``/proc``), its live trio tasks and how many jobs it
holds (``/metrics``).  ``python`` runs a memory-mode ``open_queue`` in this process
instead, churning enqueue / enqueue_many / submit / wait (some cut short by a timeout)
/ cancel / retry / subscribe, with tracemalloc and the same counts.

Finished jobs stay in memory by design, up to ``finished_cache`` (``TRIOQUEUE_FINISHED_CACHE``,
2000 here, so the cap is reached during the warm-up) or ``result_ttl``; the metrics
history is 120 one-second samples.  The verdict looks only at the samples after the
warm-up (``--warmup``, a fraction of the run): PASS when live tasks, threads and fds come
back to their level, and RSS grows by less than ``--rss-slack`` MB (plus 5 %) from the
first third of those samples to the last one.  Where tracemalloc runs (``--tracemalloc``,
``python``) its snapshots weigh on the RSS, so the memory traced is judged instead
(``--traced-slack``).  With SQLite the RSS rises some 30 MB over the first 5 minutes
before it levels (docs/benchmarks.md, "Leaks over time"): give it 10 minutes and
``--warmup 0.5``.  Exit status 1 on FAIL.  Only loopback is a target.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .common import redis_cleanup
from .soak_churn import TASKS, Driver

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------- the child


def child_main(out_path: str, argv: list[str], trace: bool) -> int:
    """``trioqueue`` with ``argv``, its trio run instrumented: every 0.2 s ``out_path``
    gets ``{"tasks": live tasks, "top": [...], "traced_mb": ...}``; ``top`` (tracemalloc's
    largest growth since the first snapshot) is made again each time ``out_path.want``
    appears (the parent asks at its samples after the warm-up), then the file goes."""
    import tracemalloc

    import trio

    from trioqueue import cli

    live = [0]

    class Count(trio.abc.Instrument):
        def task_spawned(self, task: trio.lowlevel.Task) -> None:
            live[0] += 1

        def task_exited(self, task: trio.lowlevel.Task) -> None:
            live[0] -= 1

    real_run = trio.run

    def run(fn: Any, *args: Any, **kw: Any) -> Any:
        kw.setdefault("instruments", []).append(Count())
        return real_run(fn, *args, **kw)

    trio.run = run  # type: ignore[assignment]
    if trace:
        tracemalloc.start(8)
    want = Path(out_path + ".want")
    sqlite_used = sqlite_memory()

    def report() -> None:
        base: tracemalloc.Snapshot | None = None
        top: list[str] = []
        ours = [tracemalloc.Filter(False, tracemalloc.__file__),
                tracemalloc.Filter(False, __file__), tracemalloc.Filter(False, "<unknown>")]
        while True:
            time.sleep(0.2)
            if trace and want.exists():
                snap = tracemalloc.take_snapshot().filter_traces(ours)
                if base is None:
                    base = snap
                top = top_growth(snap, base)
                want.unlink()
            tmp = out_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"tasks": live[0], "top": top,
                           "traced_mb": tracemalloc.get_traced_memory()[0] / 2**20,
                           "sqlite_mb": sqlite_used() / 2**20 if sqlite_used else None}, f)
            os.replace(tmp, out_path)

    threading.Thread(target=report, daemon=True).start()
    return cli.main(argv)


def sqlite_memory() -> Any:
    """SQLite's own ``sqlite3_memory_used`` (its page caches, prepared statements: what
    tracemalloc does not see), when ``sqlite3`` uses the shared library; else None."""
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("sqlite3")
    if name is None:
        return None
    try:
        used = ctypes.CDLL(name).sqlite3_memory_used
    except (OSError, AttributeError):
        return None
    used.restype = ctypes.c_int64
    return used


def top_growth(snap: Any, base: Any, n: int = 5) -> list[str]:
    """tracemalloc's ``n`` largest growths from ``base`` to ``snap``, a line each."""
    return [f"{st.size_diff / 1024:+.0f} KiB {st.count_diff:+d} "
            + " <- ".join(f"{Path(f.filename).name}:{f.lineno}"
                          for f in list(reversed(st.traceback))[:4])  # the allocation first
            for st in snap.compare_to(base, "traceback")[:n]]


# ---------------------------------------------------------------------------- sampling


def proc_figures(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_mb"] = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return out


def held(value: Any) -> int:
    """A gauge of the metrics: a count, or counts by priority."""
    return sum(value.values()) if isinstance(value, dict) else int(value)


def verdict(samples: list[dict[str, Any]], warmup: float, rss_slack: float,
            traced_slack: float) -> list[str]:
    """The reasons for FAIL (none: PASS), from the samples after the warm-up: the last
    against the first third of them (memory: their lowest, plus 5 % and the slack;
    counts: their highest, plus a few)."""
    total = samples[-1]["t"] if samples else 0
    after = [s for s in samples if s["t"] >= warmup * total]
    if len(after) < 3:
        return ["too few samples after the warm-up"]
    first = after[: max(1, len(after) // 3)]
    last = after[-1]
    problems = []
    traced = "traced_mb" in last  # tracemalloc's own snapshots then weigh on the RSS
    for key, slack, count in (("rss_mb", rss_slack, False), ("traced_mb", traced_slack, False),
                              ("worker_rss_mb", rss_slack, False), ("fds", 3, True),
                              ("tasks", 5, True), ("threads", 2, True),
                              ("worker_fds", 3, True), ("worker_tasks", 5, True)):
        if key not in last or any(key not in s for s in first) or (traced and key == "rss_mb"):
            continue
        if count:
            base = max(s[key] for s in first)
            allowed = base + slack
        else:
            base = min(s[key] for s in first)
            allowed = base * 1.05 + slack
        if last[key] > allowed:
            problems.append(f"{key} grew: {base:.1f} -> {last[key]:.1f} (allowed {allowed:.1f})")
    return problems


def show(s: dict[str, Any]) -> str:
    keys = ("rss_mb", "traced_mb", "sqlite_mb", "fds", "threads", "tasks", "held", "db_mb",
            "worker_rss_mb", "worker_fds", "worker_tasks", "requests")
    return f"t={s['t']:6.0f}s " + " ".join(
        f"{k}={s[k]:.1f}" if isinstance(s[k], float) else f"{k}={s[k]}"
        for k in keys if k in s)


# ---------------------------------------------------------------------------- a server


def run_server_soak(args: argparse.Namespace) -> int:
    import trio
    tmp = Path(tempfile.mkdtemp(prefix="soak-leaks-"))
    stats_path = str(tmp / "child.json")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        TRIOQUEUE_FINISHED_CACHE=str(args.finished_cache), TRIOQUEUE_RETRY_BASE="0.2",
        TRIOQUEUE_RETENTION="120")
    serve = ["serve", "--port", str(args.port), "--workers", "8", "--log-level", "warning"]
    if args.backend == "sqlite":
        serve += ["--db", str(tmp / "soak.db"), "--durability", args.durability]
    elif args.backend == "redis":
        env.pop("TRIOQUEUE_RETENTION")  # Redis keeps failed jobs in Redis, not the node
        serve += ["--redis", args.redis_url, "--queue", "soak-leaks"]
    procs: list[subprocess.Popen[bytes]] = []
    worker: subprocess.Popen[bytes] | None = None
    try:
        log = open(tmp / "serve.log", "wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.soak_leaks", "--child", stats_path,
             *(["--tracemalloc"] if args.tracemalloc else []), "--", *serve],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        procs.append(server)
        assert server.stdout is not None
        line = server.stdout.readline().decode()
        if "serving on" not in line:
            print(f"the server did not start: {line!r}; see {tmp / 'serve.log'}")
            return 1
        port = int(line.rsplit(":", 1)[1])
        if args.backend == "redis":
            worker = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.soak_leaks", "--child", stats_path + ".worker",
                 "--", "worker", "--app", "trioqueue.demo:registry", "--redis", args.redis_url,
                 "--queue", "soak-leaks", "--workers", "8", "--log-level", "warning"],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=open(tmp / "worker.log", "wb"))
            procs.append(worker)
        print(f"soak_leaks: {args.backend} server pid {server.pid} on port {port}, "
              f"{args.minutes} min, rounds of {args.round} s; logs in {tmp}")
        samples = trio.run(drive, args, port, server.pid, worker, stats_path)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if args.backend == "redis":
            clean_redis(args.redis_url)
    return report(args, samples)


def clean_redis(url: str) -> None:
    deleted = redis_cleanup("*soak-leaks*", url)
    print(f"soak_leaks: deleted the queue's {deleted} keys in Redis (jobs stay there for "
          "result_ttl by design)")


async def drive(args: argparse.Namespace, port: int, pid: int,
                worker: subprocess.Popen[bytes] | None, stats_path: str) -> list[dict[str, Any]]:
    """The rounds; SIGINT or SIGTERM ends them early (the samples so far are judged)."""
    import trio
    samples: list[dict[str, Any]] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    print(f"soak_leaks: {signal.Signals(signum).name}: stopping", flush=True)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await rounds(args, port, pid, worker, stats_path, samples)
            nursery.cancel_scope.cancel()
    return samples


async def rounds(args: argparse.Namespace, port: int, pid: int,
                 worker: subprocess.Popen[bytes] | None, stats_path: str,
                 samples: list[dict[str, Any]]) -> None:
    import trio
    driver = Driver(port, random.Random(args.seed))
    start = time.monotonic()
    end = start + args.minutes * 60
    while time.monotonic() < end:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(args.clients):
                nursery.start_soon(driver.short_loop, stop, 0.02)
            nursery.start_soon(driver.keepalive_loop, stop, 0.02)
            nursery.start_soon(driver.abort_loop, stop, 0.05)
            nursery.start_soon(driver.ws_loop, stop, 0.05)
            nursery.start_soon(driver.ws_loop, stop, 0.1)
            nursery.start_soon(driver.ws_raw_loop, stop, 0.1)
            await trio.sleep(min(args.round, max(0.0, end - time.monotonic())))
            stop.set()
        await trio.sleep(args.quiet)  # connections closed, short jobs done
        s: dict[str, Any] = {"t": time.monotonic() - start, **proc_figures(pid)}
        want = trio.Path(stats_path + ".want")
        if args.tracemalloc and s["t"] >= args.warmup * args.minutes * 60:
            await want.write_text("")
            for _ in range(300):  # a snapshot of a large heap takes a while: 60 s at most
                await trio.sleep(0.2)
                if not await want.exists():
                    break
            await trio.sleep(0.5)
        try:
            child = json.loads(await trio.Path(stats_path).read_text())
            s["tasks"] = child["tasks"]
            s["top"] = child["top"]
            if args.tracemalloc:
                s["traced_mb"] = child["traced_mb"]
            if child.get("sqlite_mb") and args.backend == "sqlite":
                s["sqlite_mb"] = child["sqlite_mb"]
        except (OSError, ValueError):
            pass
        status, data = await driver.call("GET", "/metrics")
        if status == 200:
            m = json.loads(data)
            s["held"] = sum(held(m.get(k, 0)) for k in ("queued", "scheduled", "processing"))
        db = Path(stats_path).with_name("soak.db")
        if db.exists():  # (the store's own page caches grow with it, up to their size)
            s["db_mb"] = sum(f.stat().st_size for f in db.parent.glob("soak.db*")) / 2**20
        if worker is not None:
            s.update({f"worker_{k}": v for k, v in proc_figures(worker.pid).items()})
            try:
                w = json.loads(await trio.Path(stats_path + ".worker").read_text())
                s["worker_tasks"] = w["tasks"]
            except (OSError, ValueError):
                pass
        s["requests"] = driver.requests
        samples.append(s)
        print(show(s), flush=True)
        for line in s.get("top", [])[:3]:
            print("    ", line)
    if driver.errors:
        print("client-side errors (expected for dropped connections):",
              dict(sorted(driver.errors.items(), key=lambda kv: -kv[1])[:8]))


def report(args: argparse.Namespace, samples: list[dict[str, Any]]) -> int:
    problems = verdict(samples, args.warmup, args.rss_slack, args.traced_slack)
    if args.json:
        Path(args.json).write_text(json.dumps({"backend": args.backend, "samples": samples,
                                               "problems": problems}, indent=1))
    print("FAIL: " + "; ".join(problems) if problems else
          f"PASS: flat after the warm-up ({len(samples)} samples)")
    return 1 if problems else 0


# ---------------------------------------------------------------------------- in process


def run_python_soak(args: argparse.Namespace) -> int:
    import tracemalloc

    import trio

    import trioqueue
    from trioqueue.demo import registry

    samples: list[dict[str, Any]] = []

    def add(x: int) -> int:
        return x + 1

    async def churn(q: trioqueue.JobQueue, stop: trio.Event, rng: random.Random,
                    far: str) -> None:
        while not stop.is_set():
            r = rng.random()
            for _ in range(10):  # polls of a job that stays scheduled all along
                with trio.move_on_after(0):
                    await q.wait(far)
            try:
                if r < 0.3:
                    job = await q.enqueue(rng.choice(TASKS), {"seconds": 0.01, "fail_times": 1},
                                          max_retries=rng.choice((0, 1)))
                    with trio.move_on_after(rng.choice((0.001, 1.0))):
                        await q.wait(job.id)
                elif r < 0.45:
                    jobs = await q.enqueue_many("echo", range(rng.randint(1, 50)))
                    await q.wait_many([j.id for j in jobs])
                elif r < 0.6:
                    job = await q.submit(add, 1)
                    await q.wait(job.id)
                elif r < 0.75:  # a far delayed job: waits cut short, then cancelled
                    job = await q.enqueue("echo", 1, delay=60.0)
                    for _ in range(20):
                        with trio.move_on_after(0):
                            await q.wait(job.id)
                    await q.cancel(job.id)
                    await q.retry(job.id)
                    await q.cancel(job.id)
                else:
                    with trio.move_on_after(rng.uniform(0.01, 0.2)):
                        async with q.subscribe(metrics=rng.random() < 0.3,
                                               types=rng.choice((None, {"failed"}))) as ch:
                            async for _ in ch:
                                pass
            except (trioqueue.JobNotFound, trioqueue.InvalidTransition):
                pass
            await trio.sleep(0.002)

    logging.getLogger("trioqueue").setLevel(logging.ERROR)  # the fail task's warnings

    async def main() -> None:
        config = trioqueue.QueueConfig(workers=8, finished_cache=args.finished_cache,
                                       retry_base=0.01)
        start = time.monotonic()
        end = start + args.minutes * 60
        tracemalloc.start(8)
        base = None
        async with trioqueue.open_queue(registry, config) as q:
            far = (await q.enqueue("echo", "far", delay=86_400.0)).id
            while time.monotonic() < end:
                stop = trio.Event()
                async with trio.open_nursery() as nursery:
                    for i in range(4):
                        nursery.start_soon(churn, q, stop, random.Random(args.seed + i), far)
                    await trio.sleep(min(args.round, max(0.0, end - time.monotonic())))
                    stop.set()
                await trio.sleep(args.quiet)
                stats = trio.lowlevel.current_statistics()
                snap = tracemalloc.take_snapshot().filter_traces(
                    [tracemalloc.Filter(False, tracemalloc.__file__)])
                s: dict[str, Any] = {"t": time.monotonic() - start, **proc_figures(os.getpid()),
                                     "tasks": stats.tasks_living,
                                     "traced_mb": tracemalloc.get_traced_memory()[0] / 2**20}
                m = q.metrics()
                s["held"] = held(m.queued) + m.scheduled + m.processing
                if base is None and s["t"] >= args.warmup * args.minutes * 60:
                    base = snap
                if base is not None:
                    s["top"] = top_growth(snap, base)
                samples.append(s)
                print(show(s), flush=True)
                for line in s.get("top", [])[:3]:
                    print("    ", line)

    trio.run(main)
    return report(args, samples)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        trace = argv[2:3] == ["--tracemalloc"]
        rest = argv[argv.index("--") + 1:]
        return child_main(argv[1], rest, trace)
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak_leaks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--backend", choices=("memory", "sqlite", "redis", "python"),
                   default="memory")
    p.add_argument("--durability", choices=("sync", "batch"), default="sync")
    p.add_argument("--port", type=int, default=18110)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    p.add_argument("--round", type=float, default=20.0, help="seconds of churn per sample")
    p.add_argument("--quiet", type=float, default=3.0, help="seconds of calm before one")
    p.add_argument("--clients", type=int, default=3, help="short-connection loops")
    p.add_argument("--finished-cache", type=int, default=2000)
    p.add_argument("--warmup", type=float, default=0.4, help="fraction of the run")
    p.add_argument("--rss-slack", type=float, default=8.0, help="MB of RSS growth allowed")
    p.add_argument("--traced-slack", type=float, default=0.5,
                   help="MB of growth allowed in what tracemalloc traces")
    p.add_argument("--tracemalloc", action="store_true", help="in the server (slower)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="write the samples here")
    args = p.parse_args(argv)
    host = args.redis_url.split("//", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    if args.backend == "redis" and host.rsplit("@", 1)[-1] not in ("127.0.0.1", "localhost"):
        p.error("--redis-url: only a loopback Redis")
    if args.backend == "python":
        return run_python_soak(args)
    return run_server_soak(args)


if __name__ == "__main__":
    sys.exit(main())
