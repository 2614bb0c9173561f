"""Memory for one huge report, and the status sheet with many cases.

    python -m bench.scale [--report-mib 25] [--cases 10000]

Prints the daemon's peak RSS growth while it takes and delivers one REPORT-MIB report (and the
ratio to the report's size), and the time `coc-mail status` and `coc-mail cases` take with
CASES cases in the database (wall time of the command, Python start-up included).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import Daemon, make_report, wire


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def huge_report(mib: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="coc-scale-"))
    d = Daemon(root, f"sqlite:///{root}/var/coc-mail.db",
               extra={"server": {"max_message_bytes": int(mib * 1.5 + 8) * 1024 * 1024}})
    d.start()
    try:
        d.send(make_report(subject="warm-up"))
        d.wait_delivered(4)
        assert d.proc is not None
        base = rss_kib(d.proc.pid, "VmRSS")
        report = make_report(subject="huge")
        report.add_attachment(b"\xa5" * (mib * 1024 * 1024), maintype="application",
                              subtype="octet-stream", filename="big.bin")
        raw = wire(report)
        d.send(raw)
        d.wait_delivered(8, timeout=600)
        peak = rss_kib(d.proc.pid, "VmHWM")
        growth = (peak - base) / 1024
        return {"report MiB (on the wire)": len(raw) / 2**20, "baseline RSS MiB": base / 1024,
                "peak RSS MiB": peak / 1024, "growth MiB": growth,
                "growth / report size": growth / (len(raw) / 2**20)}
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)


def many_cases(count: int) -> dict[str, float]:
    from sqlmodel import Session

    from coc_mail import config, document
    from coc_mail.app import build
    from coc_mail.store import Case

    root = Path(tempfile.mkdtemp(prefix="coc-cases-"))
    d = Daemon(root, f"sqlite:///{root}/var/coc-mail.db")
    d.start()
    d.stop()
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        app = build(config.load(d.config))
        with Session(app.engine) as session:
            for i in range(count):
                case = Case(code_name=f"bench case{i:06d}".replace("case", "case-")
                            .replace("-", ""), reporter_key=f"k{i}", status="Resolved")
                document.set_sheet(app.keys, case, {"safety": "No", "repeat": "Maybe",
                                                    "actions": "-", "resolution": "Warning"})
                session.add(case)
            session.commit()
    finally:
        os.chdir(cwd)
    results = {}
    for name, args in (("status", ["status", "--format", "csv"]),
                       ("cases (first page)", ["cases"])):
        start = time.perf_counter()
        d.cli(*args)
        results[f"`coc-mail {' '.join(args)}` seconds"] = time.perf_counter() - start
        del name
    start = time.perf_counter()
    d.cli("--help")
    results["`coc-mail --help` seconds (start-up alone)"] = time.perf_counter() - start
    shutil.rmtree(root, ignore_errors=True)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--report-mib", type=int, default=25)
    p.add_argument("--cases", type=int, default=10000)
    args = p.parse_args()
    for title, figures in ((f"one {args.report_mib} MiB report", huge_report(args.report_mib)),
                           (f"{args.cases} cases", many_cases(args.cases))):
        print(f"## {title}")
        for k, v in figures.items():
            print(f"| {k} | {v:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
