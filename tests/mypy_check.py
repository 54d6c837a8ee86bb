"""``mypy --strict`` on a user's snippet, for the tests of what the types tell a user.

Each test writes a small program (the lines mypy must flag say ``# BAD``) and compares
the lines flagged with the lines marked.  The runs in one test process share a cache
(``mypy_cache``, a fixture of tests/conftest.py): the first analyses trioqueue, the
others only their snippet.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import attrs


@attrs.frozen
class Checked:
    marked: list[int]
    """The snippet's lines marked ``# BAD``."""
    flagged: list[int]
    """The lines mypy reported an error on."""
    revealed: list[str]
    """mypy's ``Revealed type is ...`` lines, in order."""
    output: str


def mypy_on(source_text: str, where: Path, cache: Path) -> Checked:
    """``mypy --strict`` on ``source_text`` (dedented), written under ``where``."""
    from mypy import api

    source = where / "snippet.py"
    source.write_text(textwrap.dedent(source_text))
    limit = sys.getrecursionlimit()
    try:
        out, err, status = api.run([
            "--strict", "--no-error-summary", "--cache-dir", str(cache), str(source),
        ])
    finally:  # mypy raises it for good: a deep payload would pass the JSON check after
        sys.setrecursionlimit(limit)
    lines = out.splitlines()
    assert status in (0, 1), out + err
    marked = [n for n, line in enumerate(source.read_text().splitlines(), 1)
              if "# BAD" in line]
    flagged = sorted({int(line.split(":")[1]) for line in lines if ": error:" in line})
    return Checked(marked, flagged, [line for line in lines if "Revealed type" in line],
                   out + err)
