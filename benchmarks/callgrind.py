"""Instructions per no-op job, counted by valgrind's callgrind: repeatable on a shared
machine, where seconds are not.  For tuning the hot path; not part of the table.

    python -m benchmarks.callgrind                  # every case, 20,000 jobs each
    python -m benchmarks.callgrind nowait await -n 50000
    python -m benchmarks.callgrind await batch --against /tmp/base --runs 3
    python -m benchmarks.callgrind many sync-many batch-many -n 10000 --warm 10000

Each case runs twice under ``valgrind --tool=callgrind`` (with W jobs, then with W + n)
in a fresh interpreter; the difference divided by n is the cost of one job, start-up and
shutdown excluded.  W is ``--warm`` (0 by default): with a store, a run prepares a
statement for each batch size it meets, once, which a short run would count per job.
Cases: ``bare`` (a Trio memory channel, 4 receiving tasks, ``await send``: the floor of
the throughput table), ``nowait`` (``enqueue_nowait`` n jobs with capacity n, then run
them), ``await`` (one producer, ``await enqueue``), ``batch`` (the
same with an SQLite store, ``durability="batch"``, and a final ``flush()``), ``many``
(one producer, ``await enqueue_many`` of :data:`MANY` jobs, capacity twice that),
``sync-many`` and ``batch-many`` (the same with an SQLite store, ``durability="sync"``
and ``"batch"``).  4 workers.
Instructions are counted per thread: the event loop's, and the rest (the store's writer
thread) on their own, since the writer runs beside the loop on the other core.
The 1 ms half of the engine's schedule-point rule is turned off in the child: under
valgrind it would fire every few calls instead of every 64.

``--against DIR`` counts a second checkout too (``git worktree add DIR REV``), its
package imported from ``DIR`` with the same child, and prints the ratio: the engine's
speed compared in one run.  Counts move by about 1 % from run to run (job ids are
random, so the job table's hashing differs, and the store's writer thread is scheduled
differently); ``--runs K`` takes the median of K counts of each.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = ("bare", "nowait", "await", "batch", "many", "sync-many", "batch-many")
MANY = 1000
"""Jobs per ``enqueue_many`` call in the ``*many`` cases."""

_CHILD = """
import math, sys, tempfile, trio, trioqueue
try:
    from trioqueue import _workers as hot
except ImportError:  # a checkout from before the engine was split (--against)
    from trioqueue import _engine as hot
from pathlib import Path
n, case = int(sys.argv[1]), sys.argv[2]
many = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
# Under valgrind the program runs about 50 times slower, so the 1 ms half of the
# schedule-point rule would fire every few calls; at full speed the 64-call half does.
hot.CHECKPOINT_AFTER = math.inf
registry = trioqueue.TaskRegistry()

@registry.task(name="noop")
async def noop(job):
    return None

async def bare():
    send, receive = trio.open_memory_channel(1000)
    async def worker():
        async for _ in receive:
            pass
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(worker)
        async with send:
            for i in range(n):
                await send.send(i)

async def main():
    if case == "bare":
        return await bare()
    if case in ("batch", "sync-many", "batch-many"):
        path = Path(tempfile.mkdtemp(prefix="tq-callgrind-")) / "batch.db"
        durability = "sync" if case == "sync-many" else "batch"
        config = trioqueue.QueueConfig(workers=4, persist_path=path, durability=durability,
                                       capacity=max(1000, 2 * many))
    elif case == "many":
        config = trioqueue.QueueConfig(workers=4, capacity=max(1000, 2 * many))
    else:
        config = trioqueue.QueueConfig(workers=4, capacity=max(n, 1))
    async with trioqueue.open_queue(registry, config) as q:
        job = None
        if case.endswith("many"):
            payloads = [None] * many
            left = n
            while left > 0:
                jobs = await q.enqueue_many("noop", payloads[:left])
                left -= len(jobs)
                job = jobs[-1]
        else:
            for _ in range(n):
                job = q.enqueue_nowait("noop") if case == "nowait" else await q.enqueue("noop")
        await q.flush()
        if job is not None:
            await q.wait(job.id)
        while q.metrics().completed < n:
            await trio.sleep(0)

trio.run(main)
"""


def instructions(case: str, n: int, tree: Path | None = None) -> tuple[int, int]:
    """Instructions of the event loop's thread, and of every other thread together
    (trioqueue imported from ``tree`` if given, else from wherever it is installed)."""
    env = None
    if tree is not None:
        env = {**os.environ, "PYTHONPATH": str(tree)}
    with tempfile.TemporaryDirectory(prefix="tq-callgrind-") as tmp:
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes",
             f"--callgrind-out-file={tmp}/out", sys.executable, "-c", _CHILD, str(n), case,
             str(MANY)],
            capture_output=True, text=True, check=True, env=env, cwd=tree,
        )
        counts: dict[int, int] = {}
        for path in Path(tmp).iterdir():  # out-01 (the main thread), out-02, ...
            thread = re.search(r"-(\d+)$", path.name)
            if thread is None:
                continue  # the file without a thread number holds no counts
            total = re.search(r"^(?:summary|totals): (\d+)", path.read_text(), re.MULTILINE)
            if total is None:
                raise RuntimeError(f"no instruction count in callgrind's {path.name}")
            counts[int(thread.group(1))] = int(total.group(1))
    if 1 not in counts:
        raise RuntimeError("callgrind wrote no file for the main thread")
    return counts[1], sum(v for k, v in counts.items() if k != 1)


def per_job(case: str, n: int, tree: Path | None = None,
            warm: int = 0) -> tuple[float, float]:
    """Instructions per job on the loop and in other threads: the count of ``n + warm``
    jobs less that of ``warm`` jobs, divided by ``n`` (start-up taken off, and with
    ``warm`` what the first jobs pay once: caches filled, statements prepared)."""
    (loop, other) = instructions(case, n + warm, tree)
    (loop0, other0) = instructions(case, warm, tree)
    return (loop - loop0) / n, (other - other0) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.callgrind",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", metavar="CASE", help=", ".join(CASES))
    parser.add_argument("-n", type=int, default=20_000, help="jobs per case (20,000)")
    parser.add_argument("--against", type=Path, metavar="DIR",
                        help="another checkout to count too, and the ratio to it")
    parser.add_argument("--runs", type=int, default=1, help="counts per case (median)")
    parser.add_argument("--warm", type=int, default=0, metavar="W",
                        help="jobs run before the counted ones, in both counts (0): "
                             "the store's statements for large batches are prepared "
                             "once, which a short run would count per job")
    args = parser.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}; choose from {', '.join(CASES)}")
    if args.n < 1:
        parser.error(f"-n: expected a positive number of jobs, got {args.n}")
    if args.warm < 0:
        parser.error(f"--warm: expected 0 or more jobs, got {args.warm}")
    if args.runs < 1:
        parser.error(f"--runs: expected a positive number, got {args.runs}")
    if args.against is not None and not (args.against / "trioqueue").is_dir():
        parser.error(f"--against: no trioqueue package in {args.against}")
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    for case in args.cases or CASES:
        trees: list[Path | None] = [None]
        if args.against is not None:
            trees.append(args.against.resolve())
        counts: dict[Path | None, list[tuple[float, float]]] = {tree: [] for tree in trees}
        for _ in range(args.runs):  # interleaved, when there are two trees
            for tree in trees:
                counts[tree].append(per_job(case, args.n, tree, args.warm))
        loop, other = _medians(counts[None])
        print(f"{case:8s} {loop:10,.0f} instructions per job on the loop"
              f"{other:10,.0f} in other threads" + _spread(counts[None]))
        if args.against is not None:
            base = counts[trees[1]]
            loop_b, other_b = _medians(base)
            print(f"{'':8s} {loop_b:10,.0f} in {args.against}: on the loop"
                  f"{other_b:10,.0f} in other threads" + _spread(base))
            print(f"{'':8s} {loop / loop_b:10.3f} x {args.against} on the loop")
    return 0


def _medians(counts: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(c[0] for c in counts), statistics.median(c[1] for c in counts)


def _spread(counts: list[tuple[float, float]]) -> str:
    if len(counts) < 2:
        return ""
    loops = [c[0] for c in counts]
    return f"   (loop {min(loops):,.0f}-{max(loops):,.0f})"


if __name__ == "__main__":
    sys.exit(main())
