"""Attacks at the SMTP edge: token guessing is slowed down, one client cannot take every
connection, and a slow-drip client is cut off."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.helpers import ALIAS, Daemon, make_report


def test_guessing_tokens_is_penalised_without_revealing_anything(
    tmp_path: Path, sqlite_url: str
) -> None:
    d = Daemon(tmp_path, sqlite_url, extra={"server": {"unknown_recipients_per_10_minutes": 5},
                                            "intake": {"trusted_relays": []}})
    d.start()
    try:
        with d.smtp() as s:
            s.ehlo()
            s.mail("guesser@example.com")
            codes = [s.rcpt(f"conduct+happy-otter.{'a' * 15}{c}@example.org")[0]
                     for c in "abcdefgh"]
            assert codes[:5] == [550] * 5  # the same answer as for any unknown address
            assert set(codes[5:]) == {450}
            assert s.rcpt(ALIAS)[0] == 450, "even real addresses wait until the penalty ends"
    finally:
        d.stop()


def test_connections_per_client_and_session_length_are_bounded(
    tmp_path: Path, sqlite_url: str
) -> None:
    d = Daemon(tmp_path, sqlite_url, extra={
        "server": {"max_connections_per_ip": 3, "max_session_seconds": 2},
        "intake": {"trusted_relays": []}})
    d.start()
    socks = []
    try:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", d.port))
            assert sock.recv(100).startswith(b"220")
            socks.append(sock)
        extra = socket.create_connection(("127.0.0.1", d.port))
        assert extra.recv(100).startswith(b"421")
        extra.close()
        # A slow-drip client: one byte at a time, never idle — cut off after 2 s.
        drip = socks[0]
        start = time.monotonic()
        closed = False
        while time.monotonic() - start < 6:
            try:
                drip.sendall(b"N")
                if drip.recv(100, socket.MSG_DONTWAIT) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed = True
                break
            time.sleep(0.2)
        assert closed, "the session outlived max_session_seconds"
        for sock in socks:
            sock.close()
        time.sleep(0.5)
        d.send(make_report())  # the slots are free again
        d.wait_delivered(4)
    finally:
        for sock in socks:
            sock.close()
        d.stop()


def test_a_flood_opens_every_case_but_members_get_a_digest(
    tmp_path: Path, sqlite_url: str
) -> None:
    d = Daemon(tmp_path, sqlite_url, extra={
        "intake": {"reports_per_hour_before_digest": 2, "acknowledgments_per_day": 1},
        "cases": {"check_interval_seconds": 0.5}})
    d.start()
    try:
        for i in range(6):
            d.send(make_report(subject=f"flood {i}"))
        copies = d.wait_delivered(2 * 3 + 1 + 3, timeout=30)  # 2 reports, 1 ack, 3 digests
        digests = [c for c in copies if "held during a flood" in str(c["Subject"])]
        assert sorted(c.to for c in digests) == ["ada@example.net", "grace@example.net",
                                                 "linus@example.net"]
        assert "4 report(s)" in digests[0].text
        assert len(d.cli("cases").stdout.splitlines()) == 7, "every report is a case"
        # A member reads a held report through the case address the digest gives.
        grace = next(c for c in digests if c.to == "grace@example.net")
        address = next(w for w in grace.text.split() if w.startswith("conduct+"))
        d.send(make_report(sender="Grace Sample <grace@example.net>", to=address, body="/doc"),
               sender="grace@example.net", to=[address])
        doc = d.wait_delivered(11)[-1]
        assert doc.to == "grace@example.net" and "Case document" in str(doc["Subject"])
    finally:
        d.stop()


def test_members_can_be_required_to_use_tls(tmp_path: Path, sqlite_url: str) -> None:
    import smtplib
    import ssl

    from tests.helpers import self_signed

    cert, key = self_signed(tmp_path)
    d = Daemon(tmp_path, sqlite_url, extra={"server": {
        "tls_cert": str(cert), "tls_key": str(key), "require_tls_for_members": True}})
    d.start()
    try:
        d.send(make_report())
        grace = next(c for c in d.wait_delivered(4) if c.to == "grace@example.net")
        address = grace["Reply-To"].addresses[0].addr_spec
        command = make_report(sender="Grace Sample <grace@example.net>", to=address,
                              body="/doc")
        d.send(command, sender="grace@example.net", to=[address])  # in the clear: ignored
        notice = d.wait_delivered(5)[-1]
        assert "encrypted" in notice.text and "Case document" not in str(notice["Subject"])
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
            s.starttls(context=context)
            s.send_message(command, from_addr="grace@example.net", to_addrs=[address])
        doc = d.wait_delivered(6)[-1]
        assert "Case document" in str(doc["Subject"])
    finally:
        d.stop()


def test_forgeries_cannot_flood_the_real_member(tmp_path: Path, sqlite_url: str) -> None:
    d = Daemon(tmp_path, sqlite_url)
    d.start()
    try:
        d.send(make_report())
        grace = next(c for c in d.wait_delivered(4) if c.to == "grace@example.net")
        address = grace["Reply-To"].addresses[0].addr_spec
        for i in range(6):  # a forger who learned Grace's case address
            d.send(make_report(sender="Mallory <mallory@example.com>", to=address,
                               body=f"forged {i}"), sender="mallory@example.com", to=[address])
        copies = d.wait_delivered(4 + 3, timeout=30)  # three notices an hour, no more
        notices = [c for c in copies[4:] if c.to == "grace@example.net"]
        assert len(notices) == 3 and all("was ignored" in c.text for c in notices)
    finally:
        d.stop()
