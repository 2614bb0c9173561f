"""An accepted message, parsed just enough to route it: bounded, tolerant header decoding."""

from __future__ import annotations

from email import message_from_bytes, message_from_string
from email.header import decode_header, make_header
from email.message import Message
from email.policy import compat32
from email.utils import parseaddr

from .compose import one_line
from .spool import Envelope

MAX_HEADER_VALUE = 8192  # decoding is cut here: no header may stall the processor
MAX_REFERENCES = 20
AUTO_HEADERS = (
    "list-id",
    "list-unsubscribe",
    "x-autoreply",
    "x-autorespond",
    "x-auto-response-suppress",
)


def header_block(content: bytes) -> bytes:
    """The header section of a raw message (up to the first empty line)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = content.find(sep)
        if end != -1:
            return content[: end + len(sep)]
    return content


def decode(raw: str) -> str:
    """RFC 2047 words decoded, on at most MAX_HEADER_VALUE characters; raw text on error."""
    raw = raw[:MAX_HEADER_VALUE]
    try:
        return str(make_header(decode_header(raw)))
    except Exception:  # noqa: BLE001 - malformed encoded words: keep what was sent
        return raw


class Incoming:
    """One accepted message with its routing facts: sender, subject, ids, auto-reply marks."""

    def __init__(self, envelope: Envelope, content: bytes) -> None:
        self.envelope = envelope
        self.content = content
        head = header_block(content).decode("utf-8", "replace")
        self.headers: Message = message_from_string(head, policy=compat32)
        name, address = parseaddr(self.raw("From"))
        self.from_name = one_line(decode(name), 200)
        self.from_address = address.strip().lower() if "@" in address else ""
        self.subject = one_line(decode(self.raw("Subject")), 200)
        self.message_id = one_line(self.raw("Message-ID"), 250)

    def raw(self, name: str) -> str:
        """A header's raw value (folding undone), cut to MAX_HEADER_VALUE characters."""
        value = self.headers.get(name, "")
        return str(value)[:MAX_HEADER_VALUE].replace("\r\n", "").replace("\n", "")

    @property
    def sender(self) -> str:
        """Who a reply goes to: the From address, else the envelope sender."""
        return self.from_address or self.envelope.mail_from.lower()

    def referenced_ids(self) -> list[str]:
        """The last Message-IDs named by In-Reply-To and References (bounded)."""
        ids: list[str] = []
        for header in ("In-Reply-To", "References"):
            for value in self.headers.get_all(header, []):
                text = str(value)[-MAX_HEADER_VALUE:]
                ids += [f"<{p.strip('<> ')}>" for p in text.split() if "@" in p]
        return [i for i in ids if len(i) <= 250][-MAX_REFERENCES:]

    def is_automatic(self) -> bool:
        """Auto-replies, bounces and list mail never get an acknowledgment."""
        if not self.envelope.mail_from:
            return True
        auto = self.raw("Auto-Submitted").strip().lower() or "no"
        if not auto.startswith("no"):
            return True
        if self.raw("Precedence").strip().lower() in ("bulk", "list", "junk"):
            return True
        present = {k.lower() for k in self.headers}
        return any(h in present for h in AUTO_HEADERS)

    def cleaned_subject(self, code_name: str) -> str:
        tag = f"[{code_name}]"
        subject = self.subject.replace(tag, "").strip() or "(no subject)"
        return f"{tag} {subject}"

    def parsed(self) -> Message:
        """The whole message (compat32: tolerant of broken MIME)."""
        return message_from_bytes(self.content, policy=compat32)
