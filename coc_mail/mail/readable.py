"""What a person reads of a message: every MIME part decoded (transfer encoding, charset), HTML
made plain with block elements as lines, and where quoted mail begins in what a client shows.

Every privacy rule works on this, never on raw bytes: command parsing and follow-up text
(:func:`body`), the document's copy of a message (:func:`text_of`), token redaction and the
leak tests (:func:`views` and :func:`searchable`). The parts are read with the standard
library's ``email`` package (``policy.default``); HTML with lxml (libxml2's parser, the one
mail clients' own converters resemble most), walked without recursion.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import html as html_lib
import quopri
import re
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email import message_from_bytes
from email.header import decode_header, make_header
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage, Message
from email.policy import compat32, default

from lxml import etree
from lxml import html as lxml_html

from coc_mail.mail import quotes

MAX_TEXT = 200_000  # characters of a body kept for commands and the document
MAX_DEPTH = 64  # nested messages and multiparts walked (the budget allows fewer)

# Elements that start and end a line, as browsers and mail clients lay them out.
BLOCK = frozenset({
    "address", "article", "aside", "blockquote", "center", "dd", "details", "dialog", "dir",
    "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3",
    "h4", "h5", "h6", "header", "hr", "li", "main", "menu", "nav", "ol", "p", "pre", "section",
    "summary", "table", "tbody", "tfoot", "thead", "tr", "ul", "caption", "legend",
    "option", "body", "html", "frameset", "noframes", "listing", "plaintext", "xmp",
})
PARAGRAPH = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "pre"})
SKIP = frozenset({"script", "style", "head", "title", "template", "object", "embed"})
# Where clients put the quoted message or the signature (class and id words, lowercased).
QUOTE_CLASSES = frozenset({
    "gmail_quote", "gmail_attr", "gmail_extra", "gmail_quote_container", "yahoo_quoted",
    "moz-cite-prefix", "moz-forward-container", "outlookmessageheader", "protonmail_quote",
    "zmail_extra", "replyheader", "reply-intro", "applemailquote", "quote",
    "ms-outlook-mobile-reference-message", "x_gmail_quote", "x_gmail_attr", "x_moz-cite-prefix",
    "x_yahoo_quoted",
})
QUOTE_IDS = frozenset({
    "divrplyfwdmsg", "x_divrplyfwdmsg", "appendonsend", "x_appendonsend",
    "olk_src_body_section", "x_olk_src_body_section", "stopspelling", "reply-intro",
    "mail-editor-reference-message-container", "isforwardcontent", "isreplycontent",
    "origbody",
})
SIGNATURE_CLASSES = frozenset({"gmail_signature", "moz-signature", "x_gmail_signature"})
SIGNATURE_IDS = frozenset({"signature", "x_signature", "ms-outlook-mobile-signature",
                           "applemailsignature"})
_OUTLOOK_BORDER = re.compile(r"border-top:\s*solid\s+#(?:e1e1e1|b5c4df)", re.IGNORECASE)
_SPACE = re.compile(r"[ \t\n\r\f\v]+")
_XML_DECL = re.compile(r"^\s*<\?xml[^>]*>", re.IGNORECASE)
_TAG = re.compile(r"(?s)<!--.*?-->|<[^>]*>")
# Characters a reader does not see; the C0 controls (but tab and line ends) and DEL among
# them: clients drop a NUL or show nothing for it, so "c\0o\0n..." reads as "con...".
INVISIBLE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f"
                       r"\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180e\u200b-\u200f"
                       r"\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0]")


@dataclass(frozen=True)
class Body:
    """The lines a client shows first of a message, and ``stop``: the index of the first line
    of quoted mail or a signature (``len(lines)`` when there is none)."""

    lines: list[str]
    stop: int

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def written(self) -> list[str]:
        """What the sender wrote: the lines before the first quote or signature."""
        return self.lines[: self.stop]


class _RememberingRegistry(HeaderRegistry):
    """``policy.default``'s header factory, remembering the MIME fields it parsed: the
    ``email`` package parses a field anew at every read, and reading one text part asks for
    its Content-Type nine times (a third of the cost of :func:`text_of`). Parsed fields are
    immutable, so the same field's value gives the same object.

    Only the fields of :data:`REMEMBERED_FIELDS` up to :data:`REMEMBERED_VALUE` characters
    are kept, at most :data:`REMEMBERED` of them (then the memory is emptied): a parsed field
    holds its whole parse tree (about 17 KiB for a plain Content-Type, up to about 215 KiB
    for a crafted one of 200 characters), so remembering every field would let a sender fill
    the process; at these bounds the memory holds at most about 7 MiB. It is never pickled
    or copied with a message (a copy starts empty): one message must not carry another's
    file names."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[tuple[str, str], BaseHeader] = {}

    def __call__(self, name: str, value: str) -> BaseHeader:
        if (not isinstance(value, str) or name.lower() not in REMEMBERED_FIELDS
                or len(value) > REMEMBERED_VALUE):
            return super().__call__(name, value)
        key = (name, value)
        found = self._seen.get(key)
        if found is None:
            found = super().__call__(name, value)
            if len(self._seen) >= REMEMBERED:
                self._seen.clear()
            self._seen[key] = found
        return found

    def __getstate__(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "_seen"}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._seen = {}


REMEMBERED_FIELDS = frozenset({"content-type", "content-disposition",
                               "content-transfer-encoding"})
REMEMBERED, REMEMBERED_VALUE = 32, 200
POLICY = default.clone(header_factory=_RememberingRegistry())


def parse(raw: bytes) -> EmailMessage:
    """The whole message, ``policy.default`` (decoded headers and parts; short MIME fields'
    parses remembered, see :class:`_RememberingRegistry`)."""
    msg = message_from_bytes(raw, policy=POLICY)
    assert isinstance(msg, EmailMessage)
    return msg


def decoded_text(part: Message) -> str:
    """A text part's content as text: transfer encoding and charset undone, tolerantly (an
    unknown or lying charset falls back to UTF-8, then Latin-1)."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        inner = part.get_payload()
        return inner if isinstance(inner, str) else ""
    charset = str(part.get_content_charset() or "utf-8").strip().strip('"').lower()
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "utf-8"
    for name in dict.fromkeys((charset, "utf-8")):
        try:
            return payload.decode(name)
        except Exception:  # noqa: BLE001, S112 - UnicodeDecodeError, or a codec's own error
            continue
    try:  # the declared charset, its broken bytes replaced: still closest to what is shown
        return payload.decode(charset, "replace")
    except Exception:  # noqa: BLE001 - a codec that cannot even do that
        return payload.decode("latin-1")


# -- HTML -----------------------------------------------------------------------------------
def _words(value: str | None) -> set[str]:
    return {w.lower() for w in (value or "").split()}


def is_quote(el: etree._Element) -> bool:
    """Does this element hold quoted mail (the start of a reply's or forward's quote)?"""
    tag = el.tag if isinstance(el.tag, str) else ""
    if tag == "blockquote":
        return True
    if _words(el.get("class")) & QUOTE_CLASSES or _words(el.get("id")) & QUOTE_IDS:
        return True
    if tag == "hr" and (el.get("tabindex") == "-1" or _words(el.get("id")) & QUOTE_IDS):
        return True  # Outlook on the web puts this rule before its header block
    return tag == "div" and bool(_OUTLOOK_BORDER.search(el.get("style") or ""))


def _paragraph(el: etree._Element, tag: str) -> bool:
    """Is there a blank line around this block? Not for Word's MsoNormal paragraphs (Outlook
    sets their margins to 0 and writes an empty paragraph for a blank line)."""
    return tag in PARAGRAPH and "msonormal" not in _words(el.get("class"))


def is_signature(el: etree._Element) -> bool:
    return bool(_words(el.get("class")) & SIGNATURE_CLASSES
                or _words(el.get("id")) & SIGNATURE_IDS)


class _Lines:
    """Text laid out as a mail client lays out HTML: blocks on lines of their own."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.current: list[str] = []
        self.blank_before = False

    def add(self, text: str, *, pre: bool) -> None:
        if not text:
            return
        if pre:
            first, *rest = text.split("\n")
            self.current.append(first)
            for piece in rest:
                self.hard_break()
                self.current.append(piece)
            return
        self.current.append(_SPACE.sub(" ", text))

    def hard_break(self) -> None:  # <br>: ends the line, even an empty one
        self.lines.append("".join(self.current))
        self.current = []

    def block(self, *, paragraph: bool = False) -> None:  # a block's edge: a new line if needed
        if any(not c.isascii() or not c.isspace() for c in "".join(self.current)):
            self.hard_break()  # (a line of just &nbsp; is a blank line: Outlook's way)
        self.current = []
        if paragraph and self.lines and self.lines[-1].strip():
            self.lines.append("")

    def finish(self) -> list[str]:
        self.block()
        lines = [line.replace("\xa0", " ").strip() for line in self.lines]
        out: list[str] = []
        for line in lines:
            if not line and (not out or not out[-1]):
                continue  # no leading blank lines, no runs of them
            out.append(line)
        while out and not out[-1]:
            out.pop()
        return out


def html_body(source: str) -> Body:
    """HTML made plain, and where its first quote or signature element begins."""
    source = _XML_DECL.sub("", source)
    if not source.strip():
        return Body([], 0)
    try:
        parser = lxml_html.HTMLParser(encoding="utf-8", remove_pis=True, no_network=True)
        root = lxml_html.document_fromstring(source.encode("utf-8", "surrogatepass"),
                                             parser=parser)
    except Exception:  # noqa: BLE001 - not HTML at all: read it as text without tags
        lines = [line.strip() for line in html_lib.unescape(_TAG.sub(" ", source)).split("\n")]
        return Body(lines, len(lines))
    out = _Lines()
    stop: int | None = None
    pre = 0
    walker = etree.iterwalk(root, events=("start", "end"))
    for event, el in walker:
        tag = el.tag.lower() if isinstance(el.tag, str) else ""
        if event == "start":
            if not tag:  # a comment: its text is not shown; its tail is
                continue
            if tag in SKIP:
                walker.skip_subtree()
                continue
            if stop is None and (is_quote(el) or is_signature(el)):
                out.block()
                stop = len(out.lines)
            if tag == "br":
                out.hard_break()
            elif tag in BLOCK:
                out.block(paragraph=_paragraph(el, tag))
            if tag in ("pre", "textarea", "listing", "xmp", "plaintext"):
                pre += 1
            if tag in ("td", "th") and out.current:
                out.add(" ", pre=False)
            if tag == "li":
                out.add("- ", pre=False)
            out.add(el.text or "", pre=pre > 0)
            continue
        if tag in ("pre", "textarea", "listing", "xmp", "plaintext"):
            pre = max(0, pre - 1)
        if tag in BLOCK and tag not in SKIP:
            out.block(paragraph=_paragraph(el, tag))
        out.add(el.tail or "", pre=pre > 0)
    lines = out.finish()
    if stop is None:
        return Body(lines, len(lines))
    # Line numbers before finish() counted blank runs that finish() folds: recount.
    before = _Lines()
    before.lines = out.lines[:stop]
    return Body(lines, min(len(lines), len(before.finish())))


# -- the text a client shows first ----------------------------------------------------------
def first_text_part(msg: EmailMessage) -> Message | None:
    """The part a mail client shows as the body: text/plain preferred, else text/html."""
    try:
        return msg.get_body(preferencelist=("plain", "html"))
    except Exception:  # noqa: BLE001 - broken structure: no body
        return None


def displayed(raw: bytes | EmailMessage) -> Body:
    """The lines a client shows first (the text part, else the HTML made plain); ``stop`` is
    where the HTML's own quote markup begins (the plain-text rules are :func:`body`'s)."""
    try:
        msg = parse(raw) if isinstance(raw, bytes) else raw
        part = first_text_part(msg)
        if part is None:
            return Body([], 0)
        content = decoded_text(part)[:MAX_TEXT]
    except Exception:  # noqa: BLE001 - broken MIME: read the raw bytes as text
        content = (raw if isinstance(raw, bytes) else b"").decode("utf-8", "replace")[:MAX_TEXT]
        part = None
    if part is not None and part.get_content_type() == "text/html":
        return html_body(content)
    lines = content.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if part is not None and str(part.get_param("format", "")).lower() == "flowed":
        lines = quotes.unflow(lines, delsp=str(part.get_param("delsp", "")).lower() == "yes")
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    return Body(lines, len(lines))


def body(raw: bytes | EmailMessage, guards: Iterable[quotes.Guard] = ()) -> Body:
    """The lines a client shows first (:func:`displayed`) and where the quoted mail or signature
    begins: HTML markers, the plain-text rules of :mod:`coc_mail.mail.quotes` or a line one
    of ``guards`` finds, whichever comes first."""
    found = displayed(raw)
    stop = min(found.stop, quotes.first_quote(found.lines[:found.stop], guards))
    first = next((i for i, line in enumerate(found.lines[:found.stop]) if line.strip()), None)
    if first is not None and stop == first and found.lines[first].lstrip().startswith("/"):
        # A command's own line is never quoted mail: joined with the lines below it, "/note
        # summary" + "The reporter wrote:" would read as an attribution and hide the command.
        rest = found.lines[first + 1:found.stop]
        stop = first + 1 + quotes.first_quote(rest, guards)
    return Body(found.lines, stop)


def text_of(raw: bytes) -> str:
    """The readable text of a message for the case document: what a client shows (quoted
    parts included), and the names of its attachments."""
    try:
        msg = parse(raw)
        shown = displayed(msg).text
        names = [str(p.get_filename()) for p in msg.iter_attachments() if p.get_filename()]
    except Exception:  # noqa: BLE001 - broken MIME: the raw text is still the message
        return raw.decode("utf-8", "replace")[:MAX_TEXT]
    if names:
        shown += "\n[attachments: " + ", ".join(names) + "]\n"
    return shown[:MAX_TEXT]


def shown(raw: bytes, limit: int = 64 << 10) -> str:
    """What a client shows of a message, to put inline above it (SPEC 8.1): :func:`text_of`,
    on a big message without its long base64 runs (its attachments, still named), at most
    ``limit`` characters."""
    text = text_of(_skeleton(raw) if len(raw) > BIG_MESSAGE else raw)
    if len(text) > limit:
        text = text[:limit] + "\n[... the rest is in the attached original]\n"
    return text


# -- everything, for privacy checks ---------------------------------------------------------
def searchable(text: str) -> str:
    """Text as a reader could take it in, for matching secrets: compatibility forms folded
    (fullwidth letters), invisible characters dropped, HTML entities and URL escapes undone
    (twice: ``%2540`` too), case folded."""
    text = html_lib.unescape(text)
    for _ in range(2):
        text = urllib.parse.unquote(text, errors="replace")
    text = unicodedata.normalize("NFKC", text)
    text = INVISIBLE.sub("", text)
    return html_lib.unescape(text).casefold()


def _html_views(source: str, wanted: Callable[[str], bool] | None) -> Iterator[str]:
    yield source  # the source itself, as "view source" shows it
    if wanted is not None and not wanted(source):
        return  # nothing the caller looks for can be in the views made from it
    no_tags = _TAG.sub("", source)
    yield no_tags  # text split by inline tags read as one
    yield "\n".join(html_body(source).lines)
    try:
        parser = lxml_html.HTMLParser(encoding="utf-8", no_network=True)
        root = lxml_html.document_fromstring(source.encode("utf-8", "surrogatepass"),
                                             parser=parser)
        yield "".join(root.itertext())
        yield "\n".join(str(v) for el in root.iter() for v in el.attrib.values())
    except Exception:  # noqa: BLE001, S110 - nothing more to read
        pass


# Lines that are all base64 (16 characters or more: no line of words is), and a last short one.
_B64_LINE = re.compile(rb"\n[A-Za-z0-9+/]{16}")
# Possessive (++): no backtracking state is kept per line (a 25 MiB run held 150 MiB).
_B64_BLOCK = re.compile(rb"(?m)(?:^[A-Za-z0-9+/]{16,}={0,2}[ \t]*\r?\n)++"
                        rb"(?:^[A-Za-z0-9+/]{1,15}={0,2}[ \t]*\r?(?:\n|$))?")


B64_WINDOW = 1 << 20  # base64 is decoded a megabyte at a time: no attachment is one string
B64_OVERLAP = 2048  # decoded bytes carried into the next window: anything shorter is whole
BIG_MESSAGE = 4 << 20  # from this size on, long base64 runs are read only by the raw views
BIG_RUN = 64 << 10


def _raw_views(data: bytes) -> Iterator[str]:
    """Views of bytes that trust no MIME structure: as they are, quoted-printable undone, and
    every base64-looking run decoded; in overlapping windows of B64_WINDOW bytes, so a big
    message is never one more string. In a big message, a long run the parser will not see
    that is not UTF-8 text is read as a binary part is: Latin-1 and UTF-16."""
    for start in range(0, max(len(data), 1), B64_WINDOW):
        yield data[max(0, start - B64_OVERLAP):start + B64_WINDOW].decode("latin-1")
    tail = ""
    for piece in _hard_lines(data):  # quoted-printable decodes line by line: whole lines
        text = quopri.decodestring(piece).decode("utf-8", "replace")
        yield tail + text
        tail = text[-B64_OVERLAP:]
    if not _B64_LINE.search(data):  # (a quick test first: one starts with a newline)
        return
    cut = len(data) > BIG_MESSAGE  # long runs are not parsed as parts (see _skeleton)
    for run in _B64_BLOCK.finditer(data):
        as_part = cut and _cut(data, *run.span())
        for decoded in _base64_windows(data, *run.span()):
            text = decoded.decode("utf-8", "replace")
            if as_part and (text.count("\ufffd") > len(text) // 8
                            or decoded.count(0) > len(decoded) // 8):
                # binary (or UTF-16): read as a binary part's bytes are, in its place
                yield decoded.decode("latin-1")
                even = decoded[: len(decoded) - len(decoded) % 2]
                yield even.decode("utf-16-le", "replace")
                yield even.decode("utf-16-be", "replace")
            else:
                yield text


def _hard_lines(data: bytes) -> Iterator[bytes]:
    """``data`` in pieces of about B64_WINDOW bytes, each ending at a hard line break (one
    not after a soft ``=``), so that quoted-printable decodes in each as in the whole; a
    run of soft-broken lines is not cut before 8 x B64_WINDOW."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start + B64_WINDOW)
        limit = start + 8 * B64_WINDOW
        while end != -1 and end < limit and data[max(0, end - 2):end].rstrip(b"\r") \
                .endswith(b"="):
            end = data.find(b"\n", end + 1)
        end = len(data) if end == -1 else end + 1
        yield data[start:end]
        start = end


_ASCII_SPACE = b" \t\n\r\x0b\x0c"


def _base64_windows(data: bytes, start: int, end: int) -> Iterator[bytes]:
    """The base64 run ``data[start:end]`` decoded, in windows of about B64_WINDOW bytes,
    each beginning with the last B64_OVERLAP bytes of the one before."""
    if end - start < 16:
        return
    carry = tail = b""
    pos = start
    while pos < end:
        stop = data.find(b"\n", min(end, pos + B64_WINDOW * 4 // 3), end)
        stop = end if stop == -1 else stop + 1
        chunk = carry + data[pos:stop].translate(None, _ASCII_SPACE)  # what rb"\s" matches
        pos = stop
        usable = len(chunk) - len(chunk) % 4
        chunk, carry = chunk[:usable], chunk[usable:]
        if len(chunk) < 16 and not tail:
            continue
        try:
            decoded = base64.b64decode(chunk, validate=False)
        except (binascii.Error, ValueError):
            return
        yield tail + decoded
        tail = decoded[-B64_OVERLAP:]


def views(raw: bytes, *, depth: int = 0,
          wanted: Callable[[str], bool] | None = None) -> Iterator[str]:
    """Every string a reader of ``raw`` could see: each header decoded, each part's decoded
    text (HTML as source, as shown and as attribute values), binary parts as Latin-1 and
    UTF-16, nested messages in full, and the raw bytes read without trusting the MIME
    structure. Feed them through :func:`searchable` before matching. ``wanted`` tells from
    an HTML source whether its costlier views (parsed, laid out) can hold what the caller
    looks for. A view equal to one already given is not given again."""
    seen: set[tuple[int, int]] = set()
    for view in _all_views(raw, depth, wanted):
        key = (len(view), hash(view))
        if key not in seen:
            seen.add(key)
            yield view


_CTYPE = re.compile(rb"(?im)^content-type:[ \t]*([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)")
_CTE = re.compile(rb"(?im)^content-transfer-encoding:[ \t]*([^;\r\n]*)")
_UTF8 = re.compile(rb'(?i)^text/plain\s*(?:;\s*charset\s*=\s*"?(?:utf-?8|us-ascii)"?\s*)?$')


def _plain_text(head: bytes) -> bool:
    """Is this one text/plain part in UTF-8 or ASCII, in any transfer encoding, with plain
    headers: the commonest report, of which the raw views (as they are, quoted-printable
    undone, base64 undone, read as UTF-8) are all a reader sees?"""
    ctype = _CTYPE.findall(head)
    cte = _CTE.findall(head)
    return (len(ctype) <= 1 and (not ctype or bool(_UTF8.match(ctype[0].strip())))
            and len(cte) <= 1 and (not cte or cte[0].strip().lower() in (
                b"7bit", b"8bit", b"quoted-printable", b"base64"))
            and b"=?" not in head)  # (encoded words need decoding too)


_BINARY_TYPE = re.compile(
    rb"(?im)^content-type:[ \t]*(?:application|image|audio|video|font|model)/")


_EML = re.compile(rb"(?i)\.eml\b")


def _cut(data: bytes, start: int, end: int) -> bool:
    """Is the base64 run ``data[start:end]`` a big binary attachment: long, and the whole
    body of a part whose own headers say application/, image/, audio/, video/ (a text,
    HTML or nested message part, or a file named .eml, is never cut: only the parser reads
    its charset, markup and inner parts)? Its headers are the lines since the last boundary
    line before it."""
    after_headers = (data[max(0, start - 4):start] == b"\r\n\r\n"
                     or data[max(0, start - 2):start] == b"\n\n")
    if end - start <= BIG_RUN or not after_headers:
        return False
    before = data[max(0, start - 65536):start]
    boundary = before.rfind(b"\n--")
    return (boundary != -1 and _BINARY_TYPE.search(before, boundary) is not None
            and _EML.search(before, boundary) is None)  # a forwarded .eml is read as a message


def _skeleton(raw: bytes) -> bytes:
    """``raw`` without its big binary attachments (see :func:`_cut`): the MIME structure,
    headers and text the parser needs, at a fraction of its memory (the stdlib parser holds
    about eight times a message while parsing it). What is cut out, the raw views read as
    a binary part is read: Latin-1 and UTF-16."""
    return _B64_BLOCK.sub(lambda m: b"" if _cut(raw, m.start(), m.end()) else m.group(), raw)


def _all_views(raw: bytes, depth: int, wanted: Callable[[str], bool] | None) -> Iterator[str]:
    yield from _raw_views(raw)
    if depth > MAX_DEPTH:
        return
    if len(raw) > BIG_MESSAGE:
        raw = _skeleton(raw)
    end = raw.find(b"\r\n\r\n")
    if end != -1 and _plain_text(raw[:end + 2]):
        body = raw[end + 4:]
        cte = _CTE.findall(raw[:end + 2])
        if cte and cte[0].strip().lower() == b"base64":
            with contextlib.suppress(binascii.Error, ValueError):
                body = base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", body))
        yield body.decode("utf-8", "replace")  # its text as UTF-8 (quoted-printable: above)
        return
    try:  # compat32: the same parts, without building an object for every header
        msg = message_from_bytes(raw, policy=compat32)
    except Exception:  # noqa: BLE001 - the raw views are all there is
        return
    yield from _message_views(msg, depth, wanted)


def _header_text(value: object) -> str:
    """A header's value as a reader sees it: encoded words decoded (bounded)."""
    text = str(value)
    if "=?" not in text:
        return text
    try:
        return str(make_header(decode_header(text[:65536])))
    except Exception:  # noqa: BLE001 - malformed encoded words: as they are
        return text


def _message_views(msg: Message, depth: int,
                   wanted: Callable[[str], bool] | None) -> Iterator[str]:
    stack: list[tuple[Message, int]] = [(msg, depth)]
    while stack:
        part, level = stack.pop()
        for name, value in part.items():
            yield f"{name}: {_header_text(value)}"
        with contextlib.suppress(Exception):  # a name in RFC 2231 pieces, as clients join it
            if filename := part.get_filename():
                yield str(filename)
        if level > MAX_DEPTH:
            continue
        try:
            ctype = part.get_content_type()
            payload = part.get_payload()
        except Exception:  # noqa: BLE001, S112 - unreadable part: raw views cover it
            continue
        if part.is_multipart() and isinstance(payload, list):
            stack.extend((p, level + 1) for p in payload if isinstance(p, Message))
            for extra in (part.preamble, part.epilogue):
                if extra:
                    yield extra
            continue
        try:
            data = part.get_payload(decode=True)
        except Exception:  # noqa: BLE001 - undecodable: read it as it is
            data = None
        if not isinstance(data, bytes):
            data = str(payload).encode("utf-8", "surrogateescape")
        if ctype.startswith("text/"):
            text = decoded_text(part)
            yield text
            if str(part.get_param("format", "")).lower() == "flowed":  # as a client joins it
                delsp = str(part.get_param("delsp", "")).lower() == "yes"
                yield "\n".join(quotes.unflow(text.splitlines(), delsp=delsp))
            if ctype == "text/html":
                yield from _html_views(text, wanted)
            continue
        # Not text: its bytes as a viewer or a hex dump shows them (ASCII, and the UTF-16 that
        # office documents store strings in).
        yield data.decode("latin-1")
        yield data.decode("utf-16-le", "replace")
        yield data.decode("utf-16-be", "replace")
        if ctype in ("message/rfc822", "message/global") or (
                str(part.get_filename() or "").lower().endswith(".eml")):
            yield from views(data, depth=level + 1, wanted=wanted)
