"""More of the workflow: /statusreport, /discard, reminders, purge, the audit chain under
tampering, DKIM-aligned members, and a schema upgrade that keeps every case."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import dkim

from coc_mail.mail.dkim import generate_key, txt_record_value
from tests.helpers import Daemon, Mail, make_report, send_as, to, wait_for, wire

MEMBERS: list[dict[str, Any]] = [
    {"name": "Ada Example", "email": "ada@example.net", "roles": ["operator"]},
    {"name": "Gus Cleared", "email": "gus@example.net"},
]


def start(tmp_path: Path, url: str, **extra: dict[str, Any]) -> Daemon:
    d = Daemon(tmp_path, url, members=[dict(m) for m in MEMBERS],
               extra={"cases": {"check_interval_seconds": 0.3}, **extra})
    return d.start()


def open_case(d: Daemon, mail: Mail) -> tuple[str, dict[str, str]]:
    d.send(make_report(body="REPORT-XYZ\n"))
    intake = mail.next(3)
    code = str(to(intake, "ada")["Subject"]).split("]")[0].strip("[")
    addresses = {c.to.split("@")[0]: c["Reply-To"].addresses[0].addr_spec
                 for c in intake if c.to.endswith("example.net")}
    return code, addresses


def test_statusreport_discard_and_audit_tampering(tmp_path: Path, sqlite_url: str) -> None:
    d = start(tmp_path, sqlite_url)
    try:
        mail = Mail(d)
        code, addr = open_case(d, mail)
        # /statusreport at a case address and at the member address give the sheet.
        send_as(d, "gus", addr["gus"], "/statusreport")
        (sheet,) = mail.next(1)
        assert f"| New | {code} |" in sheet.text and "REPORT-XYZ" not in sheet.text
        send_as(d, "gus", addr["gus"], "/help")
        assert "/involves NAME" in mail.next(1)[0].text
        # /discard by one member only marks the case and tells the other; the second
        # member's /discard deletes it (not a report); its name is never drawn again.
        send_as(d, "ada", addr["ada"], "/discard")
        marked = mail.next(2)
        assert "marked for discarding" in to(marked, "ada").text
        assert "asked to discard" in to(marked, "gus").text
        assert code in d.cli("cases").stdout
        send_as(d, "ada", addr["ada"], "/discard")
        assert "second member" in mail.next(1)[0].text
        send_as(d, "gus", addr["gus"], "/discard")
        done = mail.next(2)
        assert "is discarded" in to(done, "gus").text and "was discarded" in to(done, "ada").text
        assert code not in d.cli("cases").stdout
        trail = d.cli("audit", code)
        assert "case discarded" in trail.stdout and "chain verified" in trail.stderr
        # A later post to the discarded case's address is refused at RCPT.
        with d.smtp() as s:
            s.ehlo()
            s.mail("gus@example.net")
            assert s.rcpt(addr["gus"])[0] == 550
        code2, addr2 = open_case(d, mail)
        send_as(d, "ada", addr2["ada"], "/involves Pat Doe")
        mail.next(2)
        d.stop()
        db = sqlite3.connect(d.var / "coc-mail.db")
        # Actions are sealed: the tamperer can only move one entry's sealed text onto another.
        db.execute("UPDATE audit_log SET action = (SELECT action FROM audit_log ORDER BY id "
                   "LIMIT 1) WHERE id = (SELECT max(id) FROM audit_log WHERE code_name = ?)",
                   (code2,))
        db.commit()
        db.close()
        result = d.cli("audit", code2, check=False)
        assert result.returncode == 4 and "BROKEN" in result.stdout + result.stderr
    finally:
        d.stop()


def test_reminders_and_purge(tmp_path: Path, sqlite_url: str) -> None:
    d = start(tmp_path, sqlite_url, cases={
        "check_interval_seconds": 0.3, "remind_unchecked_hours": 2 / 3600,
        "remind_followup_days": 4 / 86400, "stale_days": 0, "purge_after_days": 9 / 86400,
    })
    try:
        mail = Mail(d)
        code, addr = open_case(d, mail)
        unchecked = mail.next(2, timeout=20)  # both members: nobody named the person
        assert all("nobody has named the reported person" in c.text for c in unchecked)
        send_as(d, "ada", addr["ada"], "/involves Pat Doe")
        mail.next(2)  # Ada's answer, Gus's conflict check
        send_as(d, "gus", addr["gus"], "/noconflict")
        mail.next(1)
        nudge = mail.next(2, timeout=20)
        assert all("no follow-up yet" in c.text for c in nudge)
        send_as(d, "ada", addr["ada"], '/resolve "No action needed"')
        # The answer, and the purge warning to both (due at once: 9 s is under a week),
        # in either order.
        after = mail.next(3, timeout=20)
        assert sum("is resolved" in c.text for c in after) == 1
        assert sum("will be purged" in c.text for c in after) == 2
        wait_for(lambda: "document purged" in d.cli("audit", code).stdout, 30, "the purge")
        shown = d.cli("case", "show", code, "--as", "gus@example.net").stdout
        assert "REPORT-XYZ" not in shown and "purged" in shown
        assert f"Resolved,{code}" in d.cli("status", "--format", "csv").stdout
    finally:
        d.stop()


def test_aligned_dkim_required_for_members(tmp_path: Path, sqlite_url: str) -> None:
    key = generate_key(tmp_path / "member.key")
    d = start(tmp_path, sqlite_url, dkim={
        "require_aligned_members": True,
        "dns_overrides": {"m1._domainkey.example.net": txt_record_value(key)},
    })
    try:
        mail = Mail(d)
        code, addr = open_case(d, mail)
        send_as(d, "ada", addr["ada"], "/doc")  # unsigned: ignored, Ada told why
        (notice,) = mail.next(1)
        assert "dkim=none" in notice.text and "REPORT-XYZ" not in notice.text
        msg = wire(make_report(sender="Ada <ada@example.net>", to=addr["ada"], body="/doc\n"))
        signed = dkim.sign(msg, b"m1", b"example.net", key,
                           include_headers=[b"from", b"to", b"subject"]) + msg
        d.send(signed, sender="ada@example.net", to=[addr["ada"]])
        (doc,) = mail.next(1)
        assert "REPORT-XYZ" in doc.text and code in str(doc["Subject"])
    finally:
        d.stop()


