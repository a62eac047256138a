"""Shared pieces of the reliability suite (`make reliability` runs it whole and writes
RELIABILITY.md; the default test run keeps a representative subset).

LORALAB_RELIABILITY_FULL=1   the full sizes (100 MB line, more kill points, longer storms)
LORALAB_RELIABILITY_OUT=F    where each test adds its figures (JSON lines) for the report
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

FULL = os.environ.get("LORALAB_RELIABILITY_FULL") == "1"


def run_cli(*args, timeout: float = 120, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """`loralab ARGS` in a fresh process (the real entry point and its error boundary)."""
    e = dict(os.environ, NO_COLOR="1", COLUMNS="200") | (env or {})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([sys.executable, "-m", "loralab.cli", *map(str, args)], capture_output=True,
                       text=True, timeout=timeout, env=e, cwd=cwd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the child: a bound on work that a busy machine does not break
    r.cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return r


def assert_user_error(r: subprocess.CompletedProcess, *, code: int = 2) -> str:
    """Exit `code`, no traceback, exactly one non-empty line on stderr; returns that line."""
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-2000:]
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1, r.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="session")
def figures():
    """record(area, **counts): figures for RELIABILITY.md, appended as JSON lines."""
    path = os.environ.get("LORALAB_RELIABILITY_OUT")

    def record(area: str, **counts) -> None:
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"area": area, "t": time.time(), "full": FULL, **counts}) + "\n")

    return record
