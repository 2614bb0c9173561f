"""Fault injection: reports sent while the daemon is SIGKILLed at random moments and restarted.

    python -m bench.reliability [--kills 10] [--reports 200] [--database URL] [--out FILE]

Every report that got 250 must reach every member; none that did not get 250 may produce
anything; duplicates (a copy cut off after the relay accepted it) are counted. Writes the
figures to docs/reliability.md (or --out) and exits non-zero if anything was lost.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import command_line
from tests.conftest import _drop_pg_database, _fresh_pg_database
from tests.helpers import Daemon, Relay, make_report, wait_for

MEMBERS = ("ada@example.net", "grace@example.net", "linus@example.net")
STALL = "## Stall test"


def header(data: bytes, name: bytes) -> str:
    line = next(x for x in data.split(b"\r\n") if x.lower().startswith(name.lower() + b":"))
    return line.split(b":", 1)[1].strip().decode()


def open_thread(d: Daemon, relay: Relay) -> str:
    """A case with Ada, Grace and Linus cleared; returns Ada's address for it."""
    d.send(make_report(subject="setup"), sender="setup@example.com")
    wait_for(lambda: len(relay.messages) >= 4, 30, "the setup case")
    addr = {r[0]: header(data, b"Reply-To") for _, r, data in relay.messages}
    d.send(make_report(sender="Ada <ada@example.net>", to=addr["ada@example.net"],
                       body="/involves Sam Doe"), sender="ada@example.net",
           to=[addr["ada@example.net"]])
    wait_for(lambda: len(relay.messages) >= 7, 30, "the conflict check")
    for who in ("grace", "linus"):
        d.send(make_report(sender=f"{who} <{who}@example.net>", to=addr[f"{who}@example.net"],
                           body="/noconflict"), sender=f"{who}@example.net",
               to=[addr[f"{who}@example.net"]])
    wait_for(lambda: len(relay.messages) >= 9, 30, "two members cleared")
    relay.messages.clear()
    return addr["ada@example.net"]


def run(kills: int, reports: int, database: str | None, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="coc-reliability-"))
    url = database or f"sqlite:///{root}/var/coc-mail.db"
    relay = Relay().start()
    d = Daemon(root, url, relay=relay.url)
    d.start()
    case_address = open_thread(d, relay)
    accepted: set[int] = set()
    posts: set[int] = set()
    refused = 0
    stop = threading.Event()

    def sender() -> None:
        """Reports, and every third message a thread post from Ada to Grace and Linus."""
        nonlocal refused
        for i in range(reports):
            if stop.is_set():
                return
            try:
                if i % 3 == 2:
                    d.send(make_report(subject=f"post {i}", sender="Ada <ada@example.net>",
                                       to=case_address), sender="ada@example.net",
                           to=[case_address])
                    posts.add(i)
                else:
                    d.send(make_report(subject=f"fault {i}", sender=f"F{i} <f{i}@example.com>"),
                           sender=f"f{i}@example.com")
                    accepted.add(i)
            except OSError:  # refused, reset or cut off: the sender keeps it
                refused += 1
                time.sleep(0.05)

    thread = threading.Thread(target=sender)
    thread.start()
    started = time.monotonic()
    for _ in range(kills):
        time.sleep(rng.uniform(0.2, 1.5))
        d.kill()
        time.sleep(rng.uniform(0.0, 0.3))
        d.start()
    thread.join()
    elapsed = time.monotonic() - started

    def copies() -> Counter[tuple[str, str]]:
        out: Counter[tuple[str, str]] = Counter()
        for _, rcpts, data in relay.messages:
            if rcpts[0] in MEMBERS:
                line = next(x for x in data.split(b"\r\n") if x.startswith(b"Subject:"))
                out[(rcpts[0], line.split(b"] ", 1)[-1].decode())] += 1
        return out

    def expected() -> list[tuple[str, str]]:
        return [(m, f"fault {i}") for i in accepted for m in MEMBERS] + [
            (m, f"post {i}") for i in posts for m in MEMBERS[1:]]

    def complete() -> bool:
        got = copies()
        return all(got[k] >= 1 for k in expected())

    with contextlib.suppress(AssertionError):  # a loss is reported below, not raised
        wait_for(complete, 120, "every accepted report delivered")
    time.sleep(2)
    got = copies()
    d.stop()
    relay.stop()
    wanted = expected()
    lost = sum(1 for k in wanted if got[k] == 0)
    known = {s for (_, s) in wanted}
    unaccepted_delivered = len({s for (_, s) in got if s.startswith(("fault ", "post "))}
                               - known)
    return {
        "database": url.split(":")[0].split("+")[0],
        "kills": kills,
        "messages sent (reports and posts)": reports,
        "reports accepted (250)": len(accepted),
        "thread posts accepted (250)": len(posts),
        "refused or cut off": refused,
        "member copies expected": len(wanted),
        "member copies delivered": sum(got[k] for k in got if k[1].startswith(("fault ",
                                                                               "post "))),
        "lost": lost,
        "duplicates": sum(n - 1 for n in got.values()),
        "delivered without a 250 (cut off after commit)": unaccepted_delivered,
        "seconds": round(elapsed, 1),
    }


def hostile_inputs(count: int, seed: int) -> dict[str, object]:
    """The hostile corpus of tests/smtp/test_hostile.py plus ``count`` random mixtures of it, sent
    over SMTP; then one real report, which must still be delivered."""
    from tests.smtp.test_hostile import CORPUS, Raw

    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="coc-hostile-"))
    d = Daemon(root, f"sqlite:///{root}/var/coc-mail.db")
    d.start()
    answers: Counter[int] = Counter()
    pieces = list(CORPUS.values())
    inputs = list(pieces)
    for _ in range(count):
        parts = [rng.choice(pieces)[: rng.randint(0, 400)] for _ in range(rng.randint(1, 6))]
        inputs.append(b"".join(parts).replace(b"\r\n.\r\n", b"\r\n..\r\n"))
    for data in inputs:
        client = Raw(d.port)
        try:
            answers[client.mail(data)[0]] += 1
        except OSError:
            answers[0] += 1
        finally:
            client.close()
    alive = d.proc is not None and d.proc.poll() is None
    before = len(d.delivered())
    d.send(make_report(subject="after the corpus", body="REAL-REPORT"))
    ok = True
    try:
        wait_for(lambda: any(b"REAL-REPORT" in c.raw for c in d.delivered()[before:]), 60,
                 "the real report")
    except AssertionError:
        ok = False
    d.stop()
    return {
        "inputs tried": len(inputs),
        "answers": ", ".join(f"{code}: {n}" for code, n in sorted(answers.items())),
        "daemon still up": alive,
        "next real report delivered": ok,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--reports", type=int, default=200)
    p.add_argument("--database", help="e.g. postgresql+psycopg://postgres@127.0.0.1/test "
                   "(default: a fresh SQLite file)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="docs/reliability.md")
    p.add_argument("--inputs", type=int, default=300, help="random hostile mixtures to send")
    args = p.parse_args()
    results = [run(args.kills, args.reports, None, args.seed)]
    if args.database:  # a fresh database on that server, dropped afterwards
        url, name = _fresh_pg_database(args.database)
        try:
            results.append(run(args.kills, args.reports, url, args.seed))
        finally:
            _drop_pg_database(args.database, name)
    keys = list(results[0])
    lines = [
        "# Reliability under faults",
        "",
        f"Produced by `{command_line('bench.reliability', sys.argv[1:])}` (rerun it to check).",
        "Reports and thread posts (one in three: Ada to Grace and Linus, in an Ongoing case)",
        "are sent one after another while the daemon is killed with SIGKILL at random",
        "moments (during DATA, after 250, mid-processing, mid-delivery) and restarted.",
        "`lost` counts member copies of reports that got 250 and never arrived: it must be 0.",
        "A duplicate is a copy the relay accepted just before the kill, whose deletion was not",
        "yet committed; it is sent again (with the same Message-ID) after the restart.",
        "A report cut off after the commit but before the client read 250 is still delivered",
        "(the client will send it again: the committee sees it twice, never zero times).",
        "",
        "| measure | " + " | ".join(str(r["database"]) for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    lines += [f"| {k} | " + " | ".join(str(r[k]) for r in results) + " |" for k in keys[1:]]
    hostile = hostile_inputs(args.inputs, args.seed)
    lines += [
        "",
        "## Hostile input",
        "",
        "The corpus of `tests/smtp/test_hostile.py` (broken MIME, NUL bytes, bare CR/LF, 8-bit",
        "without 8BITMIME, header injection, encoded-word bombs, 1 MB header lines, nested",
        "message/rfc822, huge References...) and random mixtures of it, over SMTP (the",
        "hypothesis fuzzers of the address, command and message parsers run in the test suite):",
        "",
        "| measure | value |",
        "|---|---|",
    ] + [f"| {k} | {v} |" for k, v in hostile.items()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.read_text() if out.exists() else ""
    stall = old[old.index(STALL):] if STALL in old else ""  # bench.stall's section stays
    out.write_text("\n".join(lines) + "\n" + ("\n" + stall if stall else ""))
    print("\n".join(lines))
    bad = any(r["lost"] for r in results) or not hostile["next real report delivered"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
