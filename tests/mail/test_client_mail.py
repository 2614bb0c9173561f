"""What real clients send, read as the daemon reads it: the corpus of tests/clients.py (Gmail,
Gmail for Android, Outlook, Outlook on the web, Apple Mail, iOS Mail, Thunderbird, K-9) in
every language and transfer encoding, through the daemon's own reader (coc_mail.mail.readable),
quote rules (coc_mail.mail.quotes), command parser and redaction (coc_mail.mail.redact)."""

from __future__ import annotations

import datetime as dt
import html
import itertools
import urllib.parse
from email import message_from_bytes
from email.message import EmailMessage, Message
from email.policy import SMTP, default

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coc_mail.cases import commands
from coc_mail.mail import quotes, readable
from coc_mail.mail.redact import Redactor
from tests import clients

ALIAS = "conduct@example.org"
CODE = "home shelf"
TOKEN = "abcdefghijklmnop"
ADDRESS = f"conduct+home-shelf.{TOKEN}@example.org"
QUOTED = clients.Quoted(
    from_name=f"Grace Sample via {CODE}", from_addr=ALIAS, to="Ada Example <ada@example.net>",
    reply_to=ADDRESS, date=dt.datetime(2026, 12, 1, 9, 14, tzinfo=dt.UTC),
    subject=f"[{CODE}] Next steps", text="QUOTED-THREAD-TEXT from Grace.\nSecond line.",
    message_id="<post-1@example.org>")


def written(raw: bytes) -> commands.Command | None:
    """The command as the daemon parses a member's mail about case CODE."""
    marks = quotes.our_mail(ALIAS, CODE, Redactor(ALIAS).found_in)
    body = readable.body(raw, marks)
    return commands.parse(body.lines, body.stop)


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("client", clients.CLIENTS)
def test_a_command_and_its_text_end_at_the_quote(client: str) -> None:
    """Every language and transfer encoding, multipart/alternative and HTML only."""
    typed = "/note summary\nWe met on Friday.\n\nNothing more: ünïcödé & <ok>."
    for lang, encoding, html_only in itertools.product(clients.LANGUAGES, clients.ENCODINGS,
                                                       (False, True)):
        shape = (client, lang, encoding, html_only)
        raw = clients.reply(client, sender="Ada Example <ada@example.net>", to=ADDRESS,
                            new_text=typed, quoted=QUOTED, lang=lang, encoding=encoding,
                            html_only=html_only)
        cmd = written(raw)
        assert cmd is not None and (cmd.name, cmd.args) == ("note", "summary"), shape
        assert words(cmd.body) == "We met on Friday. Nothing more: ünïcödé & <ok>.", shape
        assert "QUOTED-THREAD-TEXT" not in cmd.body, shape


@pytest.mark.parametrize("client", clients.CLIENTS)
def test_a_followup_sends_only_what_the_member_wrote(client: str) -> None:
    typed = "/followup followup\nDear reporter,\nWe spoke with the organisers today."
    for lang, encoding in itertools.product(clients.LANGUAGES, clients.ENCODINGS):
        raw = clients.reply(client, sender="Ada Example <ada@example.net>", to=ADDRESS,
                            new_text=typed, quoted=QUOTED, lang=lang, encoding=encoding)
        cmd = written(raw)
        assert cmd is not None and cmd.name == "followup", (lang, encoding)
        assert words(cmd.body) == "Dear reporter, We spoke with the organisers today.", (
            lang, encoding, cmd.body)
        for leak in ("via", "Grace", ALIAS, "QUOTED-THREAD-TEXT", "Sent from"):
            assert leak not in cmd.body, (lang, encoding, leak, cmd.body)


@pytest.mark.parametrize("client", clients.CLIENTS)
@pytest.mark.parametrize("lang", ["en", "de", "ja"])
def test_a_forward_is_a_post_not_a_command(client: str, lang: str) -> None:
    raw = clients.forward(client, sender="Ada Example <ada@example.net>", to=ADDRESS,
                          new_text="FYI, see below.", quoted=QUOTED, lang=lang)
    assert written(raw) is None
    assert "FYI, see below." in readable.body(raw).text


@pytest.mark.parametrize("client", clients.CLIENTS)
@pytest.mark.parametrize("html_only", [False, True])
def test_commands_in_new_mail_from_every_client(client: str, html_only: bool) -> None:
    raw = clients.compose(client, sender="Ada Example <ada@example.net>", to=ADDRESS,
                          subject="status", html_only=html_only,
                          text='/status safety=no repeat=maybe actions="Watch the social"\n'
                               "thanks")
    cmd = written(raw)
    assert cmd is not None and cmd.name == "status"
    assert cmd.args == 'safety=no repeat=maybe actions="Watch the social"'


def _independent_views(raw: bytes) -> list[str]:
    """A second reader, written apart from coc_mail.mail.readable: every part decoded by the
    standard library, with entities and URL escapes undone and nested messages opened."""
    out = [raw.decode("latin-1")]
    stack: list[Message] = [message_from_bytes(raw, policy=default)]
    while stack:
        part = stack.pop()
        out += [str(v) for v in part.values()]
        if part.is_multipart():
            stack += [p for p in part.get_payload() if isinstance(p, Message)]
            continue
        data = part.get_payload(decode=True)
        if isinstance(data, bytes):
            text = data.decode(part.get_content_charset() or "utf-8", "replace")
            out += [text, data.decode("latin-1")]
            if str(part.get_filename() or "").endswith(".eml"):
                stack.append(message_from_bytes(data, policy=default))
    return [urllib.parse.unquote(html.unescape(v)).lower() for v in out]


@pytest.mark.parametrize("client", clients.CLIENTS)
def test_forwards_lose_the_authors_address_and_keep_the_text(client: str) -> None:
    redactor = Redactor(ALIAS, [TOKEN])
    for encoding, html_only, as_attachment in itertools.product(
            clients.ENCODINGS, (False, True), (False, True)):
        shape = (encoding, html_only, as_attachment)
        raw = clients.forward(client, sender="Ada Example <ada@example.net>", to=ADDRESS,
                              new_text="MARK-fwd please read", quoted=QUOTED,
                              encoding=encoding, html_only=html_only,
                              as_attachment=as_attachment)
        out = redactor.message(raw)
        if client in ("thunderbird", "apple-mail", "ios-mail") or as_attachment:
            # these clients print the quoted Reply-To; an attachment holds it
            assert redactor.leaks(raw), ("the test message must carry the address", shape)
        assert not redactor.leaks(out), shape
        assert not any(TOKEN in v for v in _independent_views(out)), shape
        assert "MARK-fwd please read" in readable.body(out).text, shape


_ESCAPES = st.sampled_from(["plain", "pct", "dec", "hex", "named", "zw"])


def _obfuscate(text: str, choices: list[str]) -> str:
    out = []
    for ch, how in zip(text, itertools.cycle(choices), strict=False):
        if how == "pct" and not ch.isalnum():
            out.append(f"%{ord(ch):02X}")
        elif how == "dec":
            out.append(f"&#{ord(ch)};")
        elif how == "hex":
            out.append(f"&#x{ord(ch):x};")
        elif how == "named" and ch in "@+.":
            out.append({"@": "&commat;", "+": "&plus;", ".": "&period;"}[ch])
        elif how == "zw":
            out.append(ch + "\u200b")
        else:
            out.append(ch)
    return "".join(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(choices=st.lists(_ESCAPES, min_size=1, max_size=12),
       cte=st.sampled_from(["base64", "quoted-printable", "8bit", "7bit"]),
       where=st.sampled_from(["text", "html", "href", "both"]),
       charset=st.sampled_from(["utf-8", "iso-8859-1", "utf-16"]),
       upper=st.booleans())
def test_any_escaping_of_the_address_is_removed(choices: list[str], cte: str, where: str,
                                                charset: str, upper: bool) -> None:
    address = ADDRESS.upper() if upper else ADDRESS
    escaped = _obfuscate(address, choices)
    msg = EmailMessage()
    msg["From"] = "Ada Example <ada@example.net>"
    msg["Subject"] = "post"
    if charset == "utf-16" and cte in ("8bit", "7bit"):
        cte = "base64"
    plain = f"KEEP-THIS reply to {escaped if where in ('text', 'both') else 'me'}\n"
    if cte == "7bit" and not (plain + escaped).isascii():
        cte = "quoted-printable"
    try:
        (plain + escaped).encode(charset)
    except UnicodeEncodeError:
        charset = "utf-8"
    msg.set_content(plain, charset=charset, cte=cte)
    if where != "text":
        link = f'<a href="mailto:{escaped}">x</a>' if where == "href" else f"<p>{escaped}</p>"
        msg.add_alternative(f"<div>KEEP-THIS</div>{link}", subtype="html", charset=charset,
                            cte="base64" if cte in ("7bit", "8bit") and charset == "utf-16"
                            else cte)
    raw = msg.as_bytes(policy=SMTP)
    redactor = Redactor(ALIAS, [TOKEN])
    out = redactor.message(raw)
    assert redactor.leaks(raw)
    assert not redactor.leaks(out)
    assert not any(TOKEN in v.replace("\u200b", "") for v in _independent_views(out))
    assert "KEEP-THIS" in readable.body(out).text


def test_block_elements_are_lines() -> None:
    found = readable.html_body(
        "<div>/note summary</div><div>first line</div><div><br></div><p>para</p>"
        "<ul><li>one</li><li>two</li></ul><table><tr><td>a</td><td>b</td></tr></table>"
        "x<br>y<span> z</span><script>no()</script><style>p{}</style>")
    assert found.lines == ["/note summary", "first line", "", "para", "", "- one", "- two",
                           "", "a b", "", "x", "y z"]


@pytest.mark.parametrize("attribution", [
    "On Tue, Dec 1, 2026 at 9:14 AM Grace Sample via home shelf <\nconduct@example.org> wrote:",
    "Le mar. 1 déc. 2026 à 09:14, Grace <conduct@example.org> a\nécrit :",
    "Am 01.12.2026 um 09:14 schrieb Grace:",
    "El 1/12/26 a las 9:14, Grace escribió:",
    "W dniu 1.12.2026 o 09:14, Grace pisze:",
    "01.12.2026 09:14, Grace пишет:",
    "Grace <g@example.net> 于2026年12月1日周二 上午9:14写道：",
    "2026年12月1日(火) 9:14 Grace <g@example.net>:",
    "-----Original Message-----",
    "-----Ursprüngliche Nachricht-----",
    "________________________________\nFrom: Grace\nSent: Tuesday",
    "De : Grace\nEnvoyé : mardi 1 décembre 2026 09:14\nÀ : Ada",
    "Von: Grace\nGesendet: Dienstag\nAn: Ada\nBetreff: x",
    "Begin forwarded message:",
    "Sent from my iPhone",
    "-- ",
])
def test_quote_forms(attribution: str) -> None:
    lines = ["Thanks, we will talk to them.", "", *attribution.split("\n"), "> quoted text"]
    assert quotes.first_quote(lines) == 2, attribution


@pytest.mark.parametrize("line", [
    "I agree with what Linus wrote.", "From now on we meet weekly.", "Date: to be decided",
    "Here is the plan:", "We wrote to them: no answer yet.", "----", "Actions:",
])
def test_ordinary_lines_are_not_quotes(line: str) -> None:
    assert quotes.first_quote(["Hello", line, "More text."]) == 3, line


def test_flowed_text_is_unflowed() -> None:
    assert quotes.unflow(["This line is ", "continued.", "> quoted ", "> more", "-- ", "sig"],
                         delsp=False) == ["This line is continued.", "> quoted more", "-- ",
                                          "sig"]
