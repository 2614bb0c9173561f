"""Interop with a real MTA: Postfix as the public MX relaying to coc-mail, and as the relay
coc-mail delivers through. A report sent to Postfix reaches the members' mailboxes."""

from __future__ import annotations

import smtplib
from pathlib import Path

import dkim
import pytest

from tests import postfix
from tests.helpers import ALIAS, Daemon, free_port, make_report, wait_for, wire

MEMBERS = ["ada@example.net", "grace@example.net", "linus@example.net"]
REPORTER = "reporter@example.com"


@pytest.mark.skipif(bool(postfix.available()), reason=postfix.available() or "ok")
def test_report_through_postfix_both_ways(tmp_path: Path, sqlite_url: str) -> None:
    coc_port = free_port()
    mx = postfix.PrivatePostfix(relay_domain="example.org", relay_to=f"127.0.0.1:{coc_port}",
                                mailboxes=[*MEMBERS, REPORTER])
    mx.start()
    d = Daemon(tmp_path, sqlite_url, relay=f"smtp://127.0.0.1:{mx.port}", port=coc_port)
    d.start()
    try:
        report = make_report(body="INTEROP-MARKER\n")
        with smtplib.SMTP("127.0.0.1", mx.port, timeout=30) as s:
            s.sendmail(REPORTER, [ALIAS], wire(report))

        def arrived() -> bool:
            return all(mx.mailbox(a) for a in [*MEMBERS, REPORTER])

        wait_for(arrived, 60, "copies in every mailbox via Postfix")
        record = d.cli("dkim", "txt").stdout  # as a resolver would serve it
        txt = record[record.index('"') + 1:].replace('" "', "").split('"')[0].encode()
        for address in MEMBERS:
            (copy,) = mx.mailbox(address)
            assert b"INTEROP-MARKER" in copy and b"Received: from" in copy
            signed = copy.split(b"\n", 1)[1] if copy.startswith(b"Return-Path") else copy
            wire_form = signed.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            start = wire_form.index(b"DKIM-Signature:")
            assert dkim.verify(wire_form[start:], dnsfunc=lambda n, timeout=5: txt)
        (ack,) = mx.mailbox(REPORTER)
        assert b"We received your report" in ack
    finally:
        d.stop()
        mx.stop()
