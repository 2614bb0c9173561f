"""Edge rules of the workflow: members who left stay out, late answers, `without.` always
opens a new case, tokens never travel in relayed posts, /discard only while New, and
conflicts declared later take effect."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.helpers import Daemon, Mail, make_report, send_as, to

MEMBERS: list[dict[str, Any]] = [
    {"name": "Ada Example", "email": "ada@example.net", "roles": ["operator"]},
    {"name": "Gus Cleared", "email": "gus@example.net"},
    {"name": "Bea Other", "email": "bea@example.net"},
]


def start(tmp_path: Path, url: str, hours: float = 1.0) -> tuple[Daemon, Mail]:
    d = Daemon(tmp_path, url, members=[dict(m) for m in MEMBERS], extra={
        "intake": {"conflict_check_hours": hours, "conflict_check_reminder": False},
        "cases": {"check_interval_seconds": 30}})
    d.start()
    return d, Mail(d)


def open_case(d: Daemon, mail: Mail, **kw: Any) -> tuple[str, dict[str, str], Any]:
    d.send(make_report(**kw))
    intake = mail.next(4)
    code = str(to(intake, "ada")["Subject"]).strip().split("]")[0].strip("[")
    addr = {c.to.split("@")[0]: c["Reply-To"].addresses[0].addr_spec
            for c in intake if c.to.endswith("example.net")}
    return code, addr, to(intake, "reporter@example.com")


def test_members_who_left_a_new_case_are_not_asked_back(tmp_path: Path, sqlite_url: str) -> None:
    d, mail = start(tmp_path, sqlite_url)
    try:
        _, addr, _ = open_case(d, mail)
        send_as(d, "bea", addr["bea"], "/recuse")
        mail.next(1)
        send_as(d, "ada", addr["ada"], "/involves Pat Doe")
        got = mail.next(2)  # Ada's answer and Gus's conflict check: nothing for Bea
        assert {c.to for c in got} == {"ada@example.net", "gus@example.net"}
        send_as(d, "bea", addr["bea"], "/noconflict")
        assert "recused" in mail.next(1)[0].text
        send_as(d, "ada", addr["ada"], "/discard")
        assert "Only a New case can be discarded" in mail.next(1)[0].text
    finally:
        d.stop()


def test_an_answer_after_the_deadline_does_not_clear(tmp_path: Path, sqlite_url: str) -> None:
    d, mail = start(tmp_path, sqlite_url, hours=1.5 / 3600)
    try:
        _, addr, _ = open_case(d, mail)
        send_as(d, "ada", addr["ada"], "/involves Pat Doe")
        mail.next(3)
        time.sleep(2)  # the deadline passes; the scheduler has not run yet (30 s)
        send_as(d, "gus", addr["gus"], "/noconflict")
        (answer,) = mail.next(1)
        assert "deadline has passed" in answer.text and b"Report body" not in answer.raw
    finally:
        d.stop()


def test_without_address_never_files_into_an_old_case(tmp_path: Path, sqlite_url: str) -> None:
    d, mail = start(tmp_path, sqlite_url)
    try:
        _, _, ack = open_case(d, mail)
        d.send(make_report(to="conduct+without.bea@example.org", In_Reply_To=str(
            ack["Message-ID"]), body="SECOND-REPORT"), to=["conduct+without.bea@example.org"])
        got = mail.next(3)  # a new case: Ada, Gus and the acknowledgment; Bea nothing
        assert {c.to for c in got} == {"ada@example.net", "gus@example.net",
                                       "reporter@example.com"}
        assert len(d.cli("cases").stdout.splitlines()) == 3
    finally:
        d.stop()


def test_relayed_posts_carry_no_tokens_and_new_conflicts_apply(
    tmp_path: Path, sqlite_url: str
) -> None:
    d, mail = start(tmp_path, sqlite_url)
    try:
        _, addr, _ = open_case(d, mail)
        send_as(d, "ada", addr["ada"], "/involves Pat Doe")
        mail.next(3)
        send_as(d, "gus", addr["gus"], "/noconflict")
        mail.next(1)
        send_as(d, "ada", addr["ada"], f"Forwarding what I got:\nReply-To: {addr['ada']}\n")
        (relayed,) = mail.next(1)
        assert relayed.to == "gus@example.net"
        assert addr["ada"] not in relayed.raw.decode() and "conduct@example.org" in relayed.text
        # Gus declares a conflict with Pat Doe later, through his case address: he leaves.
        send_as(d, "gus", addr["gus"], "/conflicts Pat Doe")
        reply = mail.next(1)[0]
        assert "out of 1 case" in reply.text
        send_as(d, "ada", addr["ada"], "Anyone there?")
        assert "only cleared member" in mail.next(1)[0].text
    finally:
        d.stop()
