"""DKIM signing without dkimpy's per-message objects signs byte for byte what dkimpy signs,
and what it signs verifies (dkimpy's verifier, the public key from a TXT record)."""

from __future__ import annotations

import base64
import collections
import hashlib
from collections.abc import Callable
from functools import cache

import dkim
import dkim.crypto
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from coc_mail.mail import dkim as our_dkim

NAMES = ["From", "To", "Subject", "Date", "Message-ID", "Reply-To", "MIME-Version",
         "Content-Type", "X-Loop", "Auto-Submitted", "References", "In-Reply-To",
         "Received", "X-Other", "subject", "FROM"]
WORDS = st.text(alphabet="abcXYZ09 \t<>@.;:=\"()-_,", min_size=0, max_size=30).map(
    lambda t: t.encode())


@cache
def signer() -> our_dkim.Signer:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    return our_dkim.Signer(pem, "coc", "example.org")


def dkimpys(s: our_dkim.Signer, head: bytes, bh: bytes, now: int) -> bytes:
    """What dkimpy's own signer makes of the same header block (all of it dkimpy's)."""
    d = dkim.DKIM(head, linesep=b"\r\n")
    counts = collections.Counter(name.lower().rstrip() for name, _ in d.headers)
    include = [h for h in our_dkim.SIGNED_HEADERS for _ in range(counts[h])] \
        + our_dkim.SIGNED_HEADERS
    d.hasher = hashlib.sha256
    key = dkim.crypto.parse_pem_private_key(s.pem)
    value: bytes = d.gen_header(s.tags(include, bh, now), include, our_dkim.RELAXED,
                                b"DKIM-Signature", key)
    return b"DKIM-Signature: " + value


@st.composite
def header_blocks(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(min_value=1, max_value=12))):
        name = draw(st.sampled_from(NAMES)).encode()
        value = draw(WORDS)
        for _ in range(draw(st.integers(min_value=0, max_value=2))):  # folded lines
            value += b"\r\n" + draw(st.sampled_from([b" ", b"\t", b"  "])) + draw(WORDS)
        lines.append(name + b":" + draw(st.sampled_from([b"", b" ", b"\t"])) + value)
    return b"\r\n".join(lines) + b"\r\n\r\n"


@settings(max_examples=200, deadline=None)
@given(head=header_blocks(), now=st.integers(min_value=0, max_value=2**33))
def test_the_signature_is_dkimpys_byte_for_byte(head: bytes, now: int) -> None:
    s = signer()
    bh = our_dkim.body_hash(b"Hello.\r\n")
    assert s.signature(head, bh, now) == dkimpys(s, head, bh, now)
    assert s.signature(head, bh, now) == dkimpys(s, head, bh, now)  # its parts remembered
    other = head.replace(b":", b": x", 1)  # another copy: the same fields, another value
    assert s.signature(other, bh, now) == dkimpys(s, other, bh, now)


def dns_of(s: our_dkim.Signer) -> Callable[..., bytes]:
    """A resolver serving ``s``'s TXT record under its selector, and nothing else."""
    record = our_dkim.txt_record_value(s.pem).encode()

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"coc._domainkey.example.org."
        return record

    return dns


COPY = (b"From: Committee <conduct@example.org>\r\nTo: Ada <ada@example.net>\r\n"
        b"Subject: [home shelf] A new report, with a subject long enough to be folded"
        b"\r\n over two lines\r\nReply-To: conduct+c.abc@example.org\r\n"
        b"Message-ID: <x@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
        b"\r\nThe report.\r\n")


def test_a_signed_copy_verifies() -> None:
    s = signer()
    signed, dns = s.sign(COPY), dns_of(s)
    assert dkim.verify(signed, dnsfunc=dns)
    tampered = signed.replace(b"conduct+c.abc@", b"conduct+c.abd@")
    assert not dkim.verify(tampered, dnsfunc=dns)
    b = signed.split(b"b=")[-1].split(b"\r\n\r\n")[0]
    assert len(base64.b64decode(b"".join(b.split()))) == 256  # RSA-2048


def test_a_field_added_to_a_signed_copy_breaks_its_signature() -> None:
    """A member re-sending their signed copy with a Reply-To of their own (above ours, where
    clients look first, or below it), a second From or Subject, or a Cc or References that
    were not there, no longer passes as the committee's (over-signing, RFC 6376 8.15)."""
    s = signer()
    signed, dns = s.sign(COPY), dns_of(s)
    assert dkim.verify(signed, dnsfunc=dns)
    head, _, body = signed.partition(b"\r\n\r\n")
    for added in (b"Reply-To: mallory@evil.example", b"From: Committee <conduct@example.org>",
                  b"Subject: Please reply to mallory", b"Cc: mallory@evil.example",
                  b"References: <y@example.org>", b"Content-Transfer-Encoding: base64"):
        above = added + b"\r\n" + signed
        below = head + b"\r\n" + added + b"\r\n\r\n" + body
        assert not dkim.verify(above, dnsfunc=dns), added
        assert not dkim.verify(below, dnsfunc=dns), added


def test_a_relayed_post_keeps_one_of_each_mime_field_and_its_signature_holds() -> None:
    """A member's post relayed to the others keeps one of each MIME field, as the parser
    reads the post (``Content-Type :``, which one verifier reads as a field and another
    refuses, ends its head); what is signed verifies, and a Content-Type added to it breaks
    it, as does a field a client would act on (Sender, Mail-Followup-To, List-Post)."""
    from coc_mail.mail import compose

    post = (b"From: Ada <ada@example.net>\r\nContent-Type : text/plain; charset=utf-8\r\n"
            b"Content-Type: text/html\r\nMIME-Version: 1.0\r\n\r\nhello <b>there</b>\r\n")
    relayed = compose.relay_message(
        original=post, from_name="Committee", from_addr="conduct@example.org",
        to="grace@example.net", reply_to="conduct+home-shelf.abc@example.org",
        subject="[home shelf] post", ids=compose.Ids(message_id="<m@example.org>"),
        loop="conduct@example.org")
    head = relayed.split(b"\r\n\r\n")[0]
    assert head.count(b"Content-Type") == 1 and b"Content-Type: text/plain;" in head
    s = signer()
    signed, dns = s.sign(relayed), dns_of(s)
    assert dkim.verify(signed, dnsfunc=dns)
    for added in (b"Content-Type: text/html", b"Sender: mallory@evil.example",
                  b"Mail-Followup-To: mallory@evil.example",
                  b"List-Post: <mailto:mallory@evil.example>",
                  b"Authentication-Results: mx.example.org; dkim=pass"):
        assert not dkim.verify(added + b"\r\n" + signed, dnsfunc=dns), added
