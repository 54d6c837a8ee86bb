"""The table: one Markdown table (readable in a terminal, pasteable into the docs).

Every figure is the median over the repetitions with [min-max], and the ``x bare trio``
column is the median divided by the median of the bare-Trio case of the same group
(same run), followed by the paired ratio (median of per-repetition ratios).  For rates
higher is better; for latency and memory lower is better.
"""

from __future__ import annotations

import math
from typing import Any

PRIMARY = {
    "noop": "jobs_per_s",
    "io": "jobs_per_s",
    "latency": "p99_ms",
    "memory": "bytes_per_job",
    "priorities": "max_share_error",
    "http": None,
}


def _med(case: dict[str, Any], key: str) -> float:
    s = case["summary"].get(key)
    return float(s["median"]) if s else math.nan


def _span(case: dict[str, Any], key: str, fmt: str) -> str:
    s = case["summary"].get(key)
    if not s:
        return "n/a"
    if len(case["runs"]) == 1:
        return fmt.format(s["median"])
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}-{fmt.format(s['max'])}]"


def _rate(v: float) -> str:
    if v >= 10_000:
        return f"{v / 1000:,.0f}k"
    if v >= 1_000:
        return f"{v / 1000:,.1f}k"
    return f"{v:,.0f}"


def primary_key(case: dict[str, Any]) -> str | None:
    if case["scenario"] == "http":
        return "requests_per_s" if case["id"].startswith("http/post") else "events_per_s"
    return PRIMARY[case["scenario"]]


def baseline_of(doc: dict[str, Any], case: dict[str, Any]) -> dict[str, Any] | None:
    for other in doc["cases"]:
        if other["baseline"] and other["group"] == case["group"] and other["runs"]:
            return other
    return None


def ratio(doc: dict[str, Any], case: dict[str, Any]) -> float | None:
    key = primary_key(case)
    base = baseline_of(doc, case)
    if key is None or base is None or not case["runs"] or case["scenario"] == "priorities":
        return None
    b = _med(base, key)
    v = _med(case, key)
    if not b or math.isnan(b) or math.isnan(v):
        return None
    return v / b


def paired_ratio(doc: dict[str, Any], case: dict[str, Any]) -> float | None:
    """Median of the per-repetition ratios (repetition i of this case over repetition i
    of the baseline, which ran moments apart): steadier than a ratio of medians when the
    machine's load drifts during the run."""
    key = primary_key(case)
    base = baseline_of(doc, case)
    if (key is None or base is None or case["baseline"] or case["scenario"] == "priorities"
            or len(case["runs"]) < 2 or len(case["runs"]) != len(base["runs"])):
        return None
    values = sorted(r[key] / b[key] for r, b in zip(case["runs"], base["runs"], strict=True)
                    if b.get(key))
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _result(case: dict[str, Any]) -> str:
    sc = case["scenario"]
    if sc in ("noop", "io"):
        return _span(case, "jobs_per_s", "{:,.0f}") + " jobs/s"
    if sc == "latency":
        return (f"p99 {_span(case, 'p99_ms', '{:.2f}')} ms; p50 {_med(case, 'p50_ms'):.2f}, "
                f"max {_med(case, 'max_ms'):.1f} ms")
    if sc == "memory":
        return _span(case, "bytes_per_job", "{:,.0f}") + " B/job"
    if sc == "priorities":
        parts = [f"{p[0].upper()} {_med(case, f'share_{p}') * 100:.1f}%"
                 for p in ("high", "medium", "low")]
        want = "/".join(f"{_med(case, f'expected_{p}') * 100:.1f}"
                        for p in ("high", "medium", "low"))
        return f"{' '.join(parts)} (weights {want}%)"
    if case["id"].startswith("http/post"):
        return _span(case, "requests_per_s", "{:,.0f}") + " POST/s"
    return _span(case, "events_per_s", "{:,.0f}") + " events/s"


def _details(case: dict[str, Any]) -> str:
    sc = case["scenario"]
    r0 = case["runs"][0]
    if sc in ("noop", "io"):
        enq, proc = _med(case, "enqueue_s"), _med(case, "process_s")
        n = case["params"]["n"]
        if r0.get("overlapped"):
            d = (f"enqueue (workers running) {enq:.2f} s = {_rate(n / enq)}/s, "
                 f"tail {proc * 1e3:.0f} ms")
        else:
            d = (f"enqueue {enq:.2f} s = {_rate(n / enq)}/s, then process {proc:.2f} s = "
                 f"{_rate(n / proc)}/s")
        if sc == "io":
            d += f"; ideal {_rate(r0['ideal_per_s'])}/s"
        return d
    if sc == "latency":
        return (f"{case['params']['n']:,} jobs, offered {_rate(_med(case, 'offered_per_s'))}/s "
                f"of {_rate(case['params']['rate'])}/s")
    if sc == "memory":
        grow = _med(case, "rss_after") - _med(case, "rss_before")
        return f"RSS +{grow / 2**20:.1f} MiB for {case['params']['n']:,} waiting"
    if sc == "priorities":
        return (f"worst LOW wait {_med(case, 'worst_wait_low_ms'):.0f} ms "
                f"(p99 {_med(case, 'p99_wait_low_ms'):.0f}), worst HIGH "
                f"{_med(case, 'worst_wait_high_ms'):.0f} ms; {_med(case, 'picks'):,.0f} picks; "
                f"max share error {_med(case, 'max_share_error') * 100:.2f} pt")
    if case["id"] == "http/post-wrk":
        return (f"{_med(case, 'n'):,.0f} requests in {case['params']['duration']:g} s; "
                f"latency p50 {_med(case, 'p50_ms'):.1f} ms, p99 {_med(case, 'p99_ms'):.1f} ms;"
                f" server CPU {_med(case, 'server_cpu_s'):.1f} s; non-2xx "
                f"{_med(case, 'non_2xx'):,.0f}")
    if case["id"] == "http/post-dashboard":
        return (f"none {_med(case, 'none_requests_per_s'):,.0f} POST/s, ratio "
                f"{_med(case, 'ratio'):.2f} (dashboard: {r0.get('client')}); server CPU "
                f"{_med(case, 'cpu_us_per_post_none'):.0f} us/POST without, "
                f"{_med(case, 'cpu_us_per_post_dashboard'):.0f} us with")
    if case["id"] == "http/post":
        statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(r0.get("statuses", {}).items()))
        return (f"latency p50 {_med(case, 'p50_ms'):.1f} ms, p99 {_med(case, 'p99_ms'):.1f} ms;"
                f" client CPU {_med(case, 'client_cpu_s'):.1f} s, server CPU "
                f"{_med(case, 'server_cpu_s'):.1f} s of {_med(case, 'elapsed_s'):.1f} s; "
                f"{statuses}")
    return (f"{_med(case, 'per_client_events_per_s'):,.0f} events/s per client; posting took "
            f"{_med(case, 'post_s'):.1f} s of {_med(case, 'total_s'):.1f} s; "
            f"lagged-dropped {_med(case, 'lagged_dropped'):.0f}")


def _n(case: dict[str, Any]) -> str:
    p = case["params"]
    if case["scenario"] == "priorities" or ("duration" in p and "n" not in p):
        return f"{p['duration']:g} s"
    n = p.get("n")
    return f"{n:,}" if isinstance(n, int) else ""


def render_table(doc: dict[str, Any]) -> str:
    lines = ["| case | jobs | result: median [min-max] | x bare trio | details |",
             "| --- | ---: | --- | ---: | --- |"]
    for case in doc["cases"]:
        if case["skipped"] is not None:
            lines.append(f"| {case['id']} | {_n(case)} | skipped: {case['skipped']} | | |")
            continue
        if not case["runs"]:
            last = (case["errors"][-1].strip().splitlines() or ["?"])[-1][:200]
            lines.append(f"| {case['id']} | {_n(case)} | ERROR in {len(case['errors'])} "
                         f"run(s): {last} | | |")
            continue
        r = ratio(doc, case)
        rtxt = "1 (baseline)" if case["baseline"] else ("—" if r is None else f"{r:.2f}x")
        pr = paired_ratio(doc, case)
        if pr is not None:
            rtxt += f" (paired {pr:.2f}x)"
        err = f" ({len(case['errors'])} run(s) failed)" if case["errors"] else ""
        lines.append(f"| {case['id']} | {_n(case)} | {_result(case)}{err} | {rtxt} | "
                     f"{_details(case)} |")
    return "\n".join(lines)
