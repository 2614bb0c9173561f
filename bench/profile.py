"""Where each process's CPU goes under the flood: py-spy samples every process of one daemon
(shipped defaults, as ``bench.throughput`` runs it) while smtp-source sends the load.

    pip install py-spy
    python -m bench.profile [--messages 1500] [--sessions 20] [--size 10240] [--top 25]
                            [--out docs/profile.md] [--raw DIR]

Printed per process: its CPU ms per report (from /proc), then the functions where its
samples were (self time, and inclusive time of coc-mail's own functions), as shares of that
process's samples. ``--raw DIR`` keeps py-spy's collapsed stacks (one file per process) for
flame graphs. py-spy samples from outside (no code of ours runs to profile); sampling at
100 Hz costs the machine a few per cent, the same for every process.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import answers_http, cpu_seconds, flood_options, roles
from bench.throughput import DEFAULTS, MEMBERS, Sink, smtp_source, wait_copies
from tests import postfix
from tests.helpers import Daemon, free_port, wait_for

IDLE = ("Condition.wait", "select (selectors", "_run_once", "Queue.get", "poll (selectors",
        "epoll", "Event.wait", "sleep")


def summarise(raw: Path, top: int) -> tuple[int, list[tuple[float, str]], list[tuple[float, str]]]:
    """(busy samples, top self-time frames, top inclusive coc-mail frames) of one process;
    samples whose innermost frame is waiting (a lock, the event loop's poll) are left out."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    busy = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if any(word in frames[-1] for word in IDLE):
            continue
        n = int(count)
        busy += n
        own[frames[-1]] += n
        for frame in set(frames):
            if "coc_mail/" in frame:
                inclusive[frame] += n
    share = 100 / max(busy, 1)
    return (busy, [(v * share, k) for k, v in own.most_common(top)],
            [(v * share, k) for k, v in inclusive.most_common(top)])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    flood_options(p, messages=1500, repeat=None)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", default="")
    p.add_argument("--raw", default="", help="keep py-spy's collapsed stacks in this folder")
    p.add_argument("--gil", action="store_true",
                   help="sample only the thread holding the GIL (Python's own work; without "
                        "it a thread waiting for a core or the GIL is sampled too)")
    args = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if reason := postfix.available():
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    if not Path(spy).exists():
        print("cannot run: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    out_dir = Path(args.raw or tempfile.mkdtemp(prefix="coc-profile-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    sink = Sink()
    root = Path(tempfile.mkdtemp(prefix="coc-profile-daemon-"))
    extra = {k: dict(v) for k, v in DEFAULTS.items()}
    web_port = free_port()
    extra["web"] = {"listen": f"127.0.0.1:{web_port}"}
    d = Daemon(root, f"sqlite:///{root}/var/coc-mail.db", relay=f"smtp://127.0.0.1:{sink.port}",
               members=[{"name": f"Member {i}", "email": m, "handle": f"m{i}"}
                        for i, m in enumerate(MEMBERS, 1)], extra=extra)
    d.start()
    assert d.proc is not None
    try:
        wait_for(lambda: answers_http(web_port), 30, "the web view")
        time.sleep(1.5)
        procs = roles(d.proc.pid)
        spies = {role: subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--rate", "100", "--format", "raw",
             "--nonblocking", *(["--gil"] if args.gil else []),
             "--output", str(out_dir / f"{role.replace(' ', '-')}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for role, pid in procs.items()}
        time.sleep(1.0)
        before = {role: cpu_seconds(pid) for role, pid in procs.items()}
        smtp_source(d.port, args.messages, args.sessions, args.size)
        wait_copies(sink, args.messages * len(MEMBERS), 900)
        cpu = {role: (cpu_seconds(pid) - before[role]) * 1000 / args.messages
               for role, pid in procs.items()}
        for s in spies.values():
            s.send_signal(2)  # SIGINT: py-spy writes what it has and exits
        for s in spies.values():
            s.wait(60)
    finally:
        d.stop()
        sink.stop()
        shutil.rmtree(root, ignore_errors=True)
    lines = [f"Produced by `python -m bench.profile {' '.join(sys.argv[1:])}` on "
             f"{os.cpu_count()} cores: {args.messages} reports of {args.size} bytes over "
             f"{args.sessions} sessions, 5 members, shipped defaults (digest off). Shares are "
             "of each process's busy samples (waiting left out).", ""]
    for role in procs:
        raw = out_dir / f"{role.replace(' ', '-')}.txt"
        if not raw.exists():
            lines += [f"## {role}: no samples", ""]
            continue
        busy, own, inclusive = summarise(raw, args.top)
        lines += [f"## {role}: {cpu[role]:.2f} ms CPU per report ({busy} busy samples)", "",
                  "self time:", "```"] + [f"{v:5.1f}%  {k}" for v, k in own] + [
                  "```", "", "inclusive (coc-mail's functions):", "```"] + [
                  f"{v:5.1f}%  {k}" for v, k in inclusive] + ["```", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if not args.raw:
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
