"""The benchmark harness cannot rot: ``python -m benchmarks --smoke`` runs every case of
the plan end to end (the ``--quick`` cases, with the least work that takes each through
its code, several to a child process).

Nothing here asserts anything about speed: only that every scenario and every case is in
the JSON, that each case either measured something or says why it was skipped, and that
none failed.
Peers (huey, SAQ, streaq) are installed by the ``bench`` extra only; where they are
missing their cases must be skipped with a reason, which is checked too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {"noop", "priorities", "latency", "io", "memory", "http"}
ALWAYS_MEASURED = {  # need nothing beyond the test extra
    "noop/trio", "noop/asyncio", "noop/trioqueue/nowait", "noop/trioqueue/await-1",
    "noop/trioqueue/await-8", "priorities/trioqueue", "latency@1000/trio",
    "latency@1000/trioqueue", "io@10/trioqueue", "memory/trioqueue",
}


@pytest.mark.slow
def test_quick_run_produces_every_scenario(tmp_path: Path) -> None:
    from benchmarks.cases import SMOKE, plan

    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--no-peers", "--jobs", "2",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert doc["meta"]["smoke"] is True
    cases = {c["id"]: c for c in doc["cases"]}
    assert list(cases) == [c.id for c in plan(SMOKE) if not c.peer]  # none vanished
    assert {c["scenario"] for c in doc["cases"]} == SCENARIOS
    assert ALWAYS_MEASURED <= set(cases)
    for case in doc["cases"]:
        assert not case["errors"], (case["id"], case["errors"])
        if case["skipped"] is not None:
            assert case["skipped"].strip(), f"{case['id']} skipped without a reason"
        else:
            assert case["runs"], f"{case['id']} neither ran nor says why not"
    for cid in ALWAYS_MEASURED:
        assert cases[cid]["runs"], f"{cid}: {cases[cid]['skipped']}"
    # The table names every case, skipped ones with their reason.
    for cid, case in cases.items():
        assert f"| {cid} |" in proc.stdout
        if case["skipped"] is not None:
            assert f"skipped: {case['skipped']}" in proc.stdout
    assert "1 (baseline)" in proc.stdout


def test_smoke_plans_every_quick_case() -> None:
    """``--smoke`` (the run above) runs the cases of ``--quick`` with other counts: the
    same cases, systems, functions and parameter names; ``--quick`` keeps its sizes."""
    from benchmarks.cases import QUICK, SMOKE, Sizes, plan

    def shape(sizes: Sizes) -> list[tuple[str, str, str, list[str], bool]]:
        return [(c.id, c.system, c.func, sorted(c.params), c.peer) for c in plan(sizes)]

    assert shape(SMOKE) == shape(QUICK)
    dashboard = next(c for c in plan(QUICK) if c.id == "http/post-dashboard")
    assert dashboard.params == {"rounds": 1, "seconds": 0.5, "client": "websocket"}


def test_smoke_and_quick_exclude_each_other() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--smoke"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "not allowed with argument" in proc.stderr


def test_watchers_runs_every_case() -> None:
    """``python -m benchmarks.watchers`` with small counts: every case of both groups in
    its tables (Redis is on 127.0.0.1 in CI)."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.watchers", "--rounds", "1", "--n", "2000",
         "--redis-n", "300", "--batch", "100"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for case in ("none", "self-filtered", "typed", "wait-each", "wait-many"):
        assert f"| {case} |" in proc.stdout, proc.stdout


def test_peer_cases_skip_with_a_reason_when_missing(tmp_path: Path) -> None:
    """A peer whose package is missing is skipped, never dropped: simulated by a
    precheck on a package that cannot exist."""
    from benchmarks.cases import QUICK, plan, select

    cases = select(plan(QUICK), "noop")
    assert {c.id for c in cases} >= {"noop/trio", "noop/trioqueue/nowait", "noop/huey-memory"}
    peer = next(c for c in cases if c.id == "noop/huey-memory")
    from benchmarks.cases import _module

    peer.prechecks = (_module("no_such_package_for_trioqueue_bench"),)
    reason = peer.precheck()
    assert reason is not None
    assert "no_such_package_for_trioqueue_bench" in reason


def test_only_keeps_the_baseline_of_each_group() -> None:
    from benchmarks.cases import QUICK, plan, select

    ids = {c.id for c in select(plan(QUICK), "latency@10000/trioqueue,io@100")}
    assert ids == {"latency@10000/trio", "latency@10000/trioqueue", "io@100/trio",
                   "io@100/asyncio", "io@100/trioqueue"}


@pytest.mark.parametrize("case", ["bare", "nowait", "await", "batch", "many", "sync-many",
                                  "batch-many"])
def test_callgrind_workload_runs_without_valgrind(case: str) -> None:
    """The script ``python -m benchmarks.callgrind`` runs under valgrind, run plainly
    (the batch cases with batches of 100, the last one short)."""
    from benchmarks.callgrind import _CHILD

    proc = subprocess.run([sys.executable, "-c", _CHILD, "250", case, "100"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_callgrind_refuses_unknown_cases_and_bad_counts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks.callgrind import main

    with pytest.raises(SystemExit) as exc:
        main(["nowiat"])
    assert exc.value.code == 2
    assert "unknown case 'nowiat'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["-n", "0"])
    assert "-n: expected a positive number of jobs, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--warm", "-1"])
    assert "--warm: expected 0 or more jobs, got -1" in capsys.readouterr().err


def test_only_the_group_trio_case_is_a_baseline() -> None:
    """``noop/ceiling/trio-commit-wait-64`` runs on bare Trio too, but the ratios of the
    noop group are to ``noop/trio``."""
    from benchmarks.cases import QUICK, plan

    cases = plan(QUICK)
    baselines = {c.id for c in cases if c.is_baseline}
    assert "noop/trio" in baselines
    assert "noop/ceiling/trio-commit-wait-64" not in baselines
    assert all(b == f"{b.split('/')[0]}/trio" for b in baselines)


def test_ceiling_commit_wait_runs_every_job() -> None:
    from benchmarks.sys_trio import noop_commit_wait

    out = noop_commit_wait(1_000, producers=64)
    assert out["completed"] == 1_000
    assert out["producers"] == 64


@pytest.mark.parametrize("durability", ["batch", "sync"])
def test_ceiling_null_writer_writes_nothing_and_is_undone(durability: str) -> None:
    """The null writer runs every job through the store's path, writes no row, and puts
    the real writer back afterwards (the test process goes on using SqliteStore)."""
    from benchmarks.sys_trioqueue import noop
    from trioqueue.testing import SqliteStore

    real = SqliteStore.write_values
    calls: list[int] = []

    def counting(self: SqliteStore, values: object) -> None:
        calls.append(1)

    SqliteStore.write_values = counting  # type: ignore[method-assign]
    try:
        out = noop(500, "await", producers=8, durability=durability, writer="null")
        assert SqliteStore.write_values is counting  # the null writer is gone again
    finally:
        SqliteStore.write_values = real  # type: ignore[method-assign]
    assert out["completed"] == 500
    assert calls == []  # the null writer stood in for the (counting) real one
    with pytest.raises(ValueError, match="writer must be 'sqlite' or 'null', not 'nul'"):
        noop(10, "await", durability="batch", writer="nul")


def test_ceiling_beside_sqlite_load_reports_the_load() -> None:
    """Also: a measurement quiets trioqueue's logger only while it runs (the tests after
    this one read its warnings with caplog)."""
    import importlib
    import logging

    import benchmarks.sys_trioqueue

    logger = logging.getLogger("trioqueue")
    before = logger.level
    logger.setLevel(logging.NOTSET)
    try:
        noop = importlib.reload(benchmarks.sys_trioqueue).noop  # importing changes nothing
        assert logger.level == logging.NOTSET
        out = noop(2_000, "await", beside_sqlite=50_000)
        assert logger.level == logging.NOTSET
    finally:
        logger.setLevel(before)
    assert out["completed"] == 2_000
    assert out["beside_rows"] >= 4096  # at least one statement written beside
    assert out["beside_cpu_s"] > 0


def test_slow_readers_runs_end_to_end(tmp_path: Path) -> None:
    """``python -m benchmarks.slow_readers`` with a few clients for a moment: the reader
    got pages, and the figures are written (nothing about speed or memory)."""
    from .redis_util import free_port

    port = free_port()  # for the child's server
    out = tmp_path / "slow.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.slow_readers", "--clients", "4", "--seconds", "2",
         "--port", str(port), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["clients"] == 4
    assert result["pages"] >= 1
    assert result["jobs"] >= 1
    assert result["rss_peak_mb"] > 0
    assert "slow_readers: 4 clients reading nothing; the reader got" in proc.stdout
