"""A relay that does not offer 8BITMIME (Postfix's ``smtp-sink -8``) receives only 7-bit
bytes from the daemon, DKIM-signed after the downgrade, that decode back to the report."""

from __future__ import annotations

import smtplib
from email import message_from_bytes
from email.policy import compat32, default
from pathlib import Path

import dkim
import pytest

from tests import postfix
from tests.helpers import ALIAS, Daemon, make_report, wait_for, wire

TEXT = "Jörg Müller shouted at Zoë ☃ in the hallway — “twice”, said Íñigo.\n"
MEMBERS = 3  # the test config's members (tests/helpers.py MEMBERS)


def received(sink: postfix.Sink, count: int) -> list[tuple[dict[str, str], bytes]]:
    def enough() -> list[tuple[dict[str, str], bytes]] | None:
        got = sink.transactions()
        return got if len(got) >= count else None

    got: list[tuple[dict[str, str], bytes]] = wait_for(
        enough, 30, f"{count} transactions at smtp-sink")
    return got


def report_bytes() -> bytes:
    msg = make_report(body=TEXT, subject="Grüße from the hallway")
    msg.set_content(TEXT, cte="8bit")
    return wire(msg)


@pytest.mark.skipif(bool(postfix.available()), reason=postfix.available() or "ok")
@pytest.mark.parametrize("eightbit", [False, True], ids=["7bit-relay", "8bitmime-relay"])
def test_copies_to_a_relay_without_8bitmime_are_seven_bit(
    tmp_path: Path, sqlite_url: str, eightbit: bool
) -> None:
    sink = postfix.Sink(eightbit=eightbit)
    d = Daemon(tmp_path, sqlite_url, relay=sink.url).start()
    try:
        original = report_bytes()
        assert not original.isascii()
        with d.smtp() as s:
            s.sendmail("reporter@example.com", [ALIAS], original, mail_options=["BODY=8BITMIME"])
        got = received(sink, MEMBERS + 1)  # the members' copies and the acknowledgment
        record = d.cli("dkim", "txt").stdout
        txt = record[record.index('"') + 1:].replace('" "', "").split('"')[0].encode()
        copies = 0
        for args, data in got:
            assert dkim.verify(data, dnsfunc=lambda n, timeout=5: txt), args
            if b"message/rfc822" not in data and b"message/global" not in data:
                continue  # the acknowledgment
            copies += 1
            assert data.isascii() is (not eightbit)
            assert ("BODY=8BITMIME" in args.get("X-Mail-Args", "")) is eightbit
            msg = message_from_bytes(data, policy=default)
            body = msg.get_body(("plain",))
            assert body is not None and TEXT.strip() in body.get_content()
            nested = next(p for p in message_from_bytes(data, policy=compat32).walk()
                          if p.get_content_type() == "message/rfc822")
            nested_payload = nested.get_payload()
            assert isinstance(nested_payload, list)
            inner = nested_payload[0]
            assert isinstance(inner, type(nested))
            payload = inner.get_payload(decode=True)
            assert isinstance(payload, bytes)
            assert payload.decode().replace("\r\n", "\n").rstrip("\n") == TEXT.rstrip("\n")
        assert copies == MEMBERS
    finally:
        d.stop()
        sink.stop()


@pytest.mark.skipif(bool(postfix.available()), reason=postfix.available() or "ok")
def test_a_downgrade_changes_nothing_in_the_case(tmp_path: Path, sqlite_url: str) -> None:
    """Delivery to the 7-bit relay goes on as always: nothing left in the queue."""
    sink = postfix.Sink(eightbit=False)
    d = Daemon(tmp_path, sqlite_url, relay=sink.url).start()
    try:
        with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
            s.sendmail("reporter@example.com", [ALIAS], report_bytes(),
                       mail_options=["BODY=8BITMIME"])
        received(sink, MEMBERS + 1)
        wait_for(lambda: "-- 0 copies waiting; 0 incoming" in d.cli("queue").stderr, 20,
                 "an empty queue")
    finally:
        d.stop()
        sink.stop()
