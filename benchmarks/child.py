"""One measurement in a fresh process: ``python -m benchmarks.child CASE_JSON OUT_PATH``.

``CASE_JSON`` names the system module, the scenario function and its keyword arguments.
The outcome goes to ``OUT_PATH`` as JSON: ``{"ok": true, "metrics": {...}}``,
``{"skipped": "<reason>"}`` or ``{"error": "<traceback>"}``; stdout and stderr are left
to the libraries under test.

``python -m benchmarks.child --serve`` (``--smoke`` only, where nothing is measured):
case after case in one process, one ``CASE_JSON`` a line on stdin, one outcome a line
on stdout, until stdin ends; the libraries get /dev/null for stdin and stdout.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from typing import Any

SYSTEMS = {
    "trio": "benchmarks.sys_trio",
    "asyncio": "benchmarks.sys_asyncio",
    "trioqueue": "benchmarks.sys_trioqueue",
    "huey": "benchmarks.sys_huey",
    "saq": "benchmarks.sys_saq",
    "streaq": "benchmarks.sys_streaq",
    "trioqueue-http": "benchmarks.sys_http",
    "trioqueue-dashboard": "benchmarks.dashboard_load",
    "trioqueue-redis": "benchmarks.sys_redis",
    "arq": "benchmarks.sys_arq",
    "dramatiq": "benchmarks.sys_dramatiq",
}


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.common import Skip

    try:
        module = importlib.import_module(SYSTEMS[case["system"]])
        metrics = getattr(module, case["func"])(**case["params"])
    except Skip as skip:
        return {"skipped": str(skip)}
    except BaseException:
        return {"error": traceback.format_exc()}
    return {"ok": True, "metrics": metrics}


def serve() -> int:
    # The protocol keeps the pipes; fds 0 and 1 become /dev/null (as the libraries'
    # stdin and stdout are in a child of its own), and the pipes' copies are not
    # inherited by the processes the cases start (os.dup: non-inheritable).
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    while line := requests.readline():
        outcome = run_case(json.loads(line))
        replies.write(json.dumps(outcome, default=str) + "\n")
        replies.flush()
    return 0


def main(argv: list[str]) -> int:
    if argv[1:] == ["--serve"]:
        return serve()
    case = json.loads(argv[1])
    outcome = run_case(case)
    with open(argv[2], "w", encoding="utf-8") as f:
        json.dump(outcome, f, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
