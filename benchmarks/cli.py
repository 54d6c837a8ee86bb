"""``python -m benchmarks``: run every case several times, print one table.

Each repetition of each case runs in a fresh subprocess (``benchmarks.child``); the
repetitions are interleaved (all cases once, then all again, ...) so that a noisy moment
of a shared machine spreads over every system instead of landing on one.

``--smoke`` (the test suite's run) measures nothing: it checks that every case still
runs, with the smallest sizes, case after case in ``--jobs`` long-lived children
(:class:`ServedChild`), so that each case does not pay an interpreter start-up and its
imports again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from select import select as wait_readable
from typing import Any

from .cases import FULL, QUICK, SMOKE, Case, plan, select
from .redis_report import render as render_redis
from .report import render_table

ROOT = Path(__file__).resolve().parent.parent
IN_PROCESS = ("trio", "asyncio", "trioqueue")
"""Systems measured inside the child itself (the others start servers or nodes)."""


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    versions: dict[str, str] = {}
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("trioqueue", "trio", "huey", "saq", "streaq", "redis", "httpx", "arq",
                "dramatiq", "coredis"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": versions,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))


def run_child(case: Case, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tq-bench-") as tmp:
        out = Path(tmp) / "out.json"
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.child", json.dumps(case.child_spec()),
                 str(out)],
                cwd=ROOT, env=_child_env(), stdin=subprocess.DEVNULL, capture_output=True,
                timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        if not out.exists():
            tail = (proc.stderr or b"").decode(errors="replace").strip()[-2000:]
            return {"error": f"child exited with {proc.returncode} and no result: {tail}"}
        outcome: dict[str, Any] = json.loads(out.read_text())
        return outcome


class ServedChild:
    """``--smoke``: one ``python -m benchmarks.child --serve`` that runs case after case
    (one JSON line each way), started afresh after a case that killed it or hung.  The
    outcomes are those of :func:`run_child`."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Any = None  # the child's stderr: a file, read back after a crash

    def _start(self) -> subprocess.Popen[bytes]:
        self.log = tempfile.TemporaryFile(prefix="tq-bench-")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.child", "--serve"], cwd=ROOT,
            env=_child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        return self.proc

    def run(self, case: Case, timeout: float) -> dict[str, Any]:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            self.close()
            proc = self._start()
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(case.child_spec()).encode() + b"\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died: the empty read below says how
        # One reply line per request line, so nothing is left in the reader's buffer
        # between cases and select() on its fd sees every reply.
        if not wait_readable([proc.stdout], [], [], timeout)[0]:
            self.close(kill=True)  # as subprocess.run(timeout=...) does
            return {"error": f"timed out after {timeout:.0f} s"}
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            self.log.seek(0)
            tail = self.log.read().decode(errors="replace").strip()[-2000:]
            self.close()
            return {"error": f"child exited with {code} and no result: {tail}"}
        outcome: dict[str, Any] = json.loads(line)
        return outcome

    def close(self, kill: bool = False) -> None:
        if self.proc is not None:
            if kill:
                self.proc.kill()
            if self.proc.stdin is not None:
                try:
                    self.proc.stdin.close()  # the end of the requests: it returns
                except BrokenPipeError:
                    pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """median / min / max of every numeric metric over the repetitions."""
    keys = [k for k, v in runs[0].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]
    out: dict[str, dict[str, float]] = {}
    for k in keys:
        values = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
        if values:
            out[k] = {"median": statistics.median(values), "min": min(values),
                      "max": max(values)}
    return out


def short(outcome: dict[str, Any]) -> str:
    if "skipped" in outcome:
        return f"skipped: {outcome['skipped']}"
    if "error" in outcome:
        return "ERROR: " + outcome["error"].strip().splitlines()[-1][:160]
    m = outcome["metrics"]
    for key, fmt in (("jobs_per_s", "{:,.0f} jobs/s"), ("p99_ms", "p99 {:.2f} ms"),
                     ("requests_per_s", "{:,.0f} req/s"), ("bytes_per_job", "{:,.0f} B/job"),
                     ("events_per_s", "{:,.0f} events/s"), ("picks", "{:,} picks")):
        if key in m:
            return fmt.format(m[key])
    return "ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="trioqueue benchmarks: every scenario against the bare-trio floor and "
                    "the peers, one table (docs/benchmarks.md).")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="small counts, 1 repetition: a smoke run for CI (< 1 min)")
    size.add_argument("--smoke", action="store_true",
                      help="the least work that takes every case through its code, 1 "
                           "repetition, the cases one after another in --jobs long-lived "
                           "child processes: measures nothing, checks that every case "
                           "runs (the test suite's run; a third of --quick's CPU time)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="repetitions per case (default 5, or 1 with --quick or --smoke)")
    parser.add_argument("--only", metavar="NAMES",
                        help="comma-separated case ids or prefixes: noop, latency, "
                             "latency@10000, io, memory, priorities, http, noop/trioqueue "
                             "(the bare-trio baseline of each group runs too)")
    parser.add_argument("--no-peers", action="store_true",
                        help="leave out huey, SAQ and streaq")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="with --quick or --smoke: run up to N cases at once (a "
                             "smoke run's figures are no measurement anyway; the test "
                             "suite uses --smoke --jobs 2)")
    parser.add_argument("--json", metavar="PATH", help="write the raw results here")
    parser.add_argument("--plot", metavar="DIR", help="write throughput.png and latency.png")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--from-json", metavar="PATH",
                        help="measure nothing: print the table (and --plot) of a saved run")
    args = parser.parse_args(argv)

    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        print(render_table(saved))
        if redis_table := render_redis(saved):
            print("\n" + redis_table)
        if args.plot:
            from .plot import plot

            for path in plot(saved, Path(args.plot)):
                print(f"wrote {path}", file=sys.stderr)
        return 0

    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    small = args.quick or args.smoke
    repeat = args.repeat if args.repeat is not None else (1 if small else 5)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.jobs < 1 or (args.jobs > 1 and not small):
        parser.error("--jobs: at least 1, and more only with --quick or --smoke (cases "
                     "measured side by side measure each other)")
    cases = select(plan(sizes), args.only)
    if args.no_peers:
        cases = [c for c in cases if not c.peer]
    if args.list:
        for c in cases:
            print(f"{c.id:34} {c.label}")
        return 0

    info = machine()
    print(f"trioqueue benchmarks: {len(cases)} cases x {repeat} runs"
          f"{' (quick)' if args.quick else ' (smoke)' if args.smoke else ''}; "
          f"{info['nproc']} cores, {info['cpu']}, "
          f"Python {info['python']}", file=sys.stderr)
    results: dict[str, dict[str, Any]] = {
        c.id: {"runs": [], "errors": [], "skipped": None} for c in cases}
    for c in cases:
        reason = c.precheck()
        if reason is not None:
            results[c.id]["skipped"] = reason
    started = time.monotonic()
    served: queue.SimpleQueue[ServedChild] = queue.SimpleQueue()
    servers = [ServedChild() for _ in range(args.jobs if args.smoke else 0)]
    for server in servers:
        served.put(server)

    def run_one(rep: int, c: Case) -> None:
        r = results[c.id]
        t = time.monotonic()
        if args.smoke:
            server = served.get()  # one per thread of the pool: never waits
            try:
                outcome = server.run(c, sizes.timeout)
            finally:
                served.put(server)
        else:
            outcome = run_child(c, sizes.timeout)
        print(f"[{rep + 1}/{repeat}] {c.id:34} {short(outcome)} "
              f"({time.monotonic() - t:.1f} s)", file=sys.stderr)
        if "skipped" in outcome:
            r["skipped"] = outcome["skipped"]
        elif "error" in outcome:
            r["errors"].append(outcome["error"])
        else:
            r["runs"].append(outcome["metrics"])

    # --smoke: the cases that start processes of their own (servers, nodes) first, so
    # that the short in-process ones fill the gaps at the end instead of leaving one
    # long case to run alone.
    order = sorted(cases, key=lambda c: c.system in IN_PROCESS) if args.smoke else cases
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for rep in range(repeat):
            todo = []
            for c in order:
                if results[c.id]["skipped"] is not None:
                    if rep == 0:
                        print(f"[{rep + 1}/{repeat}] {c.id:34} skipped: "
                              f"{results[c.id]['skipped']}", file=sys.stderr)
                    continue
                todo.append(pool.submit(run_one, rep, c))
            for future in todo:
                future.result()
    for server in servers:
        server.close()
    elapsed = time.monotonic() - started

    doc: dict[str, Any] = {
        "meta": info | {"quick": args.quick, "smoke": args.smoke, "repeat": repeat,
                        "elapsed_s": elapsed,
                        "argv": sys.argv[1:] if argv is None else argv},
        "cases": [],
    }
    for c in cases:
        r = results[c.id]
        doc["cases"].append({
            "id": c.id, "scenario": c.scenario, "group": c.group, "system": c.system,
            "label": c.label, "params": c.params, "peer": c.peer,
            "baseline": c.is_baseline,
            "skipped": r["skipped"], "errors": r["errors"], "runs": r["runs"],
            "summary": summarize(r["runs"]) if r["runs"] else {},
        })
    print(render_table(doc))
    if redis_table := render_redis(doc):
        print("\n" + redis_table)
    print(f"\n{len(cases)} cases x {repeat} runs in {elapsed:.0f} s", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    if args.plot:
        from .plot import plot

        for path in plot(doc, Path(args.plot)):
            print(f"wrote {path}", file=sys.stderr)
    return 1 if any(case["errors"] for case in doc["cases"]) else 0
