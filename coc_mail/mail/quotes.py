"""Where quoted mail begins in plain text, as common clients write it, in many languages.

What a member writes ends at the first of: a ``>`` line; an attribution line ("On ... wrote:",
on one to three lines, in any of the languages below, or any line ending in a colon that
names an address and is followed by ``>`` lines); an Outlook header block (``From:``, then
``Sent:``/``To:``/``Subject:`` within a few lines, labels in many languages) or its line of
underscores; a ``-----Original Message-----`` style rule; "Begin forwarded message:"; a
signature (``-- ``) or a phone's "Sent from my ..." footer. The rules are learnt from what
Talon and email-reply-parser recognise, kept small; HTML quotes are found by their markup
in :mod:`coc_mail.mail.readable` before these apply.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

WINDOW = 3  # an attribution line wrapped by the client spans at most this many lines
Guard = Callable[[str], object]  # a caller's own test for a line of quoted mail

_VERBS = (
    r"wrote|writes|a écrit|a ecrit|écrit|schrieb|hat geschrieben|escribió|escribio|ha scritto"
    r"|scrisse|escreveu|schreef|heeft geschreven|geschreven|skrev|skriver|napisał\(a\)"
    r"|napisał/a|napisał|napisała"
    r"|pisze|написал\(а\)|написал|написала|пишет|написав|пише|napsal\(a\)|napsal|kirjoitti"
    r"|írta|yazdı|έγραψε|a scris|napísal|je napisal|rašė|rakstīja|kirjutas|schreibt"
    r"|のメッセージ|のメール|書きました|より|写道|寫道|작성|님이 작성"
)
# "... wrote:" and its translations, ending the (joined) line, colon optional for CJK.
_CJK_VERBS = r"写道|寫道|のメッセージ|のメール|書きました|작성"  # the colon may be left out
_ATTRIBUTION = re.compile(
    rf"(?i)(?:{_VERBS})\s*(?:\([^)]*\))?\s*[:：]\s*$|(?:{_CJK_VERBS})\s*$"
)
_ADDRESS = re.compile(r"[^\s<>()\[\]]+@[^\s<>()\[\]]+\.[^\s<>()\[\]]+")
_DATEISH = re.compile(r"\d{1,2}[:.]\d{2}|\d{4}|\d{1,2}/\d{1,2}/\d{2,4}")
_ENDS_WITH_COLON = re.compile(r"[:：]\s*$")
# Every attribution ends in one of these (after trailing spaces): a line that does not is
# passed over without the patterns above, which are slow to search along a long line.
_ENDINGS = (":", "：", *_CJK_VERBS.split("|"))

_FROM_LABELS = (
    r"from|de|von|da|van|från|fra|od|от|від|lähettäjä|feladó|kimden|από|de la|发件人|發件人"
    r"|寄件者|差出人|送信者|보낸 사람|보낸사람|frá|nuo"
)
_OTHER_LABELS = (
    r"sent|date|to|subject|cc|envoyé|envoye|à|a|objet|gesendet|datum|an|betreff|enviado|para"
    r"|asunto|fecha|inviato|data|oggetto|verzonden|aan|onderwerp|skickat|till|ämne|sendt|til"
    r"|emne|wysłano|do|temat|отправлено|кому|тема|дата|надіслано|发送时间|發送時間|收件人|主题|主旨"
    r"|日期|送信日時|宛先|件名|日付|보낸 날짜|받는 사람|제목|lähetetty|vastaanottaja|aihe"
    r"|elküldve|címzett|tárgy|gönderildi|kime|konu|tarih|assunto|enviada|odesláno|komu|předmět"
    r"|sendte|skickades|στάλθηκε|προς|θέμα|trimis|către|subiect|enviado el|enviada em"
    r"|inviato il|送信日|抄送|dw|wysłane|kopia|sujet|pour|répondre à|antwort an|reply-to"
)
_HEADER = r"^\s*[*]?\s*(?:{})\s*[*]?\s*[:：]"
_FROM_LINE = re.compile(_HEADER.format(_FROM_LABELS), re.IGNORECASE)
_OTHER_LINE = re.compile(_HEADER.format(_OTHER_LABELS), re.IGNORECASE)

_RULE = re.compile(
    r"^\s*(?:_{8,}|-{2,}\s*[^-\s][^-]{0,80}?\s*-{2,}|-{20,})\s*$"
)
_FORWARDED_WORDS = (
    "begin forwarded message", "début du message réexpédié", "debut du message reexpedie",
    "début du message transféré", "anfang der weitergeleiteten nachricht",
    "inicio del mensaje reenviado", "inizio messaggio inoltrato", "begin doorgestuurd bericht",
    "início da mensagem reencaminhada", "início da mensagem encaminhada",
    "inicio da mensagem encaminhada", "vidarebefordrat meddelande", "vidarebefordrat mejl",
    "początek przekazywanej wiadomości", "начало переадресованного сообщения", "转发的邮件",
    "轉寄的郵件", "転送されたメッセージ", "forwarded message",
)
_FORWARDED = re.compile(
    r"(?i)^\s*(?:以下是)?(?:" + "|".join(map(re.escape, _FORWARDED_WORDS)) + r")\s*[:：]"
)
_QUOTED = re.compile(r"^\s*(?:>|&gt;)")
_SIGNATURE = re.compile(r"^--\s*$")
_FOOTER = re.compile(
    r"(?i)^\s*(?:sent from (?:my|outlook|mail|yahoo)|get outlook for|envoyé de mon"
    r"|envoye de mon|von meinem .{1,40} gesendet|gesendet von (?:meinem|mail)|enviado desde mi"
    r"|enviado do meu"
    r"|inviato da|verzonden (?:met|vanaf) mijn|verstuurd (?:met|vanaf) mijn|skickat från min"
    r"|wysłane z|отправлено с|从我的|发自我的|iphoneから送信|.{0,30}(?:iphone|ipad|android)"
    r"(?:から送信|에서 보냄)).{0,60}$"
)


def _joined(lines: Sequence[str], start: int, count: int) -> str:
    return " ".join(line.strip() for line in lines[start:start + count])


def _attribution_at(lines: Sequence[str], i: int) -> bool:
    """Does an attribution line (possibly wrapped over the next lines) start at line i?"""
    if not lines[i].strip():
        return False
    for count in range(1, WINDOW + 1):
        if i + count > len(lines) or (count > 1 and not lines[i + count - 1].strip()):
            break
        text = _joined(lines, i, count)
        if len(text) > 400:
            break
        if not text.rstrip().endswith(_ENDINGS):
            continue
        if _ATTRIBUTION.search(text):
            return True
        if _ENDS_WITH_COLON.search(text) and (_ADDRESS.search(text) or _DATEISH.search(text)):
            after = [line for line in lines[i + count:i + count + 3] if line.strip()]
            if after and _QUOTED.match(after[0]):
                return True
    return False


def _outlook_block_at(lines: Sequence[str], i: int) -> bool:
    if not _FROM_LINE.match(lines[i]):
        return False
    following = [line for line in lines[i + 1:i + 6] if line.strip()][:4]
    return any(_OTHER_LINE.match(line) for line in following)


def first_quote(lines: Sequence[str], guards: Iterable[Guard] = ()) -> int:
    """The index of the first line that is quoted mail, a quote's attribution or header
    block, a signature or a phone footer; ``len(lines)`` when there is none. A line for which
    any of ``guards`` is true counts too (the caller's own marks of quoted mail)."""
    checks = list(guards)
    for i, line in enumerate(lines):
        if (
            _QUOTED.match(line)
            or _SIGNATURE.match(line)
            or _FOOTER.match(line)
            or _RULE.match(line)
            or _FORWARDED.match(line)
            or _outlook_block_at(lines, i)
            or _attribution_at(lines, i)
            or any(g(line) for g in checks)
        ):
            return i
    return len(lines)


def unflow(lines: Sequence[str], *, delsp: bool) -> list[str]:
    """RFC 3676 format=flowed made into the lines it stands for: a line ending in a space
    continues on the next line of the same quote depth; space-stuffing removed."""
    out: list[str] = []
    carry: str | None = None
    carry_depth = -1
    for raw in lines:
        depth = len(raw) - len(raw.lstrip(">"))
        text = raw[depth:]
        if text.startswith(" "):
            text = text[1:]  # space-stuffed (or the space after the quote marks)
        if carry is not None and depth != carry_depth:
            out.append(">" * carry_depth + (" " if carry_depth else "") + carry)
            carry = None
        soft = text.endswith(" ") and text != "-- "
        piece = text[:-1] if soft and delsp else text
        carry = (carry or "") + piece if carry is not None else piece
        carry_depth = depth
        if not soft:
            out.append(">" * depth + (" " if depth else "") + carry)
            carry = None
    if carry is not None:
        out.append(">" * carry_depth + (" " if carry_depth else "") + carry)
    return out


def our_mail(alias: str, code_name: str | None, names_our_address: Guard) -> list[Guard]:
    """Tests for lines that can only come from quoting our own mail, whatever the client and
    language: the alias in angle brackets or brackets or a mailto (every attribution line and
    header block of a reply to coc-mail names the sender so), a thread post's sender name
    ("Ada Example via home shelf"), and any ``+`` address of ours (``names_our_address``)."""
    at = re.escape(alias)
    marks: list[Guard] = [
        re.compile(rf"(?i)[<\[(]\s*(?:mailto:)?{at}\s*[>\])]|mailto:{at}").search]
    if code_name:
        words = code_name.split()
        via = r"\s+".join(re.escape(w) for w in words)
        marks.append(re.compile(rf"(?i)\bvia\s+{via}\b").search)
        # ... and the same wrapped by the client after its first word
        marks.append(re.compile(rf"(?i)\bvia\s+{re.escape(words[0])}\s*$").search)
    return [*marks, names_our_address]
