"""One conversation per person per case (SPEC 8.1), as a real mail indexer threads it:
every delivered message of a whole case, per person, in notmuch, makes exactly one thread."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Copy, Daemon, Mail, make_report, send_as, to

pytestmark = pytest.mark.skipif(shutil.which("notmuch") is None,
                                reason="notmuch is not installed (.ci/run installs it)")

REPORTER = "rita@example.com"
MEMBERS: list[dict[str, Any]] = [
    {"name": "Ada Example", "email": "ada@example.net", "roles": ["operator"]},
    {"name": "Gus Cleared", "email": "gus@example.net"},
    {"name": "Bea Conflicted", "email": "bea@example.net"},
    {"name": "Dee Cleared", "email": "dee@example.net"},
]


def threads(tmp_path: Path, who: str, copies: list[Copy]) -> list[str]:
    """The threads notmuch makes of ``copies`` in a Maildir of their own: each as the
    subjects of its messages."""
    root = tmp_path / "notmuch" / who.replace("@", "_")
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for n, copy in enumerate(copies):
        (root / "cur" / f"{n}.copy:2,S").write_bytes(copy.raw)
    config = root.parent / f"{root.name}.config"
    config.write_text(f"[database]\npath={root}\n[new]\ntags=new\n"
                      "[maildir]\nsynchronize_flags=false\n")
    env = {"NOTMUCH_CONFIG": str(config), "PATH": "/usr/bin:/bin", "HOME": str(root.parent)}
    subprocess.run(["notmuch", "new", "--quiet"], env=env, check=True)
    ids = subprocess.run(["notmuch", "search", "--output=threads", "*"], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return [subprocess.run(["notmuch", "search", "--output=summary", "--format=text", t],
                           env=env, check=True, capture_output=True, text=True).stdout.strip()
            for t in ids]


def test_a_whole_case_is_one_thread_per_person(tmp_path: Path, sqlite_url: str) -> None:
    d = Daemon(tmp_path, sqlite_url, members=[dict(m) for m in MEMBERS], extra={
        "intake": {"conflict_check_hours": 1, "conflict_check_reminder": False}})
    d.start()
    try:
        mail = Mail(d)
        d.send(make_report(sender=f"Rita <{REPORTER}>", subject="At the party",
                           body="Someone was rude."))
        intake = mail.next(5)  # four members and the acknowledgment
        code = str(to(intake, "ada")["Subject"]).split("]")[0].strip("[")
        addr = {c.to.split("@")[0]: c["Reply-To"].addresses[0].addr_spec
                for c in intake if c.to != REPORTER}
        reporter_address = to(intake, REPORTER)["Reply-To"].addresses[0].addr_spec
        send_as(d, "ada", addr["ada"], "/involves Jordan Roe")
        mail.next(4)  # three conflict checks and Ada's answer
        for who, answer in (("gus", "/noconflict"), ("dee", "no conflict"), ("bea", "/conflict")):
            send_as(d, who, addr[who], answer)
            mail.next(1)
        send_as(d, "ada", addr["ada"], "What do we know?", subject="Thoughts")
        mail.next(2)
        send_as(d, "gus", addr["gus"], "Not much yet.", subject="Re: Thoughts")
        mail.next(2)
        send_as(d, "ada", addr["ada"], "/followup followup\nWe are looking into it.")
        mail.next(2)  # the follow-up and Ada's confirmation
        d.send(make_report(sender=f"Rita <{REPORTER}>", to=reporter_address,
                           subject="Re: your report", body="Thank you."),
               sender=REPORTER, to=[reporter_address])
        mail.next(3)  # to Ada, Gus and Dee
        send_as(d, "dee", addr["dee"], "/doc")
        mail.next(1)
        send_as(d, "gus", addr["gus"], "/status safety=no")
        mail.next(1)
        mail.nothing_more()
        everything = d.delivered()
    finally:
        d.stop()
    people = {c.to for c in everything}
    assert people == {REPORTER, *(m["email"] for m in MEMBERS)}
    for person in sorted(people):
        mine = [c for c in everything if c.to == person]
        assert all(code in str(c["Subject"]) or person == REPORTER for c in mine)
        found = threads(tmp_path, person, mine)
        assert len(found) == 1, f"{person}: {len(mine)} messages in {len(found)} threads:\n" \
            + "\n".join(found)
        assert all(c["References"] or c is mine[0] for c in mine), person
