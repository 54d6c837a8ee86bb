"""The Redis table: trioqueue's Redis cases against the best peer of the same run.

Rates are processing rates (``process_per_s``: jobs enqueued first, then timed from the
consumers' start to the last completion) for every system, so the peers' slower enqueue
does not count against them.  ``x best peer`` is the median of a case over the median of
the fastest peer (SAQ, streaq, arq or dramatiq) in the same run, and in brackets the
paired ratio:
the median over repetitions of (this case's run i / the best peer's run i, measured
moments apart).  The targets are issue 16's "Done when".

    python -m benchmarks.redis_report RESULTS.json    # the table of a saved run
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

RATE = "process_per_s"
TARGETS = {
    "redis/trioqueue-1node-p0": 3.0,
    "redis/trioqueue-1node-p128": 10.0,
    "redis/trioqueue-2node-p128": 15.0,
}
P99_TARGET_MS = 5.0
P99_TARGET_CASE = "redis-latency@500/trioqueue-1node-p0"


def _med(case: dict[str, Any], key: str) -> float:
    values = [r[key] for r in case["runs"] if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else math.nan


def _span(case: dict[str, Any], key: str, fmt: str) -> str:
    values = [r[key] for r in case["runs"] if isinstance(r.get(key), (int, float))]
    if not values:
        return "n/a"
    med = fmt.format(statistics.median(values))
    if len(values) == 1:
        return med
    return f"{med} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def best_peer(doc: dict[str, Any]) -> dict[str, Any] | None:
    peers = [c for c in doc["cases"] if c["group"] == "redis" and c["peer"] and c["runs"]]
    return max(peers, key=lambda c: _med(c, RATE), default=None)


def paired(case: dict[str, Any], peer: dict[str, Any]) -> float | None:
    if len(case["runs"]) < 2 or len(case["runs"]) != len(peer["runs"]):
        return None
    return statistics.median(r[RATE] / p[RATE]
                             for r, p in zip(case["runs"], peer["runs"], strict=True))


def render(doc: dict[str, Any]) -> str:
    cases = [c for c in doc["cases"] if c["group"] == "redis"]
    if not cases:
        return ""
    peer = best_peer(doc)
    peer_rate = _med(peer, RATE) if peer else math.nan
    lines = ["| case | jobs | processing rate: median [min-max] | x best peer | target | "
             "details |", "| --- | ---: | --- | ---: | --- | --- |"]
    for c in cases:
        n = c["params"].get("n", "")
        if c["skipped"] is not None or not c["runs"]:
            why = c["skipped"] or (c["errors"][-1].strip().splitlines() or ["?"])[-1][:160]
            lines.append(f"| {c['id']} | {n:,} | {why} | | | |")
            continue
        ratio = _med(c, RATE) / peer_rate if peer else math.nan
        pr = paired(c, peer) if peer else None
        rtxt = "best peer" if c is peer else f"{ratio:.2f}x"
        if pr is not None and c is not peer:
            rtxt += f" (paired {pr:.2f}x)"
        target = TARGETS.get(c["id"])
        ttxt = ""
        if target is not None:
            met = ratio >= target
            ttxt = f">= {target:g}x: {'met' if met else 'MISSED'}"
        if "producer" in c["runs"][0]:  # trioqueue: filled in batches, not measured
            details = f"filled at {_med(c, 'enqueue_per_s'):,.0f}/s in batches of 1,000"
        else:
            details = f"enqueued one by one at {_med(c, 'enqueue_per_s'):,.0f}/s"
        if "node_cpu_us_per_job" in c["runs"][0]:
            details += (f"; node CPU {_med(c, 'node_cpu_us_per_job'):.0f} us/job, Redis CPU "
                        f"{_med(c, 'redis_cpu_us_per_job'):.0f} us/job")
        lines.append(f"| {c['id']} | {n:,} | {_span(c, RATE, '{:,.0f}')} jobs/s | {rtxt} | "
                     f"{ttxt} | {details} |")
    lat = [c for c in doc["cases"] if c["group"].startswith("redis-latency@")]
    if lat:
        lines += ["", "| case | jobs | enqueue→start p99: median [min-max] | p50 | max | "
                  "offered | target |", "| --- | ---: | --- | ---: | ---: | ---: | --- |"]
        for c in lat:
            n = c["params"].get("n", "")
            if c["skipped"] is not None or not c["runs"]:
                why = c["skipped"] or (c["errors"][-1].strip().splitlines() or ["?"])[-1][:160]
                lines.append(f"| {c['id']} | {n:,} | {why} | | | | |")
                continue
            ttxt = ""
            if c["id"] == P99_TARGET_CASE:
                met = _med(c, "p99_ms") <= P99_TARGET_MS
                ttxt = f"<= {P99_TARGET_MS:g} ms: {'met' if met else 'MISSED'}"
            lines.append(
                f"| {c['id']} | {n:,} | {_span(c, 'p99_ms', '{:.1f}')} ms | "
                f"{_med(c, 'p50_ms'):.1f} ms | {_med(c, 'max_ms'):.1f} ms | "
                f"{_med(c, 'offered_per_s'):,.0f}/s of {c['params']['rate']:,}/s | {ttxt} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    print(render(json.loads(Path(argv[1]).read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
