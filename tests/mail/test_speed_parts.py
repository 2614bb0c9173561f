"""The parts the speed work added: DKIM body hashes computed in pieces, sealing without copies,
SQLite writers taking turns, and a big report end to end through the blob and piece paths."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
import time
from pathlib import Path

import dkim
import pytest
import sqlalchemy as sa
from dkim.canonicalization import CanonicalizationPolicy
from hypothesis import given, settings
from hypothesis import strategies as st

from coc_mail import store
from coc_mail.mail import compose, redact
from coc_mail.mail import dkim as our_dkim
from coc_mail.store import crypto
from tests.helpers import Daemon, make_report, wire

RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
PIECES = st.lists(st.sampled_from([b"a", b" ", b"\t", b"\r\n", b"\r", b"\n", b"xyz", b"a b",
                                   b"     ", b" \t \t", b"\t\t\r\n"]),
                  max_size=60).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(body=PIECES, chunk=st.integers(min_value=1, max_value=9))
def test_body_hash_in_pieces_is_dkimpys(body: bytes, chunk: int) -> None:
    """Tiny pieces put every piece boundary somewhere interesting (CRLFs, blank lines)."""
    saved, our_dkim.CHUNK = our_dkim.CHUNK, chunk
    try:
        got = our_dkim.body_hash(body)
    finally:
        our_dkim.CHUNK = saved
    assert got == base64.b64encode(hashlib.sha256(RELAXED.canonicalize_body(body)).digest())


@settings(max_examples=300, deadline=None)
@given(data=PIECES)
def test_line_endings_made_crlf_as_the_regex_makes_them(data: bytes) -> None:
    assert compose.crlf(data) == re.sub(rb"\r?\n|\r(?!\n)", b"\r\n", data)


@settings(max_examples=50, deadline=None)
@given(parts=st.lists(st.binary(max_size=3000), max_size=5))
def test_sealing_in_parts_opens_as_the_joined_value(parts: list[bytes]) -> None:
    keys = crypto.Keyring(b"k" * 32)
    sealed = keys.seal_parts(parts, "bodies.content")
    assert keys.open(sealed, "bodies.content") == b"".join(parts)
    with pytest.raises(Exception, match="cannot decrypt"):
        keys.open(sealed, "outbound.content")  # bound to its place, as seal() is


def test_sqlite_writers_take_turns_and_a_thread_cannot_wait_for_itself(tmp_path: Path) -> None:
    engine = store.make_engine(f"sqlite:///{tmp_path}/t.db")
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE t (n INTEGER)")
    order: list[str] = []
    first = engine.connect()
    first.exec_driver_sql("INSERT INTO t VALUES (1)")  # holds the writers' lock from here

    def second_writer() -> None:
        with engine.begin() as c:
            c.exec_driver_sql("INSERT INTO t VALUES (2)")
        order.append("second committed")

    other = threading.Thread(target=second_writer)
    other.start()
    time.sleep(0.3)
    assert order == [], "the second writer waits for the first"
    with pytest.raises(RuntimeError, match="same thread"), engine.begin() as c:
        c.exec_driver_sql("INSERT INTO t VALUES (3)")  # would wait for itself: refused
    order.append("first committed")
    first.commit()
    first.close()
    other.join(10)
    assert order == ["first committed", "second committed"]
    with engine.connect() as c:
        assert sorted(r[0] for r in c.exec_driver_sql("SELECT n FROM t")) == [1, 2]
    assert Path(f"{tmp_path}/t.db.writers").exists()


def test_a_big_report_arrives_whole_and_signed(tmp_path: Path, sqlite_url: str) -> None:
    """3 MiB: above every 'big' threshold (blob I/O, sealing in parts, Maildir pieces)."""
    d = Daemon(tmp_path, sqlite_url, extra={"server": {"max_message_bytes": 8_000_000}})
    d.start()
    try:
        report = make_report(subject="big one")
        report.add_attachment(os.urandom(3 << 20), maintype="application",
                              subtype="octet-stream", filename="evidence.bin")
        raw = wire(report)
        d.send(raw)
        copies = d.wait_delivered(4, timeout=60)
        txt = "".join(
            part.strip('"') for part in d.cli("dkim", "txt").stdout.split("(")[1].split(")")[0]
            .split()
        ).encode()
        members = [c for c in copies if c.to != "reporter@example.com"]
        assert len(members) == 3
        for copy in members:
            assert copy.original().replace(b"\n", b"\r\n") == raw
            assert dkim.verify(copy.wire(), dnsfunc=lambda name, timeout=5: txt)
        db = sa.create_engine(sqlite_url)
        with db.connect() as c:  # sealed at rest, even when written in pieces
            stored = c.execute(sa.text("SELECT report FROM cases")).scalar_one()
        assert len(stored) > 3 << 20 and b"evidence.bin" not in stored
    finally:
        d.stop()


LINES = st.lists(st.sampled_from([b"a", b".", b"..", b"\r\n", b"\r", b"\n", b" ", b"x.y"]),
                 max_size=40).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(message=LINES, cut=st.integers(min_value=0, max_value=40))
def test_data_encoding_sends_what_aiosmtplib_would(message: bytes, cut: int) -> None:
    """coc-mail's DATA encoding (line endings, then leading dots, then the end marker) is
    aiosmtplib's, byte for byte, whatever the line endings, and whether the message comes
    whole or in parts."""
    import aiosmtplib.protocol

    from coc_mail.delivery.relay import encode_data, shared_part

    original = aiosmtplib.protocol.PERIOD_REGEX.sub(
        b"..", aiosmtplib.protocol.normalize_message_line_endings(message)) + b".\r\n"
    assert b"".join(encode_data([message])) == original
    assert b"".join(encode_data([message[:cut], message[cut:]])) == original
    body = shared_part(message[cut:])  # a body many copies send: its form made once
    assert b"".join(encode_data([message[:cut], body])) == original
    assert b"".join(encode_data([message[:cut], body])) == original
    head = message[:cut]
    if body and (not head or head.endswith(b"\r\n")):  # sent part by part, not joined
        assert "data" in vars(body)  # its form kept on the part for the next copies


def test_data_reader_unstuffs_dots_and_refuses_long_lines_then_carries_on(
    sqlite_daemon: Daemon,
) -> None:
    """coc-mail reads DATA itself (one buffer, not aiosmtpd's list of lines): transparency
    (RFC 5321 4.5.2) undone, an over-long line answered 500 after the whole message, and the
    session usable afterwards."""
    d = sqlite_daemon
    dotted = make_report(body=".leading dot\n..two dots\n.\nend\n")
    raw = wire(dotted)
    too_long = (b"From: r@example.com\r\nSubject: long\r\n\r\n" + b"x" * 70_000 + b"\r\n")
    with d.smtp() as s:
        s.ehlo()
        assert s.mail("reporter@example.com")[0] == 250
        assert s.rcpt("conduct@example.org")[0] == 250
        assert s.data(too_long)[0] == 500  # smtplib dot-stuffs; the line is 70 kB
        assert s.mail("reporter@example.com")[0] == 250
        assert s.rcpt("conduct@example.org")[0] == 250
        assert s.data(raw)[0] == 250
    copies = d.wait_delivered(4)
    member = next(c for c in copies if c.to != "reporter@example.com")
    assert member.original().replace(b"\n", b"\r\n") == raw


def test_queue_ids_are_never_reused_when_the_queue_runs_empty(sqlite_daemon: Daemon) -> None:
    d = sqlite_daemon
    ids = []
    for n in (1, 2):
        with d.smtp() as s:
            s.ehlo()
            s.mail("reporter@example.com")
            s.rcpt("conduct@example.org")
            code, reply = s.data(wire(make_report(subject=f"report {n}")))
        assert code == 250
        ids.append(reply.split()[-1])
        d.wait_delivered(4 * n)  # processed: the incoming queue is empty again
    assert ids[0] != ids[1], "a queue id names one message in the logs"


FIELDS = st.sampled_from([
    ("Content-Type", 'text/plain; charset="utf-8"'),
    ("Content-Type", "text/html; charset=iso-8859-1"),
    ("Content-Type", "text/plain; format=flowed; delsp=yes"),
    ("Content-Type", "text/plain; charset=utf-8; name=\"=?utf-8?q?r=C3=A9sum=C3=A9.txt?=\""),
    ("Content-Type", "application/pdf; name*=utf-8''r%C3%A9sum%C3%A9.pdf"),
    ("Content-Type", "text/plain; charset=\"unknown-8bit\""),
    ("Content-Type", "text/plain;; charset"),  # broken: defects kept
    ("Content-Disposition", "attachment; filename=\"notes.txt\""),
    ("Content-Disposition", "inline"),
    ("Content-Transfer-Encoding", "quoted-printable"),
    ("Content-Transfer-Encoding", "base64"),
    ("From", "=?utf-8?q?Ren=C3=A9e?= <renee@example.org>"),
    ("Subject", "=?utf-8?b?w6l0w6k=?="),
])


def _shape(msg: object) -> list[tuple[object, ...]]:
    from email.message import EmailMessage

    assert isinstance(msg, EmailMessage)
    return [(p.get_content_type(), dict(p.get_params() or []), p.get_filename(),
             p.get_content_disposition(), p.get_content_charset(),
             [(k, str(v), [type(d) for d in getattr(v, "defects", ())]) for k, v in p.items()])
            for p in msg.walk()]


@settings(max_examples=150, deadline=None)
@given(fields=st.lists(FIELDS, max_size=6), inner=st.lists(FIELDS, max_size=4),
       multipart=st.booleans())
def test_remembered_header_fields_read_as_the_librarys(
        fields: list[tuple[str, str]], inner: list[tuple[str, str]], multipart: bool) -> None:
    """readable.parse remembers parsed fields across messages: what every reader of a
    message sees (types, parameters, file names, charsets, values, defects) is what
    ``policy.default`` gives, read twice, across messages that share fields."""
    from email import message_from_bytes
    from email.message import EmailMessage
    from email.policy import default

    from coc_mail.mail import readable

    def head(pairs: list[tuple[str, str]]) -> bytes:
        return b"".join(f"{k}: {v}\r\n".encode() for k, v in pairs)

    if multipart:
        raw = (head(fields) + b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
               + head(inner) + b"\r\nr=C3=A9sum=C3=A9 text\r\n--B--\r\n")
    else:
        raw = head(fields) + b"\r\nhello =C3=A9\r\n"
    for _ in range(2):
        assert _shape(readable.parse(raw)) == _shape(message_from_bytes(raw, policy=default))
        library = message_from_bytes(raw, policy=default)
        assert isinstance(library, EmailMessage)
        assert readable.displayed(raw) == readable.displayed(library)  # what a client shows


def test_only_short_mime_fields_are_remembered_and_within_bounds() -> None:
    """The MIME fields a part's readers ask for again and again are parsed once; any other
    field, and a long one, every time; and the memory never holds more than its bound (a
    parsed field keeps its parse tree: a sender must not fill the processor with them)."""
    from coc_mail.mail import readable

    raw = b'Content-Type: text/plain; charset="utf-8"\r\nSubject: s\r\n\r\nhi\r\n'
    first, second = readable.parse(raw), readable.parse(raw)
    assert first["Content-Type"] is second["Content-Type"]  # the parse was remembered
    assert first["Subject"] is not second["Subject"]
    params = "; ".join(f"p{i}=v" for i in range(60))
    long = f"Content-Type: text/plain; {params}\r\n\r\nhi\r\n".encode()
    assert readable.parse(long)["Content-Type"] is not readable.parse(long)["Content-Type"]
    assert dict(readable.parse(long)["Content-Type"].params)["p59"] == "v"
    registry = readable.POLICY.header_factory
    for i in range(readable.REMEMBERED * 3):
        readable.parse(f"Content-Type: text/plain; x={i}\r\n\r\nhi\r\n".encode())
        assert len(registry._seen) <= readable.REMEMBERED  # type: ignore[attr-defined]


def test_the_remembered_fields_stay_within_their_memory_and_travel_with_no_message() -> None:
    """Crafted fields of the longest remembered length (a parse tree of about 215 KiB each)
    hold at most about 7 MiB, however many come; and a message pickled or copied carries
    nothing of another message's fields (an earlier report's attachment name)."""
    import copy
    import gc
    import pickle
    import tracemalloc

    from coc_mail.mail import readable

    registry = readable.POLICY.header_factory
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(readable.REMEMBERED * 3):
            value = "(" * (readable.REMEMBERED_VALUE - 4) + f"{i:04d}"
            readable.parse(f"Content-Type: {value}\r\n\r\nx\r\n".encode()).get_content_type()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(registry._seen) <= readable.REMEMBERED  # type: ignore[attr-defined]
    assert held < 8 << 20, f"{held / 2**20:.1f} MiB held"

    earlier = b'Content-Type: application/pdf; name="J-Smith-statement.pdf"\r\n\r\nx\r\n'
    readable.parse(earlier).get_filename()
    later = readable.parse(b"Content-Type: text/plain\r\n\r\nhello\r\n")
    assert b"J-Smith" not in pickle.dumps(later)
    copied = copy.deepcopy(later.policy).header_factory  # type: ignore[attr-defined]
    assert "J-Smith" not in repr(copied.__dict__)
    assert readable.parse(earlier)["Content-Type"] is readable.parse(earlier)["Content-Type"]


# Pieces of text around a domain: its characters in every form the tolerant pattern reads
# (a k, an s and an i for the lookalikes that matching without case adds), invisibles,
# controls, escapes, and what base64-decoded binary shows.
DOMAIN = "kiosk-lists.example"


def _one_changed(domain: str) -> st.SearchStrategy[str]:
    forms = ["\u00ad", "\u200b", "\x00", "\x01"]
    return st.tuples(st.integers(0, len(domain) - 1), st.sampled_from([
        lambda c: c.upper(), lambda c: chr(ord(c) + 0xFEE0), lambda c: f"%{ord(c):02x}",
        lambda c: f"&#{ord(c)};", lambda c: {"k": "\u212a", "s": "\u017f", "i": "\u0131"}.get(c, c),
        lambda c: "\u0130" if c == "i" else c, *[lambda c, f=f: f + c for f in forms]])).map(
        lambda t: domain[:t[0]] + t[1](domain[t[0]]) + domain[t[0] + 1:])


DOMAIN_PIECES = st.lists(st.one_of(
    st.sampled_from([DOMAIN, DOMAIN.upper(), "?", "%", "&", "\ufffd", "\x7f", "\x01", " ",
                     "\r\n", "@", "conduct+x@", "&6b", "%#107;", "&25", "%amp;", "&#x6b",
                     "k", "iosk-lists.example", *redact.ASCII_MATES]),
    _one_changed(DOMAIN),
    st.characters(max_codepoint=0x7F),
    st.characters(),
    st.binary(max_size=12).map(lambda b: b.decode("utf-8", "replace")),
    st.binary(max_size=12).map(lambda b: b.decode("latin-1")),
), max_size=30).map("".join)


@settings(max_examples=1500, deadline=None)
@given(text=DOMAIN_PIECES)
def test_the_domain_is_found_where_its_tolerant_pattern_matches(text: str) -> None:
    """The quick ways (a plain search of ASCII text without escapes or controls; patterns
    whose first character re can skip to) find exactly what the tolerant pattern written
    character by character finds, at the same offsets: the domain, the addresses of ours
    and a secret."""
    r = redact.Redactor(f"conduct@{DOMAIN}")
    spans = [m.span() for m in re.finditer(redact._literal(DOMAIN), text, re.IGNORECASE)]
    assert r.domain_hits(text) == spans
    assert [m.span() for m in r.domain.finditer(text)] == spans
    for tail in (f"+x@{DOMAIN}", "kiss"):
        text = tail + text + "conduct" + tail
        slow = redact._literal("conduct") if tail.startswith("+") else redact._literal(tail)
        quick = redact._literal("conduct" if tail.startswith("+") else tail, leading=True)
        assert [m.span() for m in re.finditer(quick, text, re.IGNORECASE)] == \
            [m.span() for m in re.finditer(slow, text, re.IGNORECASE)]
    assert r.pattern.sub("A", text) == re.sub(
        r.pattern.pattern.replace(redact._leading("c"), redact._char("c"), 1), "A", text,
        flags=re.IGNORECASE)


def test_no_character_but_the_listed_ones_matches_an_ascii_character_ignoring_case() -> None:
    """What the quick patterns rely on, proved over every code point for every printable
    ASCII character: a character's class, matched ignoring case, matches the forms it spells
    out and, beyond them, only the :data:`redact.ASCII_MATES` it is tried against."""
    every = "".join(map(chr, range(0x110000)))
    classes = {c: "".join(re.escape(chr(x)) for x in redact._forms(c))
               for c in map(chr, range(0x21, 0x7F))}
    anywhere = set(re.findall(f"[{''.join(classes.values())}]", every, re.IGNORECASE))
    assert anywhere - set(map(chr, range(0x80))) - {chr(x) for x in range(0xFF01, 0xFF5F)} \
        == set(redact.ASCII_MATES)
    for c, chars in classes.items():
        for x in anywhere | set(map(chr, range(0x80))):
            assert bool(re.fullmatch(f"[{chars}]", x, re.IGNORECASE)) \
                == bool(re.fullmatch(f"[{redact._opening(c)}]", x)), (c, x)


@settings(max_examples=800, deadline=None)
@given(text=st.lists(st.one_of(st.sampled_from(["v", "V", "i", "I", "a", "A", "\u0130", "\u0131",
                                                "\u212a", "via", "VİA", "\u0307", "\ufffd"]),
                               st.characters()), max_size=20).map("".join))
def test_a_view_that_can_say_via_is_told_from_its_bytes(text: str) -> None:
    from coc_mail.cases.alias import _may_say_via

    assert _may_say_via(text) == ("via" in text.lower())


def test_no_character_but_ascii_lowers_to_v_i_or_a_alone() -> None:
    """What the quick 'via' test relies on, over every code point."""
    odd = [c for c in map(chr, range(0x80, 0x110000))
           if c.lower() in ("v", "i", "a") or ("via" in c.lower())]
    assert odd == []
