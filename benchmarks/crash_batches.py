"""Batches under SIGKILL at random moments, on the SQLite store: all or nothing, and what
a kill loses of what was acknowledged.

    python -m benchmarks.crash_batches [--rounds 30] [--durability batch] [--payload 64]
                                       [--max-size 1000] [--seed N] [--json FILE]

Each round starts a producer process (``--child``) on a fresh store: it calls
``enqueue_many`` for ever (batch ``n`` of 1 to ``--max-size`` jobs, sizes from the seed,
each job's payload ``{"b": n, "p": "xx..."}`` with ``--payload`` bytes of ``x``) and
prints ``b<n> <size> <time>`` once each returned (``time.monotonic()``, one clock for
every process on Linux).  At a random moment (0.3 to 2 s after its first batch) the
round SIGKILLs it by its pid, then reads the store with a plain ``sqlite3`` connection and checks:

- every batch is stored whole or not at all (the one under way at the kill included);
- ``--durability sync``: every acknowledged batch is stored.

For ``batch``, it reports the acknowledged batches lost and how long before the kill the
oldest of them was acknowledged: the docs promise ``flush_interval`` plus one write, and
at most about ``max_write_lag`` (0.5 s) plus one write when writes fall behind.  It
prints one line per round and a summary (``--json`` writes it) and exits 1 if a check
failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def child(db: str, durability: str, seed: int, max_size: int, payload: int) -> None:
    import trio

    import trioqueue

    registry = trioqueue.TaskRegistry()

    @registry.task
    async def noop(job: trioqueue.Job) -> None:
        pass

    async def produce() -> None:
        rnd = random.Random(seed)
        config = trioqueue.QueueConfig(persist_path=db, durability=durability,  # type: ignore[arg-type]
                                       workers=4, capacity=max(1000, max_size))
        body = "x" * payload
        async with trioqueue.open_queue(registry, config) as q:
            print("open", flush=True)
            n = 0
            while True:
                size = rnd.randint(1, max_size)
                await q.enqueue_many("noop", [{"b": n, "p": body} for _ in range(size)])
                print(f"b{n} {size} {time.monotonic()!r}", flush=True)
                n += 1

    trio.run(produce)


def one_round(db: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.crash_batches", "--child", str(db), args.durability,
         str(seed), str(args.max_size), str(args.payload)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        text=True,
    )
    acked: dict[str, tuple[int, float]] = {}
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "open"
        kill_at = time.monotonic() + random.Random(seed).uniform(0.3, 2.0)
        while time.monotonic() < kill_at:
            line = proc.stdout.readline()
            if not line:
                break
            name, size, at = line.split()
            acked[name] = (int(size), float(at))
        killed = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for line in proc.stdout.read().splitlines():
            name, size, at = line.split()
            acked[name] = (int(size), float(at))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    conn = sqlite3.connect(db)
    try:
        stored = Counter(f"b{n}" for (n,) in conn.execute(
            "SELECT json_extract(payload, '$.b') FROM jobs"))
    finally:
        conn.close()
    sizes = random.Random(seed)
    expected = {f"b{k}": sizes.randint(1, args.max_size) for k in range(len(acked) + 1)}
    split = {name: n for name, n in stored.items() if n != expected.get(name)}
    lost = [name for name in acked if stored[name] != acked[name][0]]
    window = max((killed - acked[name][1] for name in lost), default=0.0)
    return {"seed": seed, "acked_batches": len(acked),
            "acked_jobs": sum(size for size, _ in acked.values()),
            "stored_jobs": sum(stored.values()), "split": split, "lost_batches": len(lost),
            "lost_jobs": sum(acked[name][0] for name in lost), "loss_window": window}


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        db, durability, seed, max_size, payload = sys.argv[2:7]
        child(db, durability, int(seed), int(max_size), int(payload))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--durability", choices=["sync", "batch"], default="batch")
    parser.add_argument("--payload", type=int, default=64, help="bytes per job")
    parser.add_argument("--max-size", type=int, default=1000, help="jobs per batch at most")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    base = args.seed if args.seed is not None else random.randrange(1 << 30)
    results = []
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            res = one_round(Path(tmp) / f"r{r}.db", args, base + r)
            bad = bool(res["split"]) or (args.durability == "sync" and res["lost_batches"])
            failed |= bad
            results.append(res)
            print(f"round {r:3d} seed {res['seed']}: {res['acked_batches']} batches "
                  f"({res['acked_jobs']} jobs) acknowledged, {res['stored_jobs']} jobs stored, "
                  f"lost {res['lost_batches']} batches ({res['lost_jobs']} jobs), oldest "
                  f"acknowledged {res['loss_window'] * 1000:.0f} ms before the kill"
                  f"{', SPLIT ' + str(res['split']) if res['split'] else ''}"
                  f"{'  FAIL' if bad else ''}", flush=True)
    windows = sorted(r["loss_window"] for r in results if r["lost_batches"])
    summary = {
        "durability": args.durability, "rounds": args.rounds, "payload": args.payload,
        "max_size": args.max_size, "seed": base,
        "rounds_split": sum(bool(r["split"]) for r in results),
        "rounds_losing_acked": len(windows),
        "loss_window_max": windows[-1] if windows else 0.0,
        "loss_window_median": windows[len(windows) // 2] if windows else 0.0,
        "ok": not failed, "results": results,
    }
    print(f"{args.durability}: {summary['rounds_split']} of {args.rounds} rounds split a batch; "
          f"{len(windows)} lost acknowledged batches, the oldest acknowledged at most "
          f"{summary['loss_window_max'] * 1000:.0f} ms before the kill (median "
          f"{summary['loss_window_median'] * 1000:.0f} ms)")
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
