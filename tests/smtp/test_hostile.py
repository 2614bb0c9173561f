"""Malformed and hostile mail, and fuzzing: the daemon answers each one precisely, stays up,
and the next real report still goes through."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coc_mail.cases import commands
from coc_mail.mail import budget
from coc_mail.mail.message import Envelope, Incoming
from tests.helpers import ALIAS, Daemon, make_report


class Raw:
    """A bare-bones SMTP client that sends bytes exactly as given (bare LF, NUL, 8-bit...)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""
        self.read()

    def read(self) -> tuple[int, bytes]:
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            if line[3:4] != b"-":
                return int(line[:3]), line[4:]

    def cmd(self, line: bytes) -> tuple[int, bytes]:
        self.sock.sendall(line + b"\r\n")
        return self.read()

    def mail(self, data: bytes, options: bytes = b"") -> tuple[int, bytes]:
        self.cmd(b"EHLO fuzz.example")
        code, _ = self.cmd(b"MAIL FROM:<fuzz@example.com>" + options)
        if code != 250:
            return code, b""
        self.cmd(b"RCPT TO:<" + ALIAS.encode() + b">")
        code, text = self.cmd(b"DATA")
        if code != 354:
            return code, text
        self.sock.sendall(data + b"\r\n.\r\n")
        return self.read()

    def close(self) -> None:
        self.sock.close()


CORPUS: dict[str, bytes] = {
    "no headers at all": b"just a body line",
    "broken MIME": b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=\"X\"\r\n"
                   b"\r\n--X\r\nContent-Type: text/plain\r\n\r\nunterminated part",
    "missing From and Subject": b"To: conduct@example.org\r\n\r\nbody",
    "duplicated headers": b"From: a@example.com\r\nFrom: b@example.com\r\nSubject: 1\r\n"
                          b"Subject: 2\r\nMessage-ID: <1@x>\r\nMessage-ID: <2@x>\r\n\r\nbody",
    "NUL bytes": b"From: a@example.com\r\nSubject: nul\x00here\r\n\r\nbody \x00 with nul",
    "bare LF and CR": b"From: a@example.com\nSubject: bare\n\nline one\rline two\nline three",
    "8-bit without 8BITMIME": "From: a@example.com\r\nSubject: caf\u00e9\r\n\r\n\u00e9t\u00e9"
                              .encode("latin-1"),
    "header injection in names": b"From: \"Evil\r\n Bcc: x@y\" <a@example.com>\r\n"
                                 b"Subject: =?utf-8?q?hi=0D=0ABcc:_victim@example.com?=\r\n\r\nx",
    "encoded-word bomb": b"From: a@example.com\r\nSubject: " + b"=?utf-8?b?QQ==?= " * 4000
                         + b"\r\n\r\nbody",
    "huge References": b"From: a@example.com\r\nReferences: "
                       + b" ".join(b"<%d@x.example>" % i for i in range(20000)) + b"\r\n\r\nb",
    "nested rfc822": b"From: a@example.com\r\nContent-Type: message/rfc822\r\n\r\n" * 50
                     + b"\r\nend",
    "garbage DKIM": b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=x; b=!!!; bh=@@@\r\n"
                    b"From: a@example.com\r\n\r\nbody",
    "very long line": b"From: a@example.com\r\nSubject: long\r\n\r\n" + b"x" * 5000,
    "1 MB header line": b"From: a@example.com\r\nX-Big: " + b"y" * 1_000_000 + b"\r\n\r\nb",
}


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("hostile")
    d = Daemon(root, f"sqlite:///{root}/var/coc-mail.db")
    d.start()
    yield d
    d.stop()


@pytest.mark.parametrize("name", list(CORPUS))
def test_hostile_mail_is_answered_and_the_daemon_stays_up(fuzz_daemon: Daemon, name: str) -> None:
    client = Raw(fuzz_daemon.port)
    try:
        code, text = client.mail(CORPUS[name])
    finally:
        client.close()
    assert code in (250, 500, 550, 552, 554), (code, text)
    assert fuzz_daemon.proc is not None and fuzz_daemon.proc.poll() is None


def test_after_the_corpus_a_real_report_still_goes_through(fuzz_daemon: Daemon) -> None:
    d = fuzz_daemon
    before = len(d.delivered())
    for name, data in CORPUS.items():
        client = Raw(d.port)
        try:
            client.mail(data)
        finally:
            client.close()
        del name
    d.send(make_report(subject="the real one", body="REAL-REPORT-AFTER-FUZZ"))

    def arrived() -> bool:
        return any(b"REAL-REPORT-AFTER-FUZZ" in c.raw for c in d.delivered()[before:])

    from tests.helpers import wait_for

    wait_for(arrived, 60, "the real report")
    # Only mail over the processing budget is set aside, and the operators are told of each.
    over = [name for name, data in CORPUS.items() if budget.check(data, budget.Limits())]
    assert over == ["nested rfc822"]
    shunted = int(d.cli("queue").stderr.split(";")[-1].split()[0])
    told = [c for c in d.delivered() if "set aside" in str(c["Subject"])]
    assert shunted == len(told) == 2 * len(over), (shunted, len(told))
    assert all("nested more than 30 deep" in c.text for c in told)
    for copy in d.delivered():  # no header injection reached any copy
        head = copy.raw.split(b"\n\n", 1)[0]
        assert b"\nBcc:" not in head.replace(b"\n ", b" ")  # no header of its own


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_command_parser_never_crashes(text: str) -> None:
    try:
        cmd = commands.parse(text)
    except commands.UnknownCommand:
        return
    if cmd is not None:
        assert cmd.name in commands.TABLE


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_message_parsing_never_crashes(data: bytes) -> None:
    msg = Incoming(Envelope("x@example.com", [ALIAS]), data)
    assert isinstance(msg.subject, str) and "\n" not in msg.subject
    msg.referenced_ids()
    msg.is_automatic()
    from coc_mail.mail.readable import text_of

    assert isinstance(text_of(data), str)


def test_intake_fuzz_over_smtp(fuzz_daemon: Daemon, tmp_path: Path) -> None:
    """Random header/body combinations through the real daemon: always an answer."""
    import random

    rng = random.Random(1234)
    extra = [b"From: x@example.com\r\n", b"\r\n", b"\xff\xfe", b"\x00",
             b"Content-Type: multipart/mixed\r\n", b"=?x?q?y?="]
    pieces = [*CORPUS.values(), *extra]
    for _ in range(40):
        count = rng.randint(1, 8)
        data = b"".join(rng.choice(pieces)[: rng.randint(0, 300)] for _ in range(count))
        client = Raw(fuzz_daemon.port)
        try:
            code, _ = client.mail(data.replace(b"\r\n.\r\n", b"\r\n..\r\n"))
        finally:
            client.close()
        assert code in (250, 500, 550, 552, 554)
    assert fuzz_daemon.proc is not None and fuzz_daemon.proc.poll() is None


def test_long_lines_are_accepted_and_kept(fuzz_daemon: Daemon) -> None:
    client = Raw(fuzz_daemon.port)
    try:
        code, _ = client.mail(CORPUS["very long line"])
    finally:
        client.close()
    assert code == 250
