"""Our secret addresses taken out of mail members send, in every form a reader could decode.

A member's post is relayed to the other cleared members; if it quotes or forwards case mail
it may carry the author's own case address (``conduct+home-shelf.<token>@D``), and with the
token and a forged ``From:`` another member could write as the author. So before a post is
relayed (and before member text is stored or sent to a reporter) every address of ours with
a ``+detail`` becomes the plain alias, and the author's known tokens are removed:

1. Nothing of ours in any view of the message (:func:`coc_mail.mail.readable.views`, fed through
   :func:`coc_mail.mail.readable.searchable`): it goes on byte for byte.
2. Otherwise every part is rewritten: headers (nested messages' too) and text parts decoded,
   matched with a pattern that reads each character in any of its HTML entity or URL escape
   forms, with invisible characters between them, and re-encoded; other parts have the
   address overwritten in place with the alias padded to the same length.
3. The result is checked again in every view. What still shows an address is replaced by
   the plain text of the post with the offending lines removed, and that failing, by a note.
"""

from __future__ import annotations

import functools
import html.entities
import logging
import re
from collections.abc import Iterable
from email.message import EmailMessage, Message
from email.policy import SMTP

from coc_mail.mail import readable

log = logging.getLogger(__name__)

_INVISIBLE = (r"(?:[\x00-\x08\x0e-\x1f\x7f\u00ad\u034f\u200b-\u200f\u2060-\u2064\ufeff]"
              r"|&shy;|&#0*173;?|&#x0*ad;?"
              r"|&zwnj;|&zwj;|&#x0*200[bcd];?|&#0*82(?:03|04|05);?)*")
_NAMED: dict[str, list[str]] = {}
for _name, _value in html.entities.html5.items():
    if len(_value) == 1 and _name.endswith(";"):
        _NAMED.setdefault(_value, []).append(_name)
_DETAIL_CHAR = (r"(?:[a-z0-9._=-]|%[0-9a-f]{2}|&#0*\d{2,3};?|&#x0*[0-9a-f]{2};?"
                r"|&(?:period|hyphen|dash|lowbar|UnderBar|equals|minus);)")
NOTE = "[coc-mail: a coc-mail address was removed here]"
_CONTROLS = bytes([*range(0x00, 0x09), *range(0x0E, 0x20), 0x7F])  # invisible, in ASCII
# The characters beyond ASCII that matching without case takes for an ASCII letter (Python's
# re: simple lowercase mappings and its table of equivalences): I with a dot and dotless i
# for i, the long s for s, the Kelvin sign for k. tests/mail/test_speed_parts.py tries every
# code point against every ASCII character's pattern to prove that there are no others.
ASCII_MATES = "\u0130\u0131\u017f\u212a"


def _forms(c: str) -> list[int]:
    """The code points one character is written as on its own: itself in either case and
    fullwidth (matching without case adds the lookalikes Unicode folds together with them)."""
    codes = [ord(f) for f in dict.fromkeys((c, c.lower(), c.upper()))]
    return codes + [x + 0xFEE0 for x in codes if 0x21 <= x <= 0x7E]


def _char_parts(c: str) -> tuple[str, str, str]:
    """One character's forms, for a pattern matched ignoring case: the characters it is
    written as on its own (a class), its URL escapes' hex digits, its HTML entities' tails."""
    forms = list(dict.fromkeys((c, c.lower(), c.upper())))
    codes = _forms(c)
    chars = "".join(re.escape(chr(x)) for x in codes)
    numbers = "|".join([f"0*{x}" for x in codes] + [f"x0*{x:x}" for x in codes])
    names = [re.escape(n) for f in forms for n in _NAMED.get(f, [])]
    entity = f"#(?:{numbers});?" + "".join("|" + n for n in names)
    percent = "|".join(f"{ord(f):02x}" for f in forms)
    return chars, percent, entity


def _char(c: str) -> str:
    """A pattern for one character written plainly, fullwidth, or as an HTML entity or URL
    escape (escaped twice too: ``%2540``, ``&amp;#64;``), in either case (the patterns are
    matched ignoring case; entity numbers are not). Three branches, each opened by one
    character test, so that scanning a long text stays fast."""
    chars, percent, entity = _char_parts(c)
    return f"(?:[{chars}]|%(?:25)*(?:{percent})|&(?:amp;)*(?:{entity}))"


def _leading(c: str) -> str:
    """:func:`_char` for the first character of a pattern, written so that Python's re can
    skip ahead to where a match may start: one class of every character that can open one,
    case spelt out (a class matched ignoring case is not used to skip), then the branch that
    character opens. The same matches, found 2 to 4 times faster in long text. A character
    beyond ASCII (whose lookalikes ignoring case are not listed here) keeps :func:`_char`."""
    if not c.isascii():
        return _char(c)
    chars, percent, entity = _char_parts(c)
    return (f"(?-i:[{_opening(c)}%&])(?:(?<=[{chars}])|(?<=%)(?:25)*(?:{percent})"
            f"|(?<=&)(?:amp;)*(?:{entity}))")


def _opening(c: str) -> str:
    """The characters an ASCII character's class matches ignoring case, spelt out (for a
    class matched with case): its forms and its :data:`ASCII_MATES`."""
    chars = _char_parts(c)[0]
    return chars + "".join(m for m in ASCII_MATES
                           if re.fullmatch(f"[{chars}]", m, re.IGNORECASE))


def _literal(text: str, leading: bool = False) -> str:
    """A pattern for ``text`` in any of its characters' forms, invisibles between them;
    ``leading``: it starts the pattern (see :func:`_leading`)."""
    if leading and text:
        return _leading(text[0]) + (_INVISIBLE + _literal(text[1:]) if text[1:] else "")
    return _INVISIBLE.join(_char(c) for c in text)


@functools.lru_cache(maxsize=8)
def _patterns(alias: str) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """For the ``+`` addresses of ``alias``, compiled once: the tolerant pattern (for
    rewriting), the plain one (for readable text) and the tolerant domain alone (an address
    cannot be anywhere the domain is not, in some form: where to look)."""
    local, _, domain = alias.partition("@")
    tolerant = (
        _literal(local, leading=True) + f"(?:{_INVISIBLE}{_literal('-bounces')})?"
        + _INVISIBLE + _literal("+") + f"(?:{_INVISIBLE}{_DETAIL_CHAR}){{1,160}}" + _INVISIBLE
        + _literal("@") + _INVISIBLE + _literal(domain)
    )
    plain = re.escape(local) + r"(?:-bounces)?\+[^\s@<>\"'()\[\],;:]{1,160}@" + re.escape(domain)
    return (re.compile(tolerant, re.IGNORECASE), re.compile(plain),
            re.compile(_literal(domain, leading=True), re.IGNORECASE))


BEFORE, AFTER = 4000, 64  # characters read around a domain: an escaped address fits


@functools.lru_cache(maxsize=1024)
def _secret_pattern(secret: str) -> re.Pattern[str]:
    return re.compile(_literal(secret, leading=True), re.IGNORECASE)


def _finditer(text: bytes, needle: bytes) -> list[int]:
    """Where ``needle`` starts in ``text`` (overlaps too). Its tail from its last dot (the
    top-level domain: fewer of its characters in common text) is searched for first and the
    rest checked at each hit: a search skips further between hits of a needle whose
    characters are rare (the letters of a domain are common in words and long runs)."""
    cut = needle.rfind(b".")
    tail = needle[cut:] if cut > 0 else needle
    out, at = [], text.find(tail, cut if cut > 0 else 0)
    while at != -1:
        start = at - cut if cut > 0 else at
        if text.startswith(needle, start):
            out.append(start)
        at = text.find(tail, at + 1)
    return out


class Redactor:
    """Finds and removes the committee's ``+`` addresses and a set of known tokens."""

    def __init__(self, alias: str, secrets: Iterable[str] = ()) -> None:
        self.alias = alias.lower()
        self.secrets = sorted({s.lower() for s in secrets if s}, key=len, reverse=True)
        self.pattern, self.search, self.domain = _patterns(self.alias)
        plain = self.alias.partition("@")[2]
        self.plain_domain = plain.encode("ascii") if plain.isascii() else b""

    @property
    def secret_patterns(self) -> list[re.Pattern[str]]:
        return [_secret_pattern(s) for s in self.secrets]

    # -- finding ----------------------------------------------------------------------------
    def found_in(self, text: str) -> bool:
        """Does ``text``, read as a person could read it (:func:`readable.searchable`), show
        an address of ours or a known token? Linear in the text: both are looked for around
        each place the domain shows in any form (a token travels in an address; one pasted
        on its own, far from any address, is a member's deliberate act, not a leak)."""
        for start, end in self._windows(text):
            plain = readable.searchable(text[start:end])
            if self.search.search(plain):
                return True
            squeezed = re.sub(r"\s+", "", plain)
            if any(s in plain or s in squeezed for s in self.secrets):
                return True
        return False

    def domain_hits(self, text: str) -> list[tuple[int, int]]:
        """Where the domain shows in ``text`` in any form: where its tolerant pattern matches.
        ASCII text without ``%`` or ``&`` (which begin every escape) or a control (an
        invisible) can only show it plainly, in either case, and is searched for that
        instead, which is several times faster and finds the same places (overlapping ones
        too, for a domain that overlaps itself: they only widen the windows). A domain
        beyond ASCII is always looked for by its pattern (which reads a dotless i as i)."""
        if self.plain_domain and text.isascii() and "%" not in text and "&" not in text:
            data = text.encode("ascii")
            if len(data.translate(None, _CONTROLS)) == len(data):
                size = len(self.plain_domain)
                return [(at, at + size) for at in _finditer(data.lower(), self.plain_domain)]
        return [(m.start(), m.end()) for m in self.domain.finditer(text)]

    def _windows(self, text: str) -> list[tuple[int, int]]:
        """The stretches of ``text`` before each appearance of the domain, merged."""
        windows: list[tuple[int, int]] = []
        for hit_start, hit_end in self.domain_hits(text):
            start, end = max(0, hit_start - BEFORE), hit_end + AFTER
            if windows and start <= windows[-1][1]:
                windows[-1] = (windows[-1][0], end)
            else:
                windows.append((start, end))
        return windows

    def addresses_in(self, text: str) -> list[str]:
        """The ``+`` addresses of ours that ``text`` shows (read as :meth:`found_in` reads)."""
        found: list[str] = []
        for start, end in self._windows(text):
            found += [m.group() for m in self.search.finditer(
                readable.searchable(text[start:end]))]
        return found

    def shows_domain(self, text: str) -> bool:
        return self.domain.search(text) is not None

    def leaks(self, raw: bytes) -> bool:
        """Does any view of the message (parts, encodings, HTML) show one?"""
        return any(self.found_in(view)
                   for view in readable.views(raw, wanted=self.worth_reading))

    def worth_reading(self, source: str) -> bool:
        """Can an HTML source hold an address at all (the domain in any form)? If not, its
        costlier views need not be made."""
        return self.shows_domain(source)

    # -- removing ---------------------------------------------------------------------------
    def text(self, text: str) -> str:
        """``text`` with every address of ours made the alias and every token removed."""
        text = self.pattern.sub(self.alias, text)
        for p in self.secret_patterns:
            text = p.sub("[removed]", text)
        return text

    def same_length(self, data: bytes) -> bytes:
        """The same bytes with each address overwritten in place (alias, padded with spaces)
        and each token with x's: for parts that are not text, whose offsets matter."""
        text = data.decode("latin-1")

        def pad(m: re.Match[str]) -> str:
            return self.alias[: len(m.group())].ljust(len(m.group()))

        text = self.pattern.sub(pad, text)
        for p in self.secret_patterns:
            text = p.sub(lambda m: "x" * len(m.group()), text)
        return text.encode("latin-1")

    def message(self, raw: bytes) -> bytes:
        """The message with every address of ours removed from every part, checked again in
        every view; see the module docstring for what happens when that is not enough."""
        if not self.leaks(raw):
            return raw
        try:
            msg = readable.parse(raw)
            self._rewrite(msg)
            out = msg.as_bytes(policy=SMTP)
        except Exception as exc:  # noqa: BLE001 - unrewritable structure: the fallbacks
            log.warning("redaction: structure not rewritable (%s)", type(exc).__name__)
            out = raw
        if not self.leaks(out):
            return out
        log.warning("redaction: an address survived rewriting; the post goes as plain text")
        lines = [NOTE if self.found_in(line) else self.text(line)
                 for line in readable.displayed(out).lines]
        plain = _plain("\n".join(lines) + "\n")
        if not self.leaks(plain):
            return plain
        return _plain(NOTE + "\n")

    def _rewrite(self, msg: Message) -> None:
        stack: list[tuple[Message, int]] = [(msg, 0)]
        while stack:
            part, depth = stack.pop()
            self._headers(part)
            if depth > readable.MAX_DEPTH:
                continue
            payload = part.get_payload()
            if part.is_multipart() and isinstance(payload, list):
                for name in ("preamble", "epilogue"):
                    extra = getattr(part, name)
                    if extra and self.found_in(extra):
                        setattr(part, name, None)
                stack.extend((p, depth + 1) for p in payload if isinstance(p, Message))
                continue
            if not isinstance(part, EmailMessage):
                continue
            if part.get_content_maintype() == "text":
                text = readable.decoded_text(part)
                if not self.found_in(text):
                    continue
                _set_text(part, self.text(text))
                continue
            data = part.get_payload(decode=True)
            if isinstance(data, bytes) and any(self.found_in(v) for v in (
                    data.decode("latin-1"), data.decode("utf-16-le", "replace"),
                    data.decode("utf-16-be", "replace"))):
                _set_bytes(part, self.same_length(data))

    def _headers(self, part: Message) -> None:
        for name, value in list(part.items()):
            text = str(value)
            if self.found_in(text):
                cleaned = self.text(text)
                if self.found_in(cleaned):
                    cleaned = self.alias if name.lower() in ("reply-to", "from", "to", "cc",
                                                             "sender") else NOTE
                part.replace_header(name, cleaned)


def _keep(part: EmailMessage) -> dict[str, object]:
    kept: dict[str, object] = {}
    disposition = part.get_content_disposition()
    if disposition:
        kept["disposition"] = disposition
    filename = part.get_filename()
    if filename:
        kept["filename"] = filename
    return kept


def _set_text(part: EmailMessage, text: str) -> None:
    params = {k: v for k, v in part.get_params(unquote=True) or []
              if k.lower() in ("format", "delsp")}
    subtype = part.get_content_subtype()
    kept = _keep(part)
    part.set_content(text, subtype=subtype, charset="utf-8", cte="quoted-printable",
                     params=params, **kept)  # type: ignore[arg-type]


def _set_bytes(part: EmailMessage, data: bytes) -> None:
    maintype, subtype = part.get_content_maintype(), part.get_content_subtype()
    kept = _keep(part)
    if maintype == "message":
        part.set_payload(data.decode("latin-1"))
        return
    part.set_content(data, maintype, subtype, cte="base64", **kept)  # type: ignore[arg-type]


def _plain(text: str) -> bytes:
    msg = EmailMessage()
    msg.set_content(text, charset="utf-8", cte="quoted-printable")
    return msg.as_bytes(policy=SMTP)
