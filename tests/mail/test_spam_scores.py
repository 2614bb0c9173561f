"""How mail filters score what we send: SpamAssassin's local rules (`spamassassin -L -t`,
no network tests) give every kind of message of a whole case less than 1 point."""

from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Copy, Daemon, Mail, make_report, send_as, to

pytestmark = pytest.mark.skipif(shutil.which("spamassassin") is None,
                                reason="SpamAssassin is not installed (.ci/run installs it)")

REPORTER = "rita@example.com"
MEMBERS: list[dict[str, Any]] = [
    {"name": "Ada Example", "email": "ada@example.net", "roles": ["operator"]},
    {"name": "Gus Cleared", "email": "gus@example.net"},
    {"name": "Bea Conflicted", "email": "bea@example.net"},
]


def score(copy: Copy) -> tuple[float, str]:
    """SpamAssassin's score of a delivered copy with local rules only, and the rules hit."""
    out = subprocess.run(["spamassassin", "-L", "-t"], input=copy.raw, capture_output=True,
                         timeout=120, check=True).stdout.decode("utf-8", "replace")
    found = re.search(r"X-Spam-Status: \w+, score=(-?[\d.]+)[^\n]*(?:\n\t[^\n]*)*", out)
    assert found, out[:500]
    return float(found.group(1)), " ".join(found.group(0).split())


def test_every_kind_of_message_scores_below_one(tmp_path: Path, sqlite_url: str) -> None:
    d = Daemon(tmp_path, sqlite_url, members=[dict(m) for m in MEMBERS], extra={
        "intake": {"conflict_check_hours": 1, "conflict_check_reminder": False}})
    d.start()
    try:
        mail = Mail(d)
        d.send(make_report(sender=f"Rita <{REPORTER}>", subject="At the party",
                           body="Someone was rude to me at the party on Friday evening.\n"))
        intake = mail.next(4)
        addr = {c.to.split("@")[0]: c["Reply-To"].addresses[0].addr_spec
                for c in intake if c.to != REPORTER}
        reporter_address = to(intake, REPORTER)["Reply-To"].addresses[0].addr_spec
        send_as(d, "ada", addr["ada"], "/involves Jordan Roe")
        mail.next(3)
        send_as(d, "gus", addr["gus"], "/noconflict")
        mail.next(1)
        send_as(d, "bea", addr["bea"], "/conflict")
        mail.next(1)
        send_as(d, "ada", addr["ada"], "Shall we talk to them this week?", subject="Next")
        mail.next(1)
        send_as(d, "ada", addr["ada"], "/followup followup\nWe are looking into it.")
        mail.next(2)
        d.send(make_report(sender=f"Rita <{REPORTER}>", to=reporter_address,
                           subject="Re: your report", body="Thank you for writing back.\n"),
               sender=REPORTER, to=[reporter_address])
        mail.next(2)
        send_as(d, "gus", addr["gus"], "/note summary\nThey apologised.")
        mail.next(1)
        for status in ('/status safety=no repeat=maybe actions="a talk"', "/status repeat=no"):
            send_as(d, "gus", addr["gus"], status)
            mail.next(1)
            send_as(d, "gus", addr["gus"], "/doc")  # "Safety risk? No": no "No Risk"
            mail.next(1)
        send_as(d, "ada", addr["ada"], "/statusreport")
        mail.next(1)
        send_as(d, "ada", addr["ada"], "/help")
        mail.next(1)
        send_as(d, "ada", addr["ada"], '/resolve "A talk with them"')
        mail.next(1)
        everything = d.delivered()
    finally:
        d.stop()
    with ThreadPoolExecutor(2) as pool:
        scores = list(pool.map(score, everything))
    high = [f"{c.to} {c['Subject']}: {s} ({rules})"
            for c, (s, rules) in zip(everything, scores, strict=True) if s >= 1]
    assert not high, "\n".join(high)
