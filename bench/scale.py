"""Memory for one huge report, and the status sheet with many cases.

    python -m bench.scale [--report-mib 25] [--cases 10000]

Prints each daemon process's peak RSS growth while it takes and delivers one REPORT-MIB report
(and the ratio to the report's size on the wire), and the time `coc-mail status` and
`coc-mail cases` take with CASES cases in the database (wall time, Python start-up included).
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import command_line, listening, memory_kib, roles
from tests.helpers import Daemon, free_port, make_report, wait_for, wire


def big_message(mib: int) -> bytes:
    report = make_report(subject="huge")
    report.add_attachment(b"\xa5" * (mib * 1024 * 1024), maintype="application",
                          subtype="octet-stream", filename="big.bin")
    return wire(report)


def bare_aiosmtpd(mib: int) -> float:
    """Peak RSS growth of a bare aiosmtpd server (keeps nothing) taking the same message:
    the floor for any aiosmtpd-based intake, measured in the same run."""
    port = free_port()
    limit = str(int(mib * 1.5 + 8) * 1024 * 1024)
    proc = subprocess.Popen([sys.executable, "-m", "bench.bare", str(port), limit],
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        wait_for(lambda: listening(port), 20, "bare aiosmtpd")
        with smtplib.SMTP("127.0.0.1", port) as s:
            s.sendmail("warm@example.com", ["conduct@example.org"], wire(make_report()))
        time.sleep(0.3)
        base = memory_kib(proc.pid, "VmRSS")
        raw = big_message(mib)
        with smtplib.SMTP("127.0.0.1", port) as s:
            s.sendmail("big@example.com", ["conduct@example.org"], raw)
        return (memory_kib(proc.pid, "VmHWM") - base) / 1024
    finally:
        proc.kill()
        proc.wait()


def huge_report(mib: int) -> dict[str, float]:
    """Peak RSS growth of each daemon process while one MIB-MiB report is taken in, opened
    as a case and delivered to the 3 members (Maildir) - against the report's size on the
    wire (base64 makes 25 MiB of attachment 34 MiB of message)."""
    root = Path(tempfile.mkdtemp(prefix="coc-scale-"))
    d = Daemon(root, f"sqlite:///{root}/var/coc-mail.db",
               extra={"server": {"max_message_bytes": int(mib * 1.5 + 8) * 1024 * 1024,
                                 "workers": 0}})
    d.start()
    try:
        d.send(make_report(subject="warm-up"))
        d.wait_delivered(4)
        time.sleep(0.5)
        assert d.proc is not None
        procs = roles(d.proc.pid)
        base = {role: memory_kib(pid, "VmRSS") for role, pid in procs.items()}
        raw = big_message(mib)
        size = len(raw) / 2**20
        d.send(raw)
        del raw
        d.wait_delivered(8, timeout=600)
        out: dict[str, float] = {"report MiB (on the wire)": size}
        total = 0.0
        for role, pid in procs.items():
            growth = (memory_kib(pid, "VmHWM") - base[role]) / 1024
            total += growth
            out[f"{role}: peak RSS growth MiB"] = growth
            out[f"{role}: growth / report size"] = growth / size
        out["all processes: sum of peak growths MiB"] = total
        out["all processes: sum / report size"] = total / size
        bare = bare_aiosmtpd(mib)
        out["bare aiosmtpd taking the same message: peak RSS growth MiB"] = bare
        out["bare aiosmtpd: growth / report size"] = bare / size
        intake = out["intake: peak RSS growth MiB"]
        out["intake / bare aiosmtpd (same run)"] = intake / bare
        return out
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)


def many_cases(count: int) -> dict[str, float]:
    from sqlmodel import Session

    from coc_mail import config
    from coc_mail.app import build
    from coc_mail.cases import document
    from coc_mail.store import Case

    root = Path(tempfile.mkdtemp(prefix="coc-cases-"))
    d = Daemon(root, f"sqlite:///{root}/var/coc-mail.db")
    d.start()
    d.stop()

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
    p.add_argument("--out", default="docs/scale.md", help="markdown results ('' to skip)")
    args = p.parse_args()
    command = command_line("bench.scale", sys.argv[1:])
    lines = ["# Memory for one big report, and many cases", "",
             f"Produced by `{command}` on {os.cpu_count()} cores. Peak RSS growth is VmHWM "
             "minus VmRSS before the report, per process; ratios are to the report's size on "
             "the wire.", ""]
    for title, figures in ((f"One {args.report_mib} MiB report", huge_report(args.report_mib)),
                           (f"{args.cases} cases", many_cases(args.cases))):
        lines += [f"## {title}", "", "| measure | value |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in figures.items()]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
