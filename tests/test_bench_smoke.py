"""The benchmark harness still works (a small run, no timing assertions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import postfix

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(bool(postfix.available()), reason=postfix.available() or "ok")
def test_throughput_benchmark_smoke() -> None:
    result = subprocess.run([sys.executable, "-m", "bench.throughput", "--smoke",
                             "--baseline", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for measure in ("accepted msg/s: Postfix", "accepted msg/s: coc-mail",
                    "delivered reports/s: coc-mail", "coc-mail / Postfix, accepted",
                    "this code / coc-mail at HEAD, delivered", "machine speed"):
        assert measure in result.stdout
