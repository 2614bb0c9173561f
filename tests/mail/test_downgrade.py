"""The 8BITMIME downgrade (coc_mail/mail/downgrade.py) on messages as real clients write them:
7-bit bytes out, and every part reads the same as before."""

from __future__ import annotations

import base64
from email import message_from_bytes
from email.message import Message
from email.policy import compat32, default

import pytest

from coc_mail.mail.downgrade import seven_bit
from tests.clients import CLIENTS, LANGUAGES, compose

TEXT = {"en": "Jordan Roe shouted at me ☃ — “twice”.", "de": "Grüße, Jörg hat geschrien.",
        "ru": "Иван кричал на меня.", "ja": "田中さんが怒鳴りました。", "zh": "他对我大喊大叫。",
        "fr": "Élodie a crié ; à côté.", "sv": "Åsa skrek åt mig.", "pl": "Łukasz krzyczał.",
        "es": "Íñigo me gritó.", "it": "Niccolò ha urlato.", "nl": "Ruud schreeuwde één keer.",
        "pt": "João gritou comigo."}


def leaves(raw: bytes) -> list[tuple[str, bytes]]:
    """Each leaf part as a reader gets it: its type and its decoded bytes."""
    msg = message_from_bytes(raw, policy=compat32)
    out = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        out.append((part.get_content_type(), payload.replace(b"\r\n", b"\n")))
    return out


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_client_and_language_reads_the_same_in_seven_bits(client: str, lang: str) -> None:
    raw = crlf(compose(client, sender="Rëporter <r@example.com>", to="conduct@example.org",
                       subject="Report", text=TEXT[lang], lang=lang, encoding="8bit"))
    assert not raw.isascii()
    out = seven_bit(raw)
    assert out.isascii()
    assert leaves(out) == leaves(raw)
    body = message_from_bytes(out, policy=default).get_body(("plain", "html"))
    assert body is not None and TEXT[lang].split()[0] in body.get_content()


def forwarded(inner: bytes) -> bytes:
    return crlf(b"From: conduct@example.org\nMIME-Version: 1.0\n"
                b'Content-Type: multipart/mixed; boundary="b1"\nContent-Transfer-Encoding: 8bit\n'
                b"\n--b1\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit"
                + "\n\nReport from Rëporter:\n".encode()
                + b"\n--b1\nContent-Type: message/rfc822\nContent-Disposition: attachment; "
                b'filename="original.eml"\nContent-Transfer-Encoding: 8bit\n\n'
                + crlf(inner) + b"\n--b1--\n")


def test_a_nested_message_is_downgraded_part_by_part() -> None:
    inner = (b"From: r@example.com\nSubject: =?utf-8?q?caf=C3=A9?=\nMIME-Version: 1.0\n"
             b'Content-Type: multipart/alternative; boundary="b2"\n\n--b2\n'
             b"Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\n"
             ) + "Grüße ".encode("latin-1") + b"x" * 200 + (
             "\n.dot line\nFrom me\n--b2\nContent-Type: text/html; charset=utf-8\n"
             "Content-Transfer-Encoding: 8bit\n\n<p>Grüße</p>\n--b2--\n").encode()
    raw = forwarded(inner)
    out = seven_bit(raw)
    assert out.isascii() and leaves(out) == leaves(raw)
    msg = message_from_bytes(out, policy=compat32)
    for part in msg.walk():  # every part says what it now is
        cte = str(part.get("Content-Transfer-Encoding", "7bit")).lower()
        assert cte in ("7bit", "quoted-printable", "base64"), part.get_content_type()
    assert all(len(line) <= 78 for line in out.split(b"\r\n"))


def test_a_nested_message_with_eight_bit_headers_travels_whole_in_base64() -> None:
    """Its header block cannot become 7-bit unchanged: message/global in base64 (RFC 6532
    3.5) decodes back to the exact bytes."""
    inner = crlf("From: Jörg <r@example.com>\nSubject: Grüße\n\nHallo Jörg\n".encode())
    out = seven_bit(forwarded(inner))
    assert out.isascii()
    _head, _, rest = out.partition(b"Content-Type: message/global\r\n")
    assert rest, out.decode()
    body = rest.split(b"\r\n\r\n", 1)[1].split(b"\r\n--b1--")[0]
    assert b"Content-Transfer-Encoding: base64" in rest.split(b"\r\n\r\n", 1)[0]
    assert base64.b64decode(body) == inner


def test_ascii_messages_are_left_alone() -> None:
    raw = crlf(b"From: a@example.org\nSubject: x\n\nplain\n")
    assert seven_bit(raw) is raw


def test_eight_bit_bytes_under_a_7bit_label_are_reencoded_too() -> None:
    raw = crlf("Content-Type: text/plain; charset=utf-8\n\nnaïve\n".encode())
    out = seven_bit(raw)
    assert out.isascii()
    part: Message = message_from_bytes(out, policy=compat32)
    assert part.get_payload(decode=True) == "naïve\r\n".encode()
