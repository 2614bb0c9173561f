"""The processing budget and the memory bound, over SMTP against real daemons: a message that
uses up its CPU time is set aside by the watchdog and the next one goes on; DATA held in
memory across sessions is bounded (451 beyond); old databases are sealed on upgrade."""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path

import pytest

from tests.helpers import ALIAS, Daemon, make_report, reads, wait_for


def test_a_message_over_its_cpu_time_is_set_aside_and_the_next_goes_on(
        tmp_path: Path, sqlite_url: str) -> None:
    d = Daemon(tmp_path, sqlite_url, extra={
        "server": {"max_message_bytes": 30_000_000},
        "processing": {"max_cpu_seconds": 0.3}})
    d.start()
    try:
        d.send(make_report())
        d.wait_delivered(4)
        # Within every structural limit, but slow to read: a report whose HTML names our
        # domain is parsed and laid out in full to look for our addresses (the text a member
        # post is read for stops at 200,000 characters), a million block elements: about
        # thirty times the CPU limit.
        heavy = make_report(sender="Heavy <heavy@example.com>")
        heavy.set_content("<p>Write to conduct@example.org</p>\n"
                          + "<div>a <b>b</b> c</div>\n" * 1_000_000, subtype="html", cte="7bit")
        d.send(heavy, sender="heavy@example.com")
        d.send(make_report(sender="Other <other@example.com>", body="NEXT-REPORT"),
               sender="other@example.com")
        copies = d.wait_delivered(4 + 1 + 4, timeout=40)  # the notice, the next report
        notice = next(c for c in copies if "set aside" in str(c["Subject"]))
        assert notice.to == "ada@example.net" and "CPU seconds" in notice.text
        assert sum(reads(c.raw, "NEXT-REPORT") for c in copies) == 3
        assert "1 shunted" in d.cli("queue").stderr
        assert "stopped a message over its processing budget" in d.log_text()
    finally:
        d.stop()


def _start_data(port: int, size: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.recv(1000)
    for line in (b"EHLO slow.example", b"MAIL FROM:<slow@example.com>",
                 b"RCPT TO:<" + ALIAS.encode() + b">", b"DATA"):
        sock.sendall(line + b"\r\n")
        reply = b""
        while not reply.endswith(b"\r\n") or reply.split(b"\r\n")[-2][3:4] == b"-":
            reply += sock.recv(1000)
    sock.sendall(b"From: slow@example.com\r\nSubject: slow\r\n\r\n"
                 + (b"y" * 98 + b"\r\n") * (size // 100))
    return sock


def test_data_held_in_memory_is_bounded_across_sessions(tmp_path: Path, sqlite_url: str) -> None:
    d = Daemon(tmp_path, sqlite_url, extra={"server": {"max_data_memory_bytes": 120_000}})
    d.start()
    try:
        first = _start_data(d.port, 90_000)  # unfinished: the daemon holds 90 kB of it
        wait_for(lambda: True, 1)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            d.send(make_report(body="z" * 60_000))
        assert refused.value.smtp_code == 451
        first.sendall(b".\r\n")
        assert first.recv(1000).startswith(b"250")
        first.close()
        d.send(make_report(body="z" * 60_000))  # the memory is free again
        d.wait_delivered(8)
    finally:
        d.stop()


def test_mail_that_fails_in_the_database_never_stalls_the_next(tmp_path: Path,
                                                               database_url: str) -> None:
    """A Message-ID with a NUL byte (PostgreSQL refuses it in a query: a DataError) and one
    message counting one thing twice (a bad From to two of a member's case addresses: an
    IntegrityError before): each is the message's own fault, never "database unavailable"."""
    d = Daemon(tmp_path, database_url)
    d.start()
    try:
        for n in range(2):
            d.send(make_report(sender=f"R <r{n}@example.com>"), sender=f"r{n}@example.com")
        copies = d.wait_delivered(8)
        grace = [c["Reply-To"].addresses[0].addr_spec for c in copies
                 if c.to == "grace@example.net"]
        d.send(b"From: x@example.com\r\nSubject: nul\r\nIn-Reply-To: <a\x00b@example.com>\r\n"
               b"References: <c\x00d@example.com>\r\n\r\nhello\r\n", sender="x@example.com")
        d.send(b"From: Grace Sample <grace@example.net>, Someone <x@example.com>\r\n"
               b"Subject: two\r\n\r\n/doc\r\n", sender="x@example.com", to=grace)
        d.send(make_report(sender="After <after@example.com>", body="AFTER-THE-BAD-ONES"),
               sender="after@example.com")
        wait_for(lambda: sum(reads(c.raw, "AFTER-THE-BAD-ONES") for c in d.delivered()) >= 3,
                 20, "the report after the bad messages")
        assert "database unavailable" not in d.log_text()
    finally:
        d.stop()


def test_a_renamed_member_keeps_their_exclusions(tmp_path: Path, sqlite_url: str) -> None:
    """The handle comes from the name: renaming a member in the file changes it. With the
    same address they stay the same member, so a report made without them stays so."""
    d = Daemon(tmp_path, sqlite_url)
    d.start()
    try:
        d.send(make_report(to="conduct+without.linus@example.org", body="ABOUT-LINUS"),
               to=["conduct+without.linus@example.org"])
        d.wait_delivered(3)
        d.members[2]["name"] = "Lin Placeholder"  # the handle becomes "lin"
        d.write()
        d.cli("reload")
        wait_for(lambda: "carried over" in d.log_text(), 10, "the reload")
        d.send(make_report(sender="Other <other@example.com>", body="SECOND"),
               sender="other@example.com")
        copies = d.wait_delivered(3 + 4)  # no onboarding mail: Lin is Linus
        assert not any(reads(c.raw, "ABOUT-LINUS") for c in copies
                       if c.to == "linus@example.net")
        assert any(reads(c.raw, "SECOND") for c in copies if c.to == "linus@example.net")
    finally:
        d.stop()


def test_the_kernel_timer_ends_a_call_that_holds_the_interpreter(tmp_path: Path) -> None:
    """One long call in C (here a regular expression that never ends) keeps the watchdog
    thread from running; the kernel's profiling timer the processor arms ends the process
    anyway, and the message in hand is recorded as over budget."""
    import signal
    import subprocess
    import sys

    from coc_mail.cases import watchdog

    pid_file = str(tmp_path / "var" / "coc-mail.pid")
    code = (
        "import os, re, signal, sys\n"
        "from coc_mail.cases import watchdog\n"
        "hand = watchdog.files(sys.argv[1])[1]\n"
        "hand.parent.mkdir(parents=True, exist_ok=True)\n"
        "fd = os.open(hand, os.O_RDWR | os.O_CREAT, 0o600)\n"
        "watchdog.in_hand(fd, 4242)\n"
        "signal.setitimer(signal.ITIMER_PROF, 0.3)\n"
        "re.match(r'(a+)+$', 'a' * 64 + 'b')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, pid_file], timeout=30)
    assert proc.returncode == -signal.SIGPROF
    assert watchdog.killed_in_hand(pid_file) == 4242
    assert watchdog.files(pid_file)[0].read_text().split() == ["4242"]


def test_a_worker_ended_by_its_timer_is_restarted(tmp_path: Path, sqlite_url: str) -> None:
    """The main process reads which message the processing worker had in hand when the
    kernel ended it (none here) and starts it again at once."""
    import os
    import signal

    from bench.procs import roles

    d = Daemon(tmp_path, sqlite_url)
    d.start()
    try:
        assert d.proc is not None
        os.kill(roles(d.proc.pid)["processing"], signal.SIGPROF)
        wait_for(lambda: "stopped by its CPU timer (inbound 0 in hand)" in d.log_text(), 10,
                 "the restart")
        d.send(make_report())
        d.wait_delivered(4)
        assert "0 shunted" in d.cli("queue").stderr
    finally:
        d.stop()
