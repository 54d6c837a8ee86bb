"""``--plot DIR``: throughput per scenario per system, latency percentiles vs offered load."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _median(case: dict[str, Any], key: str) -> float:
    s = case["summary"].get(key)
    return float(s["median"]) if s else math.nan


def _bounds(case: dict[str, Any], key: str) -> tuple[float, float]:
    s = case["summary"][key]
    return s["median"] - s["min"], s["max"] - s["median"]


def plot(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    cases = [c for c in doc["cases"] if c["runs"]]
    meta = doc["meta"]
    subtitle = (f"{meta['nproc']} cores ({meta['cpu']}), Python {meta['python']}, "
                f"median of {meta['repeat']} [min-max]")

    # 1. throughput: one bar per case of the rate scenarios, grouped by scenario.
    rate_cases = [c for c in cases if (c["scenario"] in ("noop", "io")
                                       or c["id"].startswith("http/post"))
                  and "/ceiling/" not in c["id"]]  # diagnostics, not systems
    if rate_cases:
        key = {c["id"]: ("requests_per_s" if c["id"].startswith("http/post")
                         else "jobs_per_s")
               for c in rate_cases}
        fig, ax = plt.subplots(figsize=(10, 5.2), dpi=80)
        colors = {"trio": "#888888", "asyncio": "#bbbbbb", "trioqueue": "#1f77b4",
                  "trioqueue-http": "#17becf", "huey": "#ff7f0e", "saq": "#2ca02c",
                  "streaq": "#d62728"}
        labels, values, errs, cols = [], [], [], []
        for c in rate_cases:
            k = key[c["id"]]
            labels.append(c["id"] + (f" (n={c['params']['n']:,})" if c["peer"] else ""))
            values.append(_median(c, k))
            errs.append(_bounds(c, k))
            cols.append(colors.get(c["system"], "#9467bd"))
        y = list(range(len(labels)))
        ax.barh(y, values, xerr=list(zip(*errs, strict=True)), color=cols, capsize=2)
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("jobs/s (POST/s for http/post*), log scale")
        ax.set_title(f"Throughput per scenario and system\n{subtitle}", fontsize=9)
        ax.grid(axis="x", which="both", alpha=0.3)
        fig.tight_layout()
        path = out_dir / "throughput.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)

    # 2. latency: p50 / p99 / max vs offered load, one colour per system.
    lat = [c for c in cases if c["scenario"] == "latency"]
    if lat:
        fig, ax = plt.subplots(figsize=(11, 5.2), dpi=80)
        systems: dict[str, list[dict[str, Any]]] = {}
        for c in lat:
            systems.setdefault(c["id"].split("/", 1)[1], []).append(c)
        for i, (name, cs) in enumerate(sorted(systems.items())):
            cs.sort(key=lambda c: c["params"]["rate"])
            x = [c["params"]["rate"] for c in cs]
            color = f"C{i}"
            ax.plot(x, [_median(c, "p50_ms") for c in cs], "o-", color=color,
                    label=f"{name} p50")
            ax.plot(x, [_median(c, "p99_ms") for c in cs], "s--", color=color,
                    label=f"{name} p99")
            ax.plot(x, [_median(c, "max_ms") for c in cs], "^:", color=color, alpha=0.5,
                    label=f"{name} max")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered load, jobs/s (paced on the real clock)")
        ax.set_ylabel("enqueue → handler start, ms (log)")
        ax.set_title(f"Latency vs offered load\n{subtitle}", fontsize=9)
        ax.grid(which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path = out_dir / "latency.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
