"""DKIM: key generation with its DNS record, signing outbound copies, verifying inbound mail."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim as dkimpy
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy

from coc_mail.errors import CocMailError

# Every field of these names is signed, and each name listed once more than it appears
# (RFC 6376 5.4.2, 8.15: a listing with no instance left signs the absence): nobody on the
# way, nor a member re-sending their copy, can add a field of these names (above ours,
# where most clients look first, or below) and keep the signature. Beside the fields we
# write, the names clients act on when they show a message or answer it: who it is from
# (Sender, Resent-*), where a reply, a list reply or a receipt goes, an unsubscribe button,
# an attachment's presentation, and our own Authentication-Results.
SIGNED_HEADERS = [
    b"from",
    b"sender",
    b"to",
    b"cc",
    b"bcc",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"mail-reply-to",
    b"mail-followup-to",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
    b"content-disposition",
    b"auto-submitted",
    b"x-loop",
    b"authentication-results",
    b"disposition-notification-to",
    b"return-receipt-to",
    b"errors-to",
    b"list-id",
    b"list-post",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"resent-from",
    b"resent-sender",
    b"resent-reply-to",
    b"resent-to",
    b"resent-cc",
    b"resent-date",
    b"resent-message-id",
]


def signed_names(counts: dict[bytes, int]) -> list[bytes]:
    """The ``h=`` list for a header block holding ``counts`` fields of each (lowercase)
    name: every instance of a name of :data:`SIGNED_HEADERS`, then each name once more."""
    return [h for h in SIGNED_HEADERS for _ in range(counts.get(h, 0))] + SIGNED_HEADERS


def generate_key(path: Path, bits: int = 2048) -> bytes:
    """Write a new RSA private key (PEM, mode 0600) to ``path``; refuse to overwrite."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    return pem


def txt_record_value(pem: bytes) -> str:
    """The value of the ``<selector>._domainkey.<domain>`` TXT record for this private key."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CocMailError("the DKIM key is not an RSA key")
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def txt_record(pem: bytes, selector: str, domain: str) -> str:
    """The whole DNS record, as a zone-file line."""
    value = txt_record_value(pem)
    chunks = " ".join(f'"{value[i : i + 250]}"' for i in range(0, len(value), 250))
    return f"{selector}._domainkey.{domain}. IN TXT ( {chunks} )"


def load_key(path: Path) -> bytes:
    """Read a PEM private key and check it parses."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise CocMailError(
            f"dkim.private_key {path}: {exc.strerror}; create it with `coc-mail dkim keygen`"
        ) from None
    try:
        txt_record_value(pem)
    except (ValueError, TypeError) as exc:
        raise CocMailError(f"dkim.private_key {path}: not a PEM RSA key ({exc})") from None
    return pem


RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
CHUNK = 1 << 20


def _relaxed_lines(text: bytes) -> bytes:
    """dkimpy's relaxed canonicalisation of whole lines (trailing blanks stripped, runs of
    blanks made one space). Text where neither can apply (no tab, no two spaces in a row, no
    space before a CRLF) is its own canonical form: three substring searches instead of two
    regex passes that replace every single space with a space (0.4 ms for a 10 KB body)."""
    if b"\t" not in text and b"  " not in text and b" \r\n" not in text:
        return text
    # The same result as dkimpy's two regex passes, by bytes.replace in C: tabs become
    # spaces, runs of spaces are halved until none is left, then the one space a line can
    # still end with goes.
    text = text.replace(b"\t", b" ")
    while b"  " in text:
        text = text.replace(b"  ", b" ")
    return text.replace(b" \r\n", b"\r\n")


def body_hash(body: bytes) -> bytes:
    """The ``bh=`` value of ``body`` (CRLF lines) under relaxed canonicalisation.

    dkimpy's own canonicalisation functions do the work, a megabyte of whole lines at a time,
    so a 25 MiB report is never copied whole. Relaxed body canonicalisation is line by line
    except at the end, where every trailing empty line goes and one CRLF ends the body (an
    empty body hashes as nothing): trailing CRLFs are held back until more text follows.
    """
    h = hashlib.sha256()
    held = 0  # CRLFs seen at the end of the text so far, not hashed yet
    text = False
    pos, size = 0, len(body)
    while pos < size:
        cut = body.find(b"\r\n", min(pos + CHUNK, size))
        end = size if cut == -1 else cut + 2
        chunk = _relaxed_lines(body[pos:end])
        pos = end
        stripped = len(chunk)
        while stripped >= 2 and chunk[stripped - 2:stripped] == b"\r\n":
            stripped -= 2
        if stripped == 0:
            held += len(chunk) // 2
            continue
        if held:
            h.update(b"\r\n" * held)
        h.update(chunk[:stripped])
        held = (len(chunk) - stripped) // 2
        text = True
    if text:
        h.update(b"\r\n")
    return base64.b64encode(h.digest())


def unsigned(message: bytes) -> bytes:
    """``message`` without the DKIM-Signature field(s) that start it (ours, prepended)."""
    while message[:15].lower() == b"dkim-signature:":
        end = message.find(b"\r\n")
        while end != -1 and message[end + 2:end + 3] in (b" ", b"\t"):  # folded lines
            end = message.find(b"\r\n", end + 2)
        if end == -1:
            return message
        message = message[end + 2:]
    return message


_FIELD_NAME = bytes(range(0x21, 0x7F))  # what a field name is made of (RFC 5322 2.2)


def _header_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """The fields of a header block as dkimpy's ``rfc822_parse`` reads them: (name, value),
    the value with its folded lines and line ends (an unparseable line is skipped: our own
    headers have none)."""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.replace(b"\r\n", b"\n").split(b"\n"):
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if fields:
                name, value = fields[-1]
                fields[-1] = (name, value + line + b"\r\n")
            continue
        name, colon, value = line.partition(b":")
        if colon and name and not name.translate(None, _FIELD_NAME):
            fields.append((name, value + b"\r\n"))
    return fields


def _relaxed_value(value: bytes) -> bytes:
    """A header value under relaxed canonicalisation, as dkimpy makes it: unfolded, runs of
    blanks made one space, stripped."""
    value = value.replace(b"\r\n", b"").replace(b"\n", b"").replace(b"\t", b" ")
    while b"  " in value:
        value = value.replace(b"  ", b" ")
    return value.strip()


class Signer:
    """Signs outbound messages for the committee domain (relaxed/relaxed, rsa-sha256).

    The signature is dkimpy's, made without dkimpy's per-message objects: the header block
    is ours (built a moment before), so it is split, the signed fields canonicalised and
    hashed here, with dkimpy's own folding and ``b=`` rule for the signature field, and the
    RSA step in OpenSSL. Byte for byte what dkimpy signs (tests/mail/test_dkim_sign.py
    compares both on generated headers), at a fraction of its cost per copy. Copies that
    share a body (a report forwarded to every member) share its body hash.
    """

    def __init__(self, pem: bytes, selector: str, domain: str) -> None:
        self.pem = pem
        self.selector = selector.encode()
        self.domain = domain.encode()
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise CocMailError("dkim.private_key: not an RSA key")
        self._rsa = key
        # (names and counts, bh, t) -> the signature's parts that copies of a report share
        self._prepared: dict[tuple[tuple[tuple[bytes, int], ...], bytes, int],
                             tuple[list[bytes], bytes, bytes]] = {}

    def sign(self, message: bytes) -> bytes:
        """Return ``message`` (CRLF) with a DKIM-Signature header prepended."""
        end = message.find(b"\r\n\r\n")
        head, body = (message, b"") if end == -1 else (message[:end + 4], message[end + 4:])
        return self.signature(head, body_hash(body)) + message

    def tags(self, include: Sequence[bytes], bh: bytes, now: int) -> list[tuple[bytes, bytes]]:
        """The signature's tags, ``b=`` holding dkimpy's placeholder (it folds onto a line of
        its own, so the lines before it fold alike with and without the signature)."""
        return [
            (b"v", b"1"),
            (b"a", b"rsa-sha256"),
            (b"c", RELAXED.to_c_value()),
            (b"d", self.domain),
            (b"i", b"@" + self.domain),
            (b"q", b"dns/txt"),
            (b"s", self.selector),
            (b"t", str(now).encode("ascii")),
            (b"h", b" : ".join(include)),
            (b"bh", bh),
            (b"b", b"0" * 60),
        ]

    def signature(self, head: bytes, bh: bytes, now: int | None = None) -> bytes:
        """The ``DKIM-Signature`` header line(s) for a message with header block ``head`` and
        a body whose :func:`body_hash` is ``bh`` (``now``: the ``t=`` value; the clock's)."""
        instances: dict[bytes, list[bytes]] = {}  # each name's values, top to bottom
        for name, raw in _header_fields(head):
            instances.setdefault(name.lower().rstrip(), []).append(
                _relaxed_value(raw) + b"\r\n")
        counts = tuple((name, len(found)) for name, found in instances.items())
        now = int(time.time()) if now is None else now
        key = (counts, bh, now)
        prepared = self._prepared.get(key)
        if prepared is None:
            if len(self._prepared) >= 16:
                self._prepared.clear()
            prepared = self._prepared[key] = self._prepare(dict(counts), bh, now)
        include, before_b, relaxed_self = prepared
        h = hashlib.sha256()
        for name in include:  # each listing takes the next instance up from the bottom;
            found = instances.get(name)  # one with none left signs the absence
            if found:
                h.update(name + b":" + found.pop())
        h.update(relaxed_self)
        signed = self._rsa.sign(h.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        b = b"b=" + base64.b64encode(signed) + b"\r\n"
        if before_b:  # the b= line onwards folds as it would at the end of the whole field
            tail: bytes = dkimpy.fold(b, namelen=1, linesep=b"\r\n")
            return b"DKIM-Signature: " + before_b + tail
        tags = self.tags(include, bh, now)
        value: bytes = dkimpy.fold(b"; ".join(b"=".join(t) for t in tags[:-1]) + b"; " + b,
                                   namelen=14, linesep=b"\r\n")
        return b"DKIM-Signature: " + value

    def _prepare(self, counts: dict[bytes, int], bh: bytes,
                 now: int) -> tuple[list[bytes], bytes, bytes]:
        """What a signature over header fields of these names (and counts) shares with every
        other such signature made in the same second over the same body, worked out once for
        a report's copies: the names listed in ``h=``; the signature field folded up to its
        ``b=`` (empty when ``b=`` would not begin a line); the field itself as it is hashed."""
        include = signed_names(counts)
        tags = self.tags(include, bh, now)
        folded = dkimpy.fold(b"; ".join(b"=".join(t) for t in tags), namelen=14,
                             linesep=b"\r\n")
        without_b = dkimpy.RE_BTAG.sub(b"\\1", b" " + dkimpy.RE_BTAG.sub(b"\\1", folded))
        cut = folded.rfind(b"b=")
        before_b = folded[:cut] if folded[:cut].endswith(b"\r\n ") else b""
        return include, before_b, b"dkim-signature:" + _relaxed_value(without_b)


@dataclass(frozen=True)
class Signature:
    """The outcome of verifying one DKIM signature of an inbound message."""

    result: str  # pass | fail | temperror | permerror
    domain: str = ""
    selector: str = ""
    auid: str = ""  # the i= tag: the user or agent the signer vouches for

    def aligned_for(self, address: str) -> bool:
        """Does this passing signature vouch for ``address``: its d= is the address's domain
        or a parent of it (DMARC's relaxed alignment) and, when its i= names a user, that
        user is the address (a provider that signs for each user tells them apart)?"""
        if self.result != "pass" or not self.domain:
            return False
        domain = address.rpartition("@")[2].lower()
        signer = self.domain.lower()
        if domain != signer and not domain.endswith("." + signer):
            return False
        user, at, _ = self.auid.lower().rpartition("@")
        return not (at and user) or self.auid.lower() == address.lower()


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying an inbound message's DKIM signatures (the first few)."""

    result: str  # of the first signature: pass | fail | none | temperror | permerror
    domain: str = ""
    selector: str = ""
    signatures: tuple[Signature, ...] = ()

    def header_value(self, authserv_id: str) -> str:
        """An RFC 8601 ``Authentication-Results`` value (no message content)."""
        results = [f"dkim={s.result}" + (f" header.d={s.domain}" if s.domain else "")
                   + (f" header.s={s.selector}" if s.selector else "")
                   for s in self.signatures] or [f"dkim={self.result}"]
        return f"{authserv_id}; " + "; ".join(results)

    def aligned_for(self, address: str) -> bool:
        """Does any signature pass and vouch for ``address`` (see :meth:`Signature.aligned_for`)?"""
        return any(s.aligned_for(address) for s in self.signatures)


_TAG = re.compile(rb"(?:^|;)\s*([a-z]+)\s*=\s*([^;]*)")
_SIGNATURE = re.compile(rb"(?im)^dkim-signature:(.*(?:\r?\n[ \t].*)*)")
DnsFunc = Callable[..., bytes | None]
MAX_SIGNATURES = 3  # verified per message: providers add two at most (theirs and the user's)
MAX_SIGNED_HEADERS = 100  # h= entries; more is not mail, and dkimpy's cost grows with them


def make_dnsfunc(overrides: dict[str, str]) -> DnsFunc:
    """A TXT lookup that answers from ``overrides`` first (tests, split horizon), then DNS."""
    table = {k.rstrip(".").lower(): v.encode() for k, v in overrides.items()}

    def lookup(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode() if isinstance(name, bytes) else name
        hit = table.get(text.rstrip(".").lower())
        if hit is not None:
            return hit
        result: bytes | None = dkimpy.dnsplug.get_txt(name, timeout=timeout)
        return result

    return lookup


def verify(message: bytes, dnsfunc: DnsFunc, timeout: float,
           max_signed_headers: int = MAX_SIGNED_HEADERS) -> Verdict:
    """Verify the first :data:`MAX_SIGNATURES` DKIM signatures of ``message``; never raises.
    A signature over more than ``max_signed_headers`` headers is not verified (permerror):
    the processing budget, before dkimpy spends seconds on it."""
    end = message.find(b"\r\n\r\n")
    head = message[:end] if end != -1 else message[:65536]  # never a copy of a big body
    head = head.split(b"\n\n", 1)[0]
    found = list(_SIGNATURE.finditer(head))[:MAX_SIGNATURES]
    if not found:
        return Verdict("none")
    signer: Any = None
    results: list[Signature] = []
    for idx, match in enumerate(found):
        tags = {k.lower(): v.strip() for k, v in _TAG.findall(re.sub(rb"\s+", b"", match.group(1))
                                                              .replace(b";", b"; "))}
        domain = tags.get(b"d", b"").decode("ascii", "replace")
        selector = tags.get(b"s", b"").decode("ascii", "replace")
        auid = tags.get(b"i", b"").decode("ascii", "replace")
        if tags.get(b"h", b"").count(b":") + 1 > max_signed_headers:
            results.append(Signature("permerror", domain, selector, auid))
            continue
        try:
            if signer is None:
                signer = dkimpy.DKIM(message, timeout=timeout)
            ok = signer.verify(idx=idx, dnsfunc=dnsfunc)
            result = "pass" if ok else "fail"
        except dkimpy.DnsTimeoutError:
            result = "temperror"
        except dkimpy.DKIMException:  # a bad signature, key or hash: it does not verify
            result = "fail"
        except Exception:  # noqa: BLE001 - dkimpy raises many kinds on malformed input
            result = "permerror"
        results.append(Signature(result, domain, selector, auid))
    first = results[0]
    return Verdict(first.result, first.domain, first.selector, tuple(results))
