"""Every ```python block in README.md and docs/*.md runs, so the docs cannot rot.

How a file's blocks run: in order, in one fresh Python process per file, sharing one
namespace (so a page can import and define in one block and use it in the next, as a
reader would in a REPL).  Each block is compiled under its file name with its own line
numbers, so a failure points at the doc's line.  A whole-file block is just a block that
needs nothing from the ones before it.

Markers, in an HTML comment on the line just before the opening fence:

- ``<!-- not-run: reason -->``: the block is a fragment that cannot run (an ellipsis for
  a body, a name the reader supplies).  The reason is required.  Use sparingly.
- ``<!-- requires: persistence -->`` / ``<!-- requires: server -->``: the block runs
  once that part of trioqueue is installed, and is skipped (and listed) before then.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT = 45.0
"""A page's blocks together; the guide's take about two seconds."""

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>not-run|requires)\s*:\s*(?P<arg>.*?)\s*-->\s*$")


@attrs.frozen
class Block:
    path: Path
    line: int  # 1-based line of the first line of code
    code: str
    not_run: str | None = None
    requires: str | None = None


def extract(path: Path) -> list[Block]:
    """The fenced python blocks of a markdown file, with the marker just before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, indent = m["fence"], m["lang"].lower(), len(m["indent"])
        start = i + 1
        j = start
        while j < len(lines) and not lines[j].strip().startswith(fence[0] * len(fence)):
            j += 1
        if lang in ("python", "py", "python3"):
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            marker = MARKER.match(lines[k]) if k >= 0 else None
            code = "\n".join(ln[indent:] for ln in lines[start:j])
            blocks.append(Block(
                path, start + 1, code,
                not_run=marker["arg"] if marker and marker["kind"] == "not-run" else None,
                requires=marker["arg"] if marker and marker["kind"] == "requires" else None,
            ))
        i = j + 1
    return blocks


# Both landed: a block marked with a requirement runs like any other, so a broken
# feature fails its docs instead of skipping them.  The labels stay as documentation.
AVAILABLE = {"persistence": True, "server": True}


# Runs the blocks it is given (as JSON on stdin) in one namespace, each compiled with its
# doc's file name and padded so that tracebacks show the doc's own line numbers.
DRIVER = """
import json, sys
namespace = {"__name__": "__main__"}
for block in json.load(sys.stdin):
    print(f"--- {block['file']}:{block['line']}", flush=True)
    source = "\\n" * (block["line"] - 1) + block["code"]
    exec(compile(source, block["file"], "exec"), namespace)
"""


def test_markers_are_honest() -> None:
    """Every marker has a reason or a known requirement, and most blocks run."""
    total = skipped = 0
    for path in DOC_FILES:
        for block in extract(path):
            total += 1
            if block.not_run is not None:
                skipped += 1
                assert block.not_run, f"{path.name}:{block.line}: not-run needs a reason"
            if block.requires is not None:
                assert block.requires in AVAILABLE, (
                    f"{path.name}:{block.line}: unknown requirement {block.requires!r}"
                )
    assert total >= 15, "the docs lost their examples?"
    assert skipped <= total // 10, f"{skipped} of {total} blocks are marked not-run"


def test_guide_covers_every_topic() -> None:
    guide = (ROOT / "docs" / "guide.md").read_text(encoding="utf-8").lower()
    headings = [ln for ln in guide.splitlines() if ln.startswith("## ")]
    for topic in ("tasks", "priorities", "retries", "delays", "idempotency", "results",
                  "cancellation", "shutdown", "persistence", "events"):
        assert any(topic in h for h in headings), f"docs/guide.md has no section on {topic}"


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_python_blocks_run(path: Path, tmp_path: Path) -> None:
    blocks = extract(path)
    runnable = [
        b for b in blocks
        if b.not_run is None and (b.requires is None or AVAILABLE[b.requires])
    ]
    if not runnable:
        assert not blocks or all(b.not_run or b.requires for b in blocks)
        pytest.skip(f"{path.name} has no runnable python block")
    payload = json.dumps(
        [{"file": str(b.path.relative_to(ROOT)), "line": b.line, "code": b.code}
         for b in runnable]
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", DRIVER],
        input=payload, capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, (
        f"a python block of {path.name} failed\n--- stdout\n{result.stdout}\n"
        f"--- stderr\n{result.stderr}"
    )
