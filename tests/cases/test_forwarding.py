"""A report in, the right copies out: recipients, headers, DKIM, the original intact."""

from __future__ import annotations

import re
import smtplib
from email import message_from_bytes
from email.header import decode_header, make_header
from email.policy import compat32
from pathlib import Path

import dkim
import pytest
import sqlalchemy as sa

from tests.helpers import (
    ALIAS,
    MEMBERS,
    Copy,
    Daemon,
    Relay,
    by_recipient,
    make_report,
    wait_for,
    wire,
)

MEMBER_EMAILS = {"ada@example.net", "grace@example.net", "linus@example.net"}


def dns_from_cli(d: Daemon) -> dict[bytes, bytes]:
    """The TXT record exactly as `coc-mail dkim txt` prints it, as a resolver would serve it."""
    out = d.cli("dkim", "txt").stdout
    name = out.split()[0].rstrip(".").encode()
    value = "".join(re.findall(r'"([^"]*)"', out)).encode()
    return {name: value}


def test_report_reaches_every_member_and_reporter(daemon: Daemon) -> None:
    report = make_report(subject="Harassment at the party", body="It happened at 9pm.\n")
    daemon.send(report)
    copies = daemon.wait_delivered(4)
    got = by_recipient(copies)
    assert set(got) == MEMBER_EMAILS | {"reporter@example.com"}
    assert all(len(v) == 1 for v in got.values())

    cases = daemon.cli("cases").stdout.splitlines()[1:]
    assert len(cases) == 1
    code_name = " ".join(cases[0].split()[:2])
    slug = code_name.replace(" ", "-")

    reply_tos = set()
    for email in MEMBER_EMAILS:
        copy = got[email][0]
        assert copy["From"].addresses[0].addr_spec == ALIAS
        assert copy["From"].addresses[0].display_name == "Test Conference CoC Committee"
        assert copy["Subject"] == f"[{code_name}] Harassment at the party"
        reply_to = str(copy["Reply-To"])
        assert re.fullmatch(rf"conduct\+{slug}\.[a-z2-7]{{16}}@example\.org", reply_to)
        reply_tos.add(reply_to)
        assert str(copy["Return-Path"]).startswith("<conduct+b.")
        assert "dkim=none" in str(copy["Authentication-Results"])
        assert copy["X-Loop"] == ALIAS
        assert copy.original().replace(b"\n", b"\r\n") == wire(report)
    assert len(reply_tos) == 3, "each member has their own case address"

    ack = got["reporter@example.com"][0]
    assert ack["Reply-To"].addresses[0].addr_spec.startswith("conduct+r.")
    assert code_name in str(ack["Subject"])
    assert ack["In-Reply-To"] == report["Message-ID"]
    assert ack["Auto-Submitted"] == "auto-replied"  # RFC 3834: an automatic answer
    assert all(got[e][0]["Auto-Submitted"] == "auto-generated" for e in MEMBER_EMAILS)


def test_every_copy_carries_a_dkim_signature_that_verifies(sqlite_daemon: Daemon) -> None:
    d = sqlite_daemon
    d.send(make_report())
    copies = d.wait_delivered(4)
    records = dns_from_cli(d)

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.rstrip(b"."))

    for copy in copies:
        assert dkim.verify(copy.wire(), dnsfunc=dnsfunc), f"bad signature for {copy.to}"
        tampered = copy.wire().replace(b"It", b"it", 1) + b"tampered\r\n"
        assert not dkim.verify(tampered, dnsfunc=dnsfunc)


def test_copies_share_one_stored_body_that_goes_with_the_last_copy(sqlite_daemon: Daemon) -> None:
    """The three member copies of a report are queued as three header blocks and one body;
    each is signed when sent, and the body is deleted with the last of them."""
    d = sqlite_daemon
    relay = Relay()  # not started yet: the copies wait in the queue
    try:
        d.stop()
        d.relay = relay.url
        d.write()
        d.start()
        d.send(make_report(body="Shared body text.\n"))
        db = sa.create_engine(d.database)

        def queued() -> tuple[int, int, int] | None:
            with db.connect() as c:
                rows = c.execute(sa.text(
                    "SELECT count(*), count(DISTINCT body_id), count(body_id) FROM outbound"
                )).one()
            return (rows[0], rows[1], rows[2]) if rows[0] == 4 else None

        assert wait_for(queued, 20, "4 copies queued") == (4, 1, 3)  # the ack has its own body
        with db.connect() as c:
            sealed = c.execute(sa.text("SELECT content FROM bodies")).scalars().all()
        assert len(sealed) == 1 and b"Shared body" not in sealed[0]
        relay.start()
        d.cli("queue", "--flush")
        wait_for(lambda: len(relay.messages) >= 4, 20, "4 copies at the relay")

        def emptied() -> bool:
            with db.connect() as c:
                return c.execute(sa.text(
                    "SELECT (SELECT count(*) FROM outbound) + (SELECT count(*) FROM bodies)"
                )).scalar() == 0
        wait_for(emptied, 20, "queue and bodies emptied")
        assert all(m.startswith(b"DKIM-Signature:") for _, _, m in relay.messages)
    finally:
        relay.stop()


def test_unknown_recipients_refused_at_rcpt(sqlite_daemon: Daemon) -> None:
    with sqlite_daemon.smtp() as s:
        s.ehlo()
        s.mail("someone@example.com")
        for rcpt, code in [
            ("nobody@example.org", 550),
            ("conduct+bogus@example.org", 550),
            ("conduct+without.nosuchmember@example.org", 550),
            ("conduct+happy-otter.aaaaaaaaaaaaaaaa@example.org", 550),
            ("conduct+r.aaaaaaaaaaaaaaaa@example.org", 550),
            ("conduct+m.aaaaaaaaaaaaaaaa@example.org", 550),
            ("conduct-bounces+0123456789abcdef.aaaaaaaaaaaaaaaa@example.org", 550),
            ("conduct+b.0123456789abcdef.aaaaaaaaaaaaaaaa@example.org", 550),
            ("conduct@elsewhere.org", 554),
            ("conduct@example.org", 250),
            ("conduct+without.ada@example.org", 250),
            ("postmaster@example.org", 250),
        ]:
            assert s.rcpt(rcpt)[0] == code, rcpt
    assert "@example.org" not in sqlite_daemon.log_text().replace("conduct@example.org", "")


def test_oversized_mail_refused_with_552(sqlite_daemon: Daemon) -> None:
    big = make_report(body="x" * 70 + "\n" * 1)
    big.set_content(("y" * 76 + "\n") * 3000)  # ~230 kB > 200 kB limit
    with pytest.raises(smtplib.SMTPDataError) as err, sqlite_daemon.smtp() as s:
        s.ehlo()
        s.esmtp_features.pop("size", None)  # do not let SIZE stop it early
        s.send_message(big, from_addr="r@example.com", to_addrs=[ALIAS])
    assert err.value.smtp_code == 552
    assert sqlite_daemon.cli("cases").stdout.count("\n") == 1  # header only: no case
    with sqlite_daemon.smtp() as s:  # and SIZE= in MAIL FROM is refused up front
        s.ehlo()
        code, _ = s.mail("r@example.com", ["SIZE=900000"])
        assert code == 552


def test_without_address_excludes_that_member(sqlite_daemon: Daemon) -> None:
    d = sqlite_daemon
    d.send(make_report(to="conduct+without.grace@example.org"),
           to=["conduct+without.grace@example.org"])
    got = by_recipient(d.wait_delivered(3))
    assert "grace@example.net" not in got
    assert {"ada@example.net", "linus@example.net", "reporter@example.com"} == set(got)


def test_known_conflicts_and_reporting_member_are_excluded(sqlite_daemon: Daemon) -> None:
    d = sqlite_daemon
    # Ada lists pat@example.com as a conflict: Pat's report never reaches Ada.
    d.send(make_report(sender="Pat <pat@example.com>"), sender="pat@example.com")
    got = by_recipient(d.wait_delivered(3))
    assert set(got) == {"grace@example.net", "linus@example.net", "pat@example.com"}
    # A member who reports does not get their own report as a committee copy.
    d.send(make_report(sender="Linus Placeholder <linus@example.net>"),
           sender="linus@example.net")
    copies = d.wait_delivered(6)
    per = by_recipient(copies)
    linus = [c for c in per["linus@example.net"] if "conduct+r." in str(c["Reply-To"])]
    assert len(linus) == 1, "Linus gets the acknowledgment, not a case copy"
    assert len(per["ada@example.net"]) == 1 and len(per["grace@example.net"]) == 2


def test_triage_forwarding(tmp_path, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    d = Daemon(tmp_path, sqlite_url, extra={"intake": {"forward": "triage"}})
    d.start()
    try:
        d.send(make_report())
        got = by_recipient(d.wait_delivered(3))
        assert set(got) == {"ada@example.net", "grace@example.net", "reporter@example.com"}
    finally:
        d.stop()


def test_eight_bit_and_smtputf8_mail_kept_intact(sqlite_daemon: Daemon) -> None:
    d = sqlite_daemon
    raw = (
        "From: Zoë Reporter <zoë@exämple.com>\r\nTo: conduct@example.org\r\n"
        "Subject: Ünïcödé report\r\nMessage-ID: <u1@example.com>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "Grüße, 事件の報告です。\r\n"
    ).encode()
    with d.smtp() as s:
        s.ehlo()
        assert s.has_extn("smtputf8") and s.has_extn("8bitmime")
        s.sendmail("zoë@exämple.com", [ALIAS], raw, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    copies = d.wait_delivered(4)
    members = [c for c in copies if c.to.endswith("@example.net")]
    assert len(members) == 3
    for c in members:
        assert c.original().replace(b"\n", b"\r\n") == raw
        assert "Ünïcödé report" in str(c["Subject"])


def test_html_and_attachments_survive_in_the_original(sqlite_daemon: Daemon) -> None:
    d = sqlite_daemon
    report = make_report(body="plain version\n")
    report.add_alternative("<p>html <b>version</b></p>", subtype="html")
    report.add_attachment(bytes(range(256)) * 40, maintype="application",
                          subtype="octet-stream", filename="evidence.bin")
    raw = wire(report)
    d.send(raw)
    copies = d.wait_delivered(4)
    for c in (c for c in copies if c.to.endswith("@example.net")):
        assert c.original().replace(b"\n", b"\r\n") == raw


def test_loop_is_refused(sqlite_daemon: Daemon) -> None:
    looped = make_report(X_Loop=ALIAS)
    with pytest.raises(smtplib.SMTPDataError) as err:
        sqlite_daemon.send(looped)
    assert err.value.smtp_code == 554
    hops = make_report()
    for i in range(60):
        hops["Received"] = f"from hop{i} by hop{i + 1}; Tue, 24 Nov 2026 10:00:00 +0000"
    with pytest.raises(smtplib.SMTPDataError) as err:
        sqlite_daemon.send(hops)
    assert err.value.smtp_code == 554


def test_huge_header_section_refused(tmp_path, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    d = Daemon(tmp_path, sqlite_url, extra={"server": {"max_message_bytes": 2_000_000}})
    d.start()
    try:
        _huge_header_section_refused(d)
    finally:
        d.stop()


def _huge_header_section_refused(sqlite_daemon: Daemon) -> None:
    raw = b"From: r@example.com\r\nSubject: x\r\n" + b"X-Junk: " + b"a" * 100 + b"\r\n"
    raw = raw + b"".join(b"X-Junk-%d: %s\r\n" % (i, b"b" * 900) for i in range(300))
    raw += b"\r\nbody\r\n"
    with sqlite_daemon.smtp() as s:
        s.ehlo()
        s.mail("r@example.com")
        s.rcpt(ALIAS)
        code, text = s.data(raw)
    assert code == 552 and b"header section too big" in text
    sqlite_daemon.send(make_report())  # and the next report still goes through
    sqlite_daemon.wait_delivered(4)


def test_repeated_recipients_give_one_copy_each(sqlite_daemon: Daemon) -> None:
    d = sqlite_daemon
    d.send(make_report(), to=[ALIAS, "CONDUCT@example.org", ALIAS])
    d.wait_delivered(4)
    with d.smtp() as s:  # <Postmaster> without a domain is accepted (RFC 5321 4.5.1)
        s.ehlo()
        s.mail("someone@example.com")
        assert s.rcpt("<Postmaster>")[0] == 250


def test_size_limit_edge(tmp_path, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    limit = 300_000
    d = Daemon(tmp_path, sqlite_url, extra={"server": {"max_message_bytes": limit}})
    d.start()
    try:
        head = b"From: r@example.com\r\nTo: conduct@example.org\r\nSubject: edge\r\n\r\n"
        line = b"z" * 98 + b"\r\n"

        def message(size: int) -> bytes:
            body = line * ((size - len(head)) // len(line))
            return head + body + b"y" * (size - len(head) - len(body) - 2) + b"\r\n"

        at_limit = message(limit - 10)  # the DATA count includes the final line ending
        d.send(at_limit, sender="r@example.com")
        copies = d.wait_delivered(4, timeout=30)
        member = next(c for c in copies if c.to == "ada@example.net")
        assert member.original().replace(b"\n", b"\r\n") == at_limit
        with pytest.raises((smtplib.SMTPDataError, smtplib.SMTPSenderRefused)) as err:
            d.send(message(limit + 200), sender="r@example.com")  # SIZE= or DATA: 552
        assert err.value.smtp_code == 552
    finally:
        d.stop()


@pytest.mark.parametrize("shape", ["plain", "base64", "quoted-printable", "html-only"])
def test_every_kind_of_copy_shows_the_message_inline(sqlite_daemon: Daemon,
                                                     shape: str) -> None:
    """SPEC 8.1: the text is where the member opens the mail (what `get_body()` finds, as
    clients do), the original still attached byte for byte: the report copy, the
    reporter's correspondence, and mail to postmaster@."""
    from email.message import EmailMessage

    d = sqlite_daemon
    text = "INLINE-MARKER it happened at the party, near the stage."

    def message(subject: str, to: str = ALIAS) -> EmailMessage:
        if shape == "html-only":
            m = make_report(subject=subject, to=to, body="x")
            m.set_content(f"<html><body><p>{text.replace('the party', 'the <b>party</b>')}"
                          "</p></body></html>", subtype="html")
            return m
        return make_report(subject=subject, to=to, body=text + "\n",
                           cte=None if shape == "plain" else shape)

    def check(copies: list[Copy], sent: EmailMessage) -> None:
        for copy in copies:
            part = copy.msg.get_body(("plain", "html"))
            assert part is not None and part.get_content_type() == "text/plain"
            shown = " ".join(part.get_content().split())
            assert "INLINE-MARKER it happened at the party, near the stage." in shown, shown
            assert copy.original().replace(b"\n", b"\r\n") == wire(sent)

    report = message("At the party")
    d.send(report)
    copies = d.wait_delivered(4)
    check([c for c in copies if c.to in MEMBER_EMAILS], report)
    reporter_address = next(c for c in copies if c.to == "reporter@example.com")[
        "Reply-To"].addresses[0].addr_spec
    later = message("Re: At the party", to=reporter_address)
    d.send(later, to=[reporter_address])
    copies = d.wait_delivered(7)[4:]
    check(copies, later)
    postmaster = message("For the postmaster", to="postmaster@example.org")
    d.send(postmaster, to=["postmaster@example.org"])
    copies = d.wait_delivered(8)[7:]
    check(copies, postmaster)


def test_headers_as_rfcs_and_filters_want_them(tmp_path: Path, sqlite_url: str) -> None:
    """Command answers say `Auto-Submitted: auto-replied` (RFC 3834), and no encoded word
    is longer than 75 characters (RFC 2047), nor any header line longer than 78, in the
    subject or a display name (a long Cyrillic member name in To:)."""
    long_name = "Александра Владимировна Константинопольская-Преображенская"
    members = [dict(m) for m in MEMBERS]
    members[2].update(name=long_name, handle="linus")
    d = Daemon(tmp_path, sqlite_url, members=members).start()
    try:
        subject = "Überfall auf der Party – ein sehr langer Betreff mit Umlauten äöü " * 3
        d.send(make_report(subject=subject.strip(), body="It happened.\n"))
        copies = d.wait_delivered(4)
        ada = next(c for c in copies if c.to == "ada@example.net")
        for copy in (c for c in copies if c.to in MEMBER_EMAILS):  # the reporter's: a template's
            raw = copy.raw.decode("ascii")
            words = re.findall(r"=\?[^?]+\?[bBqQ]\?[^?]*\?=", raw.split("\n\n", 1)[0])
            assert words and max(len(w) for w in words) <= 75, words
            assert max(len(line) for line in raw.split("\n\n", 1)[0].split("\n")
                       if not line.startswith(("DKIM-Signature", "\tb=", " b="))) <= 78
            assert str(copy["Subject"]).endswith(subject.strip()[-30:])
        linus = next(c for c in copies if c.to == "linus@example.net")
        # RFC 2047 decoding (the whitespace between encoded words is not part of the name;
        # the stdlib's strict address parser keeps it, a bug of its own)
        to = message_from_bytes(linus.raw, policy=compat32)["To"]
        assert str(make_header(decode_header(to))) == f"{long_name} <linus@example.net>"
        case_address = ada["Reply-To"].addresses[0].addr_spec
        d.send(make_report(sender="Ada <ada@example.net>", to=case_address, body="/help\n"),
               sender="ada@example.net", to=[case_address])
        answer = d.wait_delivered(5)[4]
        assert answer.to == "ada@example.net" and answer["Auto-Submitted"] == "auto-replied"
        assert answer["In-Reply-To"] and answer["References"]
    finally:
        d.stop()


def test_members_copies_leave_out_where_the_report_was_sent_from(tmp_path: Path,
                                                               sqlite_url: str) -> None:
    """intake.strip_client_headers (default true): the reporter's Received and
    X-Originating-IP lines are not in the members' attached copy, the intro says they were
    there, and the rest of the original is byte for byte; false keeps them."""
    report = make_report(subject="At the party", body="It happened.\n")
    report["X-Originating-IP"] = "[192.0.2.7]"
    sent = (b"Received: from [192.0.2.7] (cpe-192-0-2-7.isp.example [192.0.2.7])\r\n"
            b"\tby mail.example.com with ESMTPSA id 42\r\n" + wire(report))
    for strip in (True, False):
        (tmp_path / str(strip)).mkdir()
        d = Daemon(tmp_path / str(strip), sqlite_url.replace(".db", f"-{strip}.db"),
                   extra={"intake": {"strip_client_headers": strip}})
        d.start()
        try:
            d.send(sent)
            member = next(c for c in d.wait_delivered(4) if c.to in MEMBER_EMAILS)
        finally:
            d.stop()
        original = member.original().replace(b"\n", b"\r\n")
        if strip:
            assert b"192.0.2.7" not in original and b"Received:" not in original
            assert original == re.sub(rb"(?m)^(Received|X-Originating-IP):.*\r\n(?:[ \t].*\r\n)*",
                                      b"", sent)
            assert "carried Received, X-Originating-IP" in member.text
        else:
            assert original == sent
            assert "carries Received, X-Originating-IP" in member.text


def test_a_report_over_a_megabyte_is_stored_and_forwarded_whole(tmp_path: Path) -> None:
    """A report past the size from which SQLite takes values in pieces (a zero blob, then
    filled): its case holds it byte for byte, and every member's copy attaches it whole."""
    from sqlmodel import Session, select

    from coc_mail import store
    from coc_mail.store.crypto import BIG, load_keyring

    d = Daemon(tmp_path, f"sqlite:///{tmp_path}/var/coc-mail.db",
               extra={"server": {"max_message_bytes": 4 << 20}})
    d.start()
    try:
        lines = "".join(f"line {i} of what was said, kept as evidence\n" for i in range(40_000))
        report = make_report(body=lines)
        raw = report.as_bytes()
        assert len(raw) > BIG
        d.send(report)
        copies = by_recipient(d.wait_delivered(4, timeout=60))
        keys, _ = load_keyring(str(d.var / "secret.key"))
        engine = store.make_engine(f"sqlite:///{tmp_path}/var/coc-mail.db")
        with Session(engine) as session:
            (case,) = session.exec(select(store.Case)).all()
            assert case.report is not None
            stored = keys.open(case.report, "cases.report")
        engine.dispose()
    finally:
        d.stop()
    assert stored.replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")
    for email in MEMBER_EMAILS:
        (copy,) = copies[email]
        assert copy.original() == raw.replace(b"\r\n", b"\n")


def test_reports_processed_together_each_get_a_case_of_their_own(daemon: Daemon) -> None:
    """Forty reports sent at once are processed in batches (up to 32 a transaction, their
    code names, standings and first audit entries written once per batch): forty cases,
    forty code names, every chain verified, every member's copy and acknowledgment out."""
    with daemon.smtp() as s:  # forty reporters (one's reports past a few a day are a flood)
        for i in range(40):
            s.send_message(make_report(sender=f"Reporter {i} <r{i}@example.com>",
                                       subject=f"Report {i}", body=f"Report number {i}.\n"),
                           from_addr=f"r{i}@example.com", to_addrs=[ALIAS])
    copies = daemon.wait_delivered(40 * 4, timeout=120)
    assert len(copies) == 40 * 4
    from sqlmodel import Session, select

    from coc_mail import store
    from coc_mail.cases import audit
    from coc_mail.store.crypto import load_keyring

    keys, _ = load_keyring(str(daemon.var / "secret.key"))
    engine = store.make_engine(daemon.database)
    with Session(engine) as session:
        names = [c.code_name for c in session.exec(select(store.Case)).all()]
        assert len(names) == len(set(names)) == 40
        for name in names:
            lines, intact = audit.verify(keys, session, name)
            assert intact and [line.action for line in lines] == ["case opened (New)"]
        standings = session.exec(select(store.CaseMember)).all()
        assert len(standings) == 40 * 3  # every member's standing in every case
    engine.dispose()
    subjects = {str(c["Subject"]) for c in copies if c.to in MEMBER_EMAILS}
    assert len(subjects) == 40  # each case's subject carries its own code name


def test_one_message_to_the_alias_and_a_member_address_opens_a_case_and_runs_the_command(
        daemon: Daemon) -> None:
    """A new member's ``/conflicts none`` sent in one transaction to the alias and to their
    member address: the alias's route opens a case (its standings held for the batch's end),
    then the member's route reads every open case's standings, the new one's included, so
    they are written first. The message is processed once: one case, its chain intact, the
    member's answer out, nothing shunted."""
    from sqlmodel import Session, select

    from coc_mail import store
    from coc_mail.cases import audit
    from coc_mail.store.crypto import load_keyring

    daemon.members.append({"name": "Hal Newcomer", "email": "hal@example.net"})
    daemon.write()
    daemon.cli("reload")
    onboarding = wait_for(lambda: [c for c in daemon.delivered() if c.to == "hal@example.net"],
                          20, "Hal's onboarding")[0]
    member_address = onboarding["Reply-To"].addresses[0].addr_spec
    seen = len(daemon.delivered())
    daemon.send(make_report(sender="Hal Newcomer <hal@example.net>", subject="Also a report",
                            body="/conflicts none\n"),
                sender="hal@example.net", to=[ALIAS, member_address])
    answer = wait_for(lambda: [c for c in daemon.delivered()[seen:] if c.to == "hal@example.net"
                               and "Your conflicts are recorded" in c.text], 30,
                      "the answer to /conflicts")
    assert answer
    keys, _ = load_keyring(str(daemon.var / "secret.key"))
    engine = store.make_engine(daemon.database)
    try:
        def settled() -> bool:
            with Session(engine) as session:
                return not session.exec(select(store.Inbound)).all()
        wait_for(settled, 20, "the incoming queue to empty (nothing shunted)")
        with Session(engine) as session:
            (case,) = session.exec(select(store.Case)).all()
            lines, intact = audit.verify(keys, session, case.code_name)
            assert intact and lines[0].action == "case opened (New)"
            standings = session.exec(select(store.CaseMember)).all()
            assert len(standings) == len({(s.case_id, s.member_tag) for s in standings})
    finally:
        engine.dispose()
    assert "failed" not in daemon.log_text().lower()
