"""The scale-out benchmark's harness still works (a small run, no timing assertions). A file
of its own, apart from tests/test_bench_smoke.py: the two take over a minute between them,
and the suite's workers share out files, not tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import postfix

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.postgres
@pytest.mark.skipif(bool(postfix.available()), reason=postfix.available() or "ok")
def test_postgres_scale_out_benchmark_smoke(pg_admin: str | None) -> None:
    if pg_admin is None:
        pytest.skip("PostgreSQL not configured ($COC_MAIL_TEST_PG)")
    result = subprocess.run([sys.executable, "-m", "bench.postgres", "--database", pg_admin,
                             "--messages", "40", "--repeat", "1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for measure in ("delivered reports/s: PostgreSQL, two daemons",
                    "two daemons / one, delivered (same-run ratio)"):
        assert measure in result.stdout
