"""Building outbound messages: forwarded copies with the original attached, and Jinja mail."""

from __future__ import annotations

import quopri
import re
import secrets
from dataclasses import dataclass
from email.header import Header
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import SMTP, SMTPUTF8, compat32
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import Any

from jinja2 import (
    ChoiceLoader,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    TemplateError,
)
from jinja2.sandbox import SandboxedEnvironment

from coc_mail.errors import TemplateProblem
from coc_mail.mail import readable
from coc_mail.store import utcnow

TEMPLATE_SUFFIX = ".txt.j2"


def one_line(text: str, limit: int = 200) -> str:
    """A header-safe single line: no CR/LF or controls (no header injection), bounded length."""
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()[:limit]


def new_message_id(domain: str) -> str:
    return f"<{secrets.token_hex(12)}@{domain}>"


@dataclass(frozen=True)
class Ids:
    """Where one message of ours stands in a conversation: its own Message-ID, the message
    it answers (``In-Reply-To``) and the thread it belongs to (``References``)."""

    message_id: str
    in_reply_to: str | None = None
    references: str | None = None
    answer: bool = False  # an automatic answer to ``in_reply_to`` (RFC 3834 auto-replied)


def crlf(data: bytes) -> bytes:
    """Normalise line endings to CRLF (the wire form DKIM signs); data that is CRLF already,
    as mail received over SMTP is, comes back as it is, not copied."""
    pairs = data.count(b"\r\n")
    if data.count(b"\n") == pairs and data.count(b"\r") == pairs:
        return data
    # CRLF, then a lone CR, made LF, then every LF CRLF: three passes in C (a regex
    # substitution called back into Python for each line ending, 0.2 ms a 10 KB report).
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


@dataclass(frozen=True)
class Rendered:
    """A rendered template: its subject line and body."""

    subject: str
    body: str


class Templates:
    """Jinja in a sandbox with strict undefined variables; files in ``override`` win."""

    def __init__(self, override: str | None = None) -> None:
        loaders: list[Any] = []
        if override:
            loaders.append(FileSystemLoader(override))
        loaders.append(PackageLoader("coc_mail", "templates"))
        self.env = SandboxedEnvironment(
            loader=ChoiceLoader(loaders),
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.override = override

    def names(self) -> list[str]:
        found = {
            n.removesuffix(TEMPLATE_SUFFIX)
            for n in self.env.list_templates()
            if n.endswith(TEMPLATE_SUFFIX)
        }
        return sorted(found)

    def render(self, name: str, **context: Any) -> Rendered:
        """Render ``<name>.txt.j2``. A first line ``Subject: ...`` becomes the subject."""
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
            raise TemplateProblem(f"{name!r} is not a template name")
        try:
            text = self.env.get_template(name + TEMPLATE_SUFFIX).render(**context)
        except TemplateError as exc:
            raise TemplateProblem(f"template {name}: {exc}") from None
        subject = ""
        first, _, rest = text.partition("\n")
        if first.lower().startswith("subject:"):
            subject = one_line(first.split(":", 1)[1])
            text = rest.lstrip("\n")
        return Rendered(subject, text)

    def check(self, **sample: Any) -> list[str]:
        """Render every template with ``sample`` variables (all the variables any template
        gets); return the problems found: syntax errors and misspelt variables alike."""
        problems = []
        for name in self.env.list_templates():
            if name.endswith(TEMPLATE_SUFFIX):
                try:
                    self.env.get_template(name).render(**sample)
                except TemplateError as exc:
                    where = self.override if self.override and Path(
                        self.override, name).exists() else "coc_mail/templates"
                    problems.append(f"template {where}/{name}: {type(exc).__name__}: {exc}")
        return problems


def _ascii_or_encoded(value: str, name: str) -> str:
    """An unstructured header value: as is when ASCII, else RFC 2047 words of at most 75
    characters, folded so that no line of the field ``name`` is longer than 76."""
    if value.isascii():
        return value
    return Header(value, "utf-8", maxlinelen=76, header_name=name).encode(linesep="\r\n")


def mailbox(name: str, address: str, field: str = "From") -> str:
    """``Name <address>`` for the header ``field``: an ASCII name quoted as needed, any other
    in RFC 2047 words of at most 75 characters, folded (a long name in Cyrillic or CJK would
    otherwise be one word of hundreds, which filters score and some clients show raw)."""
    if name.isascii():
        return formataddr((name, address))
    return f"{_ascii_or_encoded(name, field)} <{address}>"


def header_bytes(pairs: list[tuple[str, str]]) -> bytes:
    """Header lines written directly (the email package's header parsing is the slowest part
    of building a copy); values here are ours, single-line and already safe."""
    out = []
    for name, value in pairs:
        out.append(f"{name}: {value}\r\n".encode())
    return b"".join(out)


def base_header_pairs(
    *,
    from_name: str,
    from_addr: str,
    to: str,
    reply_to: str | None,
    subject: str,
    ids: Ids,
    loop: str,
) -> list[tuple[str, str]]:
    """The headers every message of ours carries, as (name, value) pairs written directly."""
    pairs = [
        ("From", mailbox(one_line(from_name, 120), from_addr)),
        ("To", to),
    ]
    if reply_to:
        pairs.append(("Reply-To", reply_to))
    pairs += [
        ("Subject", _ascii_or_encoded(one_line(subject, 250), "Subject")),
        ("Date", format_datetime(utcnow())),
        ("Message-ID", ids.message_id),
    ]
    if ids.in_reply_to:
        pairs.append(("In-Reply-To", one_line(ids.in_reply_to, 900)))
    if ids.references:
        pairs.append(("References", one_line(ids.references, 900)))
    # RFC 3834: an answer to a message is auto-replied; anything else we send, generated
    pairs += [("Auto-Submitted", "auto-replied" if ids.answer else "auto-generated"),
              ("X-Loop", loop)]
    return pairs


def text_message(
    *,
    from_name: str,
    from_addr: str,
    to: str,
    reply_to: str | None,
    subject: str,
    body: str,
    ids: Ids,
    loop: str,
) -> bytes:
    """A plain-text message (UTF-8) as CRLF bytes, ready to sign."""
    pairs = base_header_pairs(
        from_name=from_name,
        from_addr=from_addr,
        to=to,
        reply_to=reply_to,
        subject=subject,
        ids=ids,
        loop=loop,
    )
    part = EmailMessage(policy=SMTPUTF8)
    part.set_content(body)  # Content-Type, Content-Transfer-Encoding, MIME-Version, body
    return header_bytes(pairs) + crlf(part.as_bytes(policy=SMTP))


# What 7bit text may not hold (RFC 2045 2.7): controls but tab, CR and LF; 8-bit bytes.
_NOT_7BIT = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0x100)])


def _text_body(text: str) -> bytes:
    """A text part's encoding field, blank line and body: as it is (7bit) when it is ASCII
    text in lines of at most 998 octets, as most clients send it; quoted-printable
    otherwise. Encoding a 10 KB report that needs none took a tenth of its processing."""
    data = crlf(text.encode("utf-8"))
    if len(data.translate(None, _NOT_7BIT)) == len(data) \
            and max(map(len, data.split(b"\r\n"))) <= 998:
        return b"Content-Transfer-Encoding: 7bit\r\n\r\n" + data
    return (b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
            + crlf(quopri.encodestring(data)))


@dataclass(frozen=True)
class ForwardBody:
    """The body of a forwarded copy (a text part and the original attached byte for byte),
    built once and shared by every member's copy of the same message. It is kept as its
    parts, the original among them, so a big report is not copied to build it."""

    boundary: str
    parts: tuple[bytes, ...]
    eight_bit: bool = False  # the original holds 8-bit bytes: the parent must say so too

    @classmethod
    def build(cls, intro: str, original: bytes) -> ForwardBody:
        """The intro, then what a client shows of ``original`` (its text part, or its HTML
        made plain), in the first text part, so every client shows the report where the
        mail is opened; the original attached after it, byte for byte."""
        shown = readable.shown(original).strip("\n")
        if shown:
            rule = "-" * 20
            intro = f"{intro.rstrip()}\n\n{rule} the message {rule}\n\n{shown}\n"
        original = crlf(original)
        boundary = "coc-" + secrets.token_hex(12)
        while boundary.encode() in original:
            boundary = "coc-" + secrets.token_hex(12)
        eight_bit = not original.isascii()
        part_head = (
            b"Content-Type: message/rfc822\r\n"
            b'Content-Disposition: attachment; filename="original.eml"\r\n'
            + (b"Content-Transfer-Encoding: 8bit\r\n" if eight_bit else b"")
            + b"\r\n"
        )
        text_bytes = b"Content-Type: text/plain; charset=utf-8\r\n" + _text_body(intro)
        b = boundary.encode()
        head = b"".join((
            b"This is a MIME message: the original report is attached.\r\n--", b, b"\r\n",
            text_bytes, b"\r\n--", b, b"\r\n", part_head,
        ))
        tail = (b"" if original.endswith(b"\r\n") else b"\r\n") + b"--" + b + b"--\r\n"
        return cls(boundary, (head, original, tail), eight_bit)


def forward_head(
    *,
    from_name: str,
    from_addr: str,
    to: str,
    reply_to: str,
    subject: str,
    body: ForwardBody,
    ids: Ids,
    loop: str,
    auth_results: str | None,
) -> bytes:
    """The header block (blank line included) of one member's copy of a forwarded message;
    ``body.parts`` follow it, shared by every member's copy."""
    pairs = [("Authentication-Results", one_line(auth_results, 900))] if auth_results else []
    pairs += base_header_pairs(
        from_name=from_name,
        from_addr=from_addr,
        to=to,
        reply_to=reply_to,
        subject=subject,
        ids=ids,
        loop=loop,
    )
    pairs += [
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/mixed; boundary="{body.boundary}"'),
    ]
    if body.eight_bit:  # RFC 2045 6.4: a multipart's encoding covers what it holds
        pairs.append(("Content-Transfer-Encoding", "8bit"))
    return header_bytes(pairs) + b"\r\n"


MIME_HEADERS = ("content-type", "content-transfer-encoding", "mime-version")
_FIELD_NAMES = {"content-type": "Content-Type", "content-transfer-encoding":
                "Content-Transfer-Encoding", "mime-version": "MIME-Version"}


def relay_message(
    *,
    original: bytes,
    from_name: str,
    from_addr: str,
    to: str,
    reply_to: str,
    subject: str,
    ids: Ids,
    loop: str,
) -> bytes:
    """A member's post as relayed to another member: our headers, the post's MIME body as is.

    Every header of the original except its MIME structure is dropped, so nothing of the
    author's address or path travels with the post. The post is read as every privacy check
    reads it (the ``email`` package's parser): where its header ends (a line that is no
    field, such as ``Content-Type :``, ends it there, and the rest is body), which field
    lines count (a folded line at the very top does not), and the first of each MIME field.
    Only those fields go, rewritten as ``Name: value``: a line the checks did not read as a
    field must not become one on the way (a hidden ``charset=utf-7`` would show another
    text than the one they checked).
    """
    original = crlf(original)
    end = original.find(b"\r\n\r\n")
    head, rest = (original, b"") if end == -1 else (original[:end + 4], original[end + 4:])
    parsed = BytesHeaderParser(policy=compat32).parsebytes(head)
    kept: dict[str, bytes] = {}
    for name, value in parsed.raw_items():  # as in the source (compat32: the bytes kept)
        key = name.lower()
        if key in MIME_HEADERS and key not in kept:
            kept[key] = f"{_FIELD_NAMES[key]}: {value}".encode("ascii", "surrogateescape")
    # the head's last lines that the parser read as body, if any (counted, not re-encoded:
    # get_payload() replaces 8-bit bytes); line ends are all CRLF here
    payload = parsed.get_payload()
    body = rest
    if isinstance(payload, str) and payload:
        body = b"\r\n".join(head.split(b"\r\n")[-len(payload.split("\r\n")):]) + rest
    pairs = base_header_pairs(
        from_name=from_name,
        from_addr=from_addr,
        to=to,
        reply_to=reply_to,
        subject=subject,
        ids=ids,
        loop=loop,
    )
    kept.setdefault("content-type", b"Content-Type: text/plain; charset=utf-8")
    kept.setdefault("mime-version", b"MIME-Version: 1.0")
    return header_bytes(pairs) + b"\r\n".join(kept.values()) + b"\r\n\r\n" + body
