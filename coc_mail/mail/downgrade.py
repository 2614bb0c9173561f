"""The 8BITMIME downgrade: a message's 8-bit parts re-encoded to 7 bits for a relay that does
not offer 8BITMIME (RFC 6152 section 3), as Postfix's smtp(8) does.

What a person reads stays the same: every 8-bit leaf part is re-encoded, its bytes
untouched (quoted-printable for text, base64 for anything else, the charset kept), nested
messages are downgraded part by part, multipart parents and nested messages say ``7bit``.
A nested message whose own header block holds 8-bit bytes (an original sent with SMTPUTF8
or by a careless client) cannot be made 7-bit without changing it, so it travels whole as
``message/global`` in base64 (RFC 6532 section 3.5) and decodes back to its exact bytes.

Our own header fields are ASCII (encoded words); a top-level header block that is not
stays as it is, as Postfix leaves it. The result is signed after the downgrade: the
signature made over the 8-bit form would not verify over this one.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from email import message_from_bytes
from email.generator import BytesGenerator
from email.message import Message
from email.policy import compat32
from io import BytesIO

_EIGHT = ("8bit", "binary")


def needs_downgrade(parts: Sequence[bytes]) -> bool:
    """Whether a message given in parts holds any byte above 127."""
    return not all(p.isascii() for p in parts)


def seven_bit(message: bytes) -> bytes:
    """``message`` (CRLF lines) with every 8-bit part re-encoded to 7 bits (CRLF lines)."""
    if message.isascii():
        return message
    msg = message_from_bytes(message, policy=compat32)
    _downgrade(msg)
    out = BytesIO()
    BytesGenerator(out, mangle_from_=False, maxheaderlen=0).flatten(msg, linesep="\r\n")
    return out.getvalue()


def _set_cte(part: Message, cte: str) -> None:
    del part["Content-Transfer-Encoding"]
    part["Content-Transfer-Encoding"] = cte


def _raw(part: Message) -> bytes:
    """A 7bit, 8bit or binary leaf's body as it was sent: for these the stdlib's "decoded"
    payload is the bytes themselves (compat32 keeps them as surrogates until asked)."""
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


def _head_is_ascii(part: Message) -> bool:
    return all(k.isascii() and v.isascii() for k, v in part.raw_items())  # 8-bit: surrogates


def _as_global(part: Message, nested: Message) -> None:
    """A nested message that cannot be made 7-bit: its exact bytes in base64."""
    out = BytesIO()
    BytesGenerator(out, mangle_from_=False, maxheaderlen=0).flatten(nested, linesep="\r\n")
    part.set_payload(binascii.b2a_base64(out.getvalue(), newline=False).decode("ascii"))
    _wrap76(part)
    if part.get("Content-Type") is None:
        part["Content-Type"] = "message/global"
    else:
        part.replace_header("Content-Type", "message/global")
    _set_cte(part, "base64")


def _wrap76(part: Message) -> None:
    text = part.get_payload()
    assert isinstance(text, str)
    part.set_payload("\r\n".join(text[i:i + 76] for i in range(0, len(text), 76)) + "\r\n")


def _downgrade(part: Message) -> None:
    cte = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    if part.is_multipart():
        payload = part.get_payload()
        assert isinstance(payload, list)
        if part.get_content_type() == "message/rfc822" or part.get_content_maintype() == "message":
            nested = payload[0] if payload else None
            if isinstance(nested, Message) and not _head_is_ascii(nested):
                _as_global(part, nested)
                return
        for child in payload:
            if isinstance(child, Message):
                _downgrade(child)
        if cte in _EIGHT:
            _set_cte(part, "7bit")
        return
    if cte not in _EIGHT:
        # A body that says 7bit (or nothing) yet holds 8-bit bytes is re-encoded as well.
        raw = _raw(part)
        if raw.isascii() or cte in ("quoted-printable", "base64"):
            return
    else:
        raw = _raw(part)
        if raw.isascii():
            _set_cte(part, "7bit")
            return
    if part.get_content_maintype() == "text":
        encoded = binascii.b2a_qp(raw, istext=True, header=False)
        # b2a_qp keeps the line breaks it finds; make them CRLF for the wire
        lines = encoded.replace(b"\r\n", b"\n").split(b"\n")
        part.set_payload(b"\r\n".join(lines).decode("ascii"))
        _set_cte(part, "quoted-printable")
    else:
        part.set_payload(binascii.b2a_base64(raw, newline=False).decode("ascii"))
        _wrap76(part)
        _set_cte(part, "base64")
