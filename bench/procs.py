"""What the benchmarks read about running processes: listening ports, the daemon's
processes by role, their memory and CPU time (from /proc), and how fast the machine is."""

from __future__ import annotations

import argparse
import http.client
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path


def listening(port: int) -> bool:
    """Does something accept connections on 127.0.0.1:``port``?"""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def answers_http(port: int) -> bool:
    """Does an HTTP server answer on 127.0.0.1:``port`` (not only its socket, bound early)?"""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/login")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def roles(pid: int) -> dict[str, int]:
    """The daemon's processes: ``intake`` (the main process), ``processing`` (worker 0),
    ``delivery N`` (the other workers), ``web`` (the web view's, when configured). A worker is
    told by its title (``coc-mail: worker 1 (delivery)``, forked) or its arguments
    (``... worker 1 --wake-fd ...``, started as a program, as older versions did); the forker
    is left out."""
    found = {"intake": pid}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            args = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if not (m := re.search(r"\bworker (\d+)\b", args)):
            continue  # the forker, or a process that is not a worker
        if "--web-fd" in args or "(web view)" in args:
            found["web"] = int(child)
            continue
        index = m.group(1)
        found["processing" if index == "0" else f"delivery {index}"] = int(child)
    return found


def memory_kib(pid: int, field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_seconds() -> float:
    """Seconds all cores together have spent idle (or waiting for I/O) since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def speed_gauges() -> tuple[float, float]:
    """How fast this machine is now, for reading figures across runs: milliseconds for one
    RSA-2048 DKIM signature (OpenSSL, through cryptography) and for a million-step Python
    loop (best of five each). Ratios within a run do not need them; a C MTA bound by
    fsync against a CPU-bound Python daemon does not slow down alike, so the ratios move
    with the machine's CPU speed, and these say by how much."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def sign() -> None:
        for _ in range(20):
            key.sign(b"x" * 300, padding.PKCS1v15(), hashes.SHA256())

    def loop() -> None:
        total = 0
        for i in range(1_000_000):
            total += i

    def best(f: Callable[[], None], per: int) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            f()
            times.append((time.perf_counter() - start) * 1000 / per)
        return min(times)

    return best(sign, 20), best(loop, 1)


def command_line(module: str, argv: list[str]) -> str:
    """``python -m module`` and its arguments as given, without ``--out FILE`` (where the
    report was written is no part of how it was produced)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            kept.append(arg)
    return " ".join(["python -m", module, *kept])


def flood_options(parser: argparse.ArgumentParser, messages: int, repeat: int | None = 3) -> None:
    """The options of smtp-source's flood every benchmark takes: how many reports, over how
    many sessions, of what size (and how many runs, where there are several)."""
    parser.add_argument("--messages", type=int, default=messages, help="reports in the flood")
    parser.add_argument("--sessions", type=int, default=20, help="smtp-source's sessions")
    parser.add_argument("--size", type=int, default=10240, help="bytes of each report")
    if repeat is not None:
        parser.add_argument("--repeat", type=int, default=repeat, help="runs (medians reported)")

