"""Replies find their case; reporter addresses, bounces and postmaster mail go where they should."""

from __future__ import annotations

import pytest

from tests.helpers import Daemon, by_recipient, make_report


def case_lines(d: Daemon) -> list[str]:
    return d.cli("cases").stdout.splitlines()[1:]


def test_reply_to_our_mail_is_routed_to_its_case(daemon: Daemon) -> None:
    daemon.send(make_report(subject="First"))
    copies = by_recipient(daemon.wait_delivered(4))
    ack = copies["reporter@example.com"][0]
    code_name = " ".join(case_lines(daemon)[0].split()[:2])

    # The reporter answers the acknowledgment but their client writes to the alias.
    reply = make_report(subject=f"Re: {ack['Subject']}", body="One more detail.\n",
                        In_Reply_To=str(ack["Message-ID"]), References=str(ack["Message-ID"]))
    daemon.send(reply)
    later = by_recipient(daemon.wait_delivered(7))
    assert len(case_lines(daemon)) == 1, "no new case for a reply"
    for member in ("ada@example.net", "grace@example.net", "linus@example.net"):
        second = later[member][1]
        assert str(second["Subject"]).strip().startswith(f"[{code_name}] Re:")
        assert second["Subject"].count(f"[{code_name}]") == 1
        assert "wrote again" in second.text
    assert len(later["reporter@example.com"]) == 1, "no second acknowledgment"


def test_mail_to_the_reporter_address_reaches_the_case(sqlite_daemon: Daemon) -> None:
    d = sqlite_daemon
    d.send(make_report())
    ack = by_recipient(d.wait_delivered(4))["reporter@example.com"][0]
    reporter_address = ack["Reply-To"].addresses[0].addr_spec
    d.send(make_report(subject="More", to=reporter_address), to=[reporter_address])
    got = by_recipient(d.wait_delivered(7))
    assert all(len(got[m]) == 2 for m in ("ada@example.net", "grace@example.net",
                                          "linus@example.net"))
    assert len(case_lines(d)) == 1


def test_a_reply_naming_an_unknown_message_opens_a_new_case(sqlite_daemon: Daemon) -> None:
    d = sqlite_daemon
    d.send(make_report(In_Reply_To="<not-ours@example.com>"))
    d.wait_delivered(4)
    assert len(case_lines(d)) == 1


def test_auto_replies_get_no_acknowledgment(sqlite_daemon: Daemon) -> None:
    d = sqlite_daemon
    d.send(make_report(Auto_Submitted="auto-replied"))
    d.wait_delivered(3)  # members only
    d.send(make_report(List_Id="<announce.example.com>"))
    d.wait_delivered(6)
    d.send(make_report(sender="MAILER-DAEMON <mailer-daemon@example.com>"), sender="")
    got = by_recipient(d.wait_delivered(9))
    assert "reporter@example.com" not in got and "mailer-daemon@example.com" not in got
    assert len(case_lines(d)) == 3, "intake never drops a report"


def test_a_flood_from_one_sender_gets_capped_acknowledgments(sqlite_daemon: Daemon) -> None:
    d = sqlite_daemon
    for i in range(5):
        d.send(make_report(subject=f"report {i}"))
    got = by_recipient(d.wait_delivered(5 * 3 + 3))
    assert len(got["reporter@example.com"]) == 3  # acknowledgments_per_day default
    assert len(case_lines(d)) == 5


@pytest.mark.parametrize("form", ["tag on the alias", "earlier releases' conduct-bounces"])
def test_dsn_to_a_bounce_address_tells_the_operator(sqlite_daemon: Daemon, form: str) -> None:
    """The envelope sender is ``conduct+b.<copy>.<mac>``: with its +tag stripped it is the
    From: address. DSNs to the form earlier releases wrote (``conduct-bounces+...``) still
    find their copy."""
    d = sqlite_daemon
    d.send(make_report())
    copies = by_recipient(d.wait_delivered(4))
    grace = copies["grace@example.net"][0]
    bounce_to = str(grace["Return-Path"]).strip("<>")
    tag, _, domain = bounce_to.partition("@")
    local, _, detail = tag.partition("+")
    assert local == "conduct" and detail.startswith("b.")
    assert f"{local}@{domain}" == grace["From"].addresses[0].addr_spec
    if form != "tag on the alias":
        bounce_to = f"conduct-bounces+{detail[2:]}@{domain}"
    raw = (
        b"From: MAILER-DAEMON@example.net\r\nTo: " + bounce_to.encode() + b"\r\n"
        b"Subject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example.net\r\n\r\n"
        b"Final-Recipient: rfc822; grace@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        b"--B--\r\n"
    )
    d.send(raw, sender="", to=[bounce_to])
    got = by_recipient(d.wait_delivered(5))
    notice = next(c for c in got["ada@example.net"] if "bounced" in str(c["Subject"]))
    assert "bounced" in str(notice["Subject"])
    assert "5.1.1" in notice.text and "grace" in notice.text
    assert len(case_lines(d)) == 1


def test_postmaster_mail_goes_to_the_operators(sqlite_daemon: Daemon) -> None:
    d = sqlite_daemon
    d.send(make_report(to="postmaster@example.org"), to=["postmaster@example.org"])
    got = by_recipient(d.wait_delivered(1))
    assert list(got) == ["ada@example.net"]
    assert case_lines(d) == []


def test_member_mail_to_a_new_case_is_answered_not_relayed(sqlite_daemon: Daemon) -> None:
    d = sqlite_daemon
    d.send(make_report())
    grace = by_recipient(d.wait_delivered(4))["grace@example.net"][0]
    case_address = grace["Reply-To"].addresses[0].addr_spec
    post = make_report(sender="Grace Sample <grace@example.net>", to=case_address,
                       subject="Re: thoughts")
    d.send(post, sender="grace@example.net", to=[case_address])
    got = by_recipient(d.wait_delivered(5))
    assert len(got["grace@example.net"]) == 2
    assert "name the reported person first" in got["grace@example.net"][1].text.lower()
    assert len(got["ada@example.net"]) == 1 and len(got["linus@example.net"]) == 1
    # A forger using Grace's address gets nothing at all; Grace is told (no content).
    forged = make_report(sender="Mallory <mallory@example.com>", to=case_address,
                         body="FORGED-TEXT")
    d.send(forged, sender="mallory@example.com", to=[case_address])
    got = by_recipient(d.wait_delivered(6))
    assert "mallory@example.com" not in got
    notice = got["grace@example.net"][2]
    assert "was ignored" in notice.text and "FORGED-TEXT" not in notice.text


def test_reply_to_both_reporter_address_and_alias_is_forwarded_once(
    sqlite_daemon: Daemon,
) -> None:
    d = sqlite_daemon
    d.send(make_report())
    ack = by_recipient(d.wait_delivered(4))["reporter@example.com"][0]
    reporter_address = ack["Reply-To"].addresses[0].addr_spec
    reply = make_report(subject="More", In_Reply_To=str(ack["Message-ID"]))
    d.send(reply, to=[reporter_address, "conduct@example.org"])
    got = by_recipient(d.wait_delivered(7))
    assert all(len(got[m]) == 2 for m in ("ada@example.net", "grace@example.net",
                                          "linus@example.net"))
