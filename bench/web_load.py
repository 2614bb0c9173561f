"""The web view's cost under load: a flood of reports with and without 50 signed-in members
browsing, in one run.

Each repeat runs the same daemon configuration twice, in alternating order: once without
``[web]``, once with it and 50 members browsing (each a signed-in session fetching its case
list, a case page or the status sheet once a second, as people reading do; ``--think 0``
makes it a stress run, labelled). The flood is smtp-source's (20 sessions, 10 KB reports, 50
members of whom the 5 triage members get each report: ``intake.forward = "triage"``),
delivered DKIM-signed to Postfix's smtp-sink. Shipped defaults otherwise (inbound DKIM
verification on, acknowledgments on, default delivery workers); only the flood digest is
off, since smtp-source sends every report from one sender. Sessions are made in the
database directly (50 sign-ins from one address would meet the sign-in rate limit, which is
not what is measured here). The members' browsers run in a process of their own at nice 19:
they stand for people on other machines; on this one they are load generator, not the web
view's cost (their CPU is reported beside it).

Reported: accepted msg/s (smtp-source's wall time), delivered reports/s (every triage copy
at the sink), their same-run ratios with/without the web view (target: within 10 %), and
the pages served and their latency.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import answers_http, command_line, cpu_seconds, flood_options, roles
from bench.throughput import Sink, smtp_source, wait_copies
from tests import postfix
from tests.helpers import Daemon, free_port, wait_for

MEMBERS = [{"name": f"Member {i}", "email": f"m{i}@example.net", "handle": f"m{i}",
            **({"roles": ["triage", "operator"] if i == 1 else ["triage"]} if i <= 5 else {})}
           for i in range(1, 51)]
TRIAGE = 5


@dataclass
class Side:
    accept: float = 0.0
    delivered: float = 0.0
    pages: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)


def sessions(d: Daemon) -> dict[str, str]:
    """A session cookie for every member, made as a sign-in makes it."""
    from sqlmodel import Session

    from coc_mail import config
    from coc_mail.app import build
    from coc_mail.web import auth

    cwd = os.getcwd()
    os.chdir(d.root)  # relative paths in the config (keys, database) are the daemon's
    try:
        app = build(config.load(str(d.config)), migrate=False)
        with Session(app.engine) as session:
            cookies = {m.email: auth.new_session(app, session, m) for m in app.settings.members}
            session.commit()
    finally:
        os.chdir(cwd)
    return cookies


def browse(base: str, cookie: str, think: float, stop: threading.Event, side: Side,
           lock: threading.Lock) -> None:
    """One member reading: keep-alive requests through :mod:`http.client` (lighter than a
    full client library: the load generator should take little of the machine)."""
    host, _, port = base.removeprefix("http://").rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Cookie": f"coc_session={cookie}"}
    cases: list[str] = []
    turn = 0
    while not stop.is_set():
        path = ["/", "/status", *(cases[-1:] if cases else [])][turn % (3 if cases else 2)]
        turn += 1
        start = time.perf_counter()
        try:
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            text = r.read().decode("utf-8", "replace")
            ok = r.status == 200
            if path == "/" and ok:
                cases = re.findall(r'href="(/cases/[a-z-]+)"', text)[:5]
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
        took = time.perf_counter() - start
        with lock:
            side.pages += 1
            side.errors += not ok
            side.latencies.append(took)
        stop.wait(max(0.0, think - took) if think else 0)
    conn.close()


def members_browsing(base: str, cookies: list[str], think: float, go: Any, stop: Any,
                     results: Any) -> None:
    """The 50 members, in a process of their own at a low priority: they stand for people on
    other machines, so their own CPU should take as little as possible from the daemon on
    this one (it is the load generator, not the web view's cost)."""
    os.nice(19)
    side, lock, local_stop = Side(), threading.Lock(), threading.Event()
    threads = [threading.Thread(target=browse, args=(base, c, think, local_stop, side, lock),
                                daemon=True) for c in cookies]
    for t in threads:
        t.start()
    go.wait()
    with lock:
        side.pages, side.errors, side.latencies = 0, 0, []
    cpu = time.process_time()
    stop.wait()
    cpu = time.process_time() - cpu
    local_stop.set()
    for t in threads:
        t.join(10)
    results.put((side.pages, side.errors, side.latencies, cpu))


def one(args: argparse.Namespace, sink: Sink, web: bool) -> Side:
    side = Side()
    root = Path(tempfile.mkdtemp(prefix="coc-webload-"))
    extra: dict[str, dict[str, object]] = {
        "server": {"max_message_bytes": 26_214_400, "workers": 0},
        "intake": {"reports_per_hour_before_digest": 0, "forward": "triage"},
    }
    if web:
        extra["web"] = {"listen": f"127.0.0.1:{free_port()}"}
    d = Daemon(root, f"sqlite:///{root}/var/coc-mail.db", relay=f"smtp://127.0.0.1:{sink.port}",
               members=[dict(m) for m in MEMBERS], extra=extra)
    d.start()
    assert d.proc is not None
    wait_for(lambda: len(roles(d.proc.pid)) > 1, 20, "worker processes")  # type: ignore[union-attr]
    time.sleep(1.0)
    browsers: multiprocessing.Process | None = None
    results: multiprocessing.Queue[tuple[int, int, list[float], float]] = multiprocessing.Queue()
    go, stop = multiprocessing.Event(), multiprocessing.Event()
    if web:
        base = f"http://{extra['web']['listen']}"
        port = int(base.rpartition(":")[2])
        wait_for(lambda: answers_http(port), 30, "the web view")  # its start-up is done
        browsers = multiprocessing.Process(target=members_browsing, args=(
            base, list(sessions(d).values()), args.think, go, stop, results))
        browsers.start()
        time.sleep(2.0)  # browsing under way before the flood
        go.set()
    procs = roles(d.proc.pid)
    before = {role: cpu_seconds(pid) for role, pid in procs.items()}
    start = time.perf_counter()
    n = args.messages
    side.accept = n / smtp_source(d.port, n, args.sessions, args.size)
    wait_copies(sink, n * TRIAGE, 900)
    elapsed = time.perf_counter() - start
    side.delivered = n / elapsed
    for role, pid in procs.items():
        group = "delivery" if role.startswith("delivery") else role
        side.cpu[group] = side.cpu.get(group, 0.0) + (cpu_seconds(pid) - before[role]) * 1000 / n
    stop.set()
    if browsers is not None:
        side.pages, side.errors, side.latencies, browsing = results.get(timeout=60)
        side.cpu["browsers"] = browsing * 1000 / n
        browsers.join(30)
        side.pages = int(side.pages / elapsed)  # pages per second during the flood
    d.stop()
    sink.clear()
    shutil.rmtree(root, ignore_errors=True)
    return side


def daemon_cpu(side: Side) -> float:
    return sum(v for k, v in side.cpu.items() if k != "browsers")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    flood_options(p, messages=500)
    p.add_argument("--think", type=float, default=1.0,
                   help="seconds between a member's page requests (0: as fast as answered)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if reason := postfix.available():
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    sink = Sink()
    pairs: list[tuple[Side, Side]] = []
    try:
        for i in range(args.repeat):
            if i % 2:
                with_web = one(args, sink, True)
                without = one(args, sink, False)
            else:
                without = one(args, sink, False)
                with_web = one(args, sink, True)
            pairs.append((without, with_web))
            print(f"run {i + 1}: accepted {without.accept:.1f} / {with_web.accept:.1f} msg/s, "
                  f"delivered {without.delivered:.1f} / {with_web.delivered:.1f} reports/s "
                  f"(without / with the web view), {with_web.pages} pages/s, "
                  f"{with_web.errors} errors", file=sys.stderr)
    finally:
        sink.stop()

    def med(f: Callable[[Side, Side], float]) -> float:
        return float(statistics.median(f(a, b) for a, b in pairs))

    lat = [x for _, b in pairs for x in b.latencies]
    label = "" if args.think else " (stress: no think time)"
    rows = [
        ("accepted msg/s without the web view", med(lambda a, b: a.accept)),
        ("accepted msg/s with 50 members browsing" + label, med(lambda a, b: b.accept)),
        ("with / without, accepted (same-run ratio)", med(lambda a, b: b.accept / a.accept)),
        ("delivered reports/s without the web view", med(lambda a, b: a.delivered)),
        ("delivered reports/s with 50 members browsing" + label, med(lambda a, b: b.delivered)),
        ("with / without, delivered (same-run ratio)",
         med(lambda a, b: b.delivered / a.delivered)),
        ("pages served per second during the flood", med(lambda a, b: float(b.pages))),
        ("page errors (all runs)", float(sum(b.errors for _, b in pairs))),
        ("page latency p50 (s)", pct(lat, 0.5)),
        ("page latency p99 (s)", pct(lat, 0.99)),
        ("web process CPU ms per report of the flood", med(lambda a, b: b.cpu.get("web", 0.0))),
        ("load generator (the members' browsers) CPU ms per report",
         med(lambda a, b: b.cpu.get("browsers", 0.0))),
        ("the daemon's CPU ms per report (all processes) without the web view",
         med(lambda a, b: daemon_cpu(a))),
        ("the daemon's CPU ms per report (all processes) with 50 members browsing",
         med(lambda a, b: daemon_cpu(b))),
    ]
    command = command_line("bench.web_load", sys.argv[1:])
    lines = [f"Produced by `{command}` on {os.cpu_count()} cores ({args.messages} reports of "
             f"{args.size} bytes over {args.sessions} sessions, {args.repeat} run(s); medians).",
             "", "| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in rows]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
