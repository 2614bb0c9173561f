"""The pure parts: address scheme, tokens, encryption, code names, conflict rules."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coc_mail import config
from coc_mail.cases import codenames, conflicts
from coc_mail.errors import StorageKeyError
from coc_mail.mail.addresses import Addresses, Kind
from coc_mail.store.crypto import Keyring

KEYS = Keyring(b"k" * 32)
ADDR = Addresses("conduct@example.org", KEYS)


def test_address_round_trips() -> None:
    assert ADDR.parse("conduct@example.org").kind is Kind.ALIAS  # type: ignore[union-attr]
    assert ADDR.parse("CONDUCT@Example.ORG").kind is Kind.ALIAS  # type: ignore[union-attr]
    r = ADDR.parse(ADDR.case("home shelf", "ada"))
    assert r is not None and r.kind is Kind.CASE and r.value == "home shelf"
    assert KEYS.check_token(r.token, "case", "home shelf", "ada")
    assert not KEYS.check_token(r.token, "case", "home shelf", "grace")
    r = ADDR.parse(ADDR.reporter("home shelf"))
    assert r is not None and r.kind is Kind.REPORTER
    r = ADDR.parse(ADDR.member("ada"))
    assert r is not None and r.kind is Kind.MEMBER
    r = ADDR.parse(ADDR.without("ada"))
    assert r is not None and (r.kind, r.value) == (Kind.WITHOUT, "ada")
    uid = ADDR.new_copy_uid()
    r = ADDR.parse(ADDR.bounce(uid))
    assert r is not None and (r.kind, r.value) == (Kind.BOUNCE, uid)
    assert ADDR.parse(f"conduct-bounces+{uid}.aaaaaaaaaaaaaaaa@example.org") is None
    assert ADDR.parse("postmaster@example.org").kind is Kind.POSTMASTER  # type: ignore[union-attr]
    assert ADDR.parse("conduct@other.org") is None
    assert ADDR.parse("someone@example.org") is None


def test_tokens_are_80_bits_and_depend_on_the_key() -> None:
    token = KEYS.token("case", "home shelf", "ada")
    assert re.fullmatch(r"[a-z2-7]{16}", token)  # 16 base32 chars = 80 bits
    assert Keyring(b"j" * 32).token("case", "home shelf", "ada") != token
    assert KEYS.token("case", "home shelf", "ada") == token
    # the separator cannot be forged by moving text between parts
    assert KEYS.token("case", "home shelfa", "da") != token


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=120))
def test_address_parser_never_crashes(text: str) -> None:
    result = ADDR.parse(text)
    if result is not None:
        address = text.strip().strip("<>").lower()
        assert address.endswith("@example.org") or address == "postmaster"


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"conduct\+[a-z]{1,10}-[a-z]{1,10}\.[a-z2-7]{16}@example\.org",
                     fullmatch=True))
def test_guessed_case_tokens_are_rejected(address: str) -> None:
    r = ADDR.parse(address)
    assert r is not None and r.kind is Kind.CASE
    assert not any(KEYS.check_token(r.token, "case", r.value, h) for h in ("ada", "grace"))


def test_seal_and_open() -> None:
    sealed = KEYS.seal(b"secret report", "cases.report")
    assert b"secret" not in sealed
    assert KEYS.open(sealed, "cases.report") == b"secret report"
    assert KEYS.seal(b"x", "a") != KEYS.seal(b"x", "a"), "random nonces"
    with pytest.raises(StorageKeyError):
        KEYS.open(sealed, "cases.reporter")  # moved to another column
    with pytest.raises(StorageKeyError):
        Keyring(os.urandom(32)).open(sealed, "cases.report")  # another key
    with pytest.raises(StorageKeyError):
        Keyring(b"short")


def test_code_names() -> None:
    names = {codenames.new_code_name() for _ in range(300)}
    assert len(names) > 290
    for name in names:
        first, second = name.split(" ")
        assert re.fullmatch(r"[a-z]{2,14}", first) and re.fullmatch(r"[a-z]{2,14}", second)
        assert first not in codenames.BLOCKED and second not in codenames.BLOCKED
    assert codenames.slug("home shelf") == "home-shelf"
    for word in ("sexy", "crazy", "fat", "black", "pig", "rat"):
        assert word in codenames.BLOCKED


def _settings() -> config.Settings:
    return config.parse(
        """
[committee]
name = "C"
address = "conduct@example.org"
[[members]]
name = "Ada Example"
email = "ada@example.net"
roles = ["triage"]
conflicts = ["pat@example.com", "José  Roe"]
[[members]]
name = "Grace Sample"
email = "grace@example.net"
[[members]]
name = "Linus Placeholder"
email = "linus@example.net"
roles = ["triage"]
"""
    )


def test_conflict_rules() -> None:
    s = _settings()
    ada = s.members[0]
    assert conflicts.has_known_conflict(ada, address="PAT@example.com", name=None)
    assert conflicts.has_known_conflict(ada, address=None, name="jose roe")
    assert conflicts.has_known_conflict(ada, address="ada@example.net", name=None)
    assert conflicts.has_known_conflict(ada, address=None, name="ADA  example")
    assert not conflicts.has_known_conflict(ada, address="pat@example.org", name="Pat")
    d = conflicts.intake(s, reporter_address="pat@example.com", reporter_name="Pat",
                         without=["linus"])
    assert [m.handle for m in d.recipients] == ["grace"]
    assert {m.handle for m in d.excluded} == {"ada", "linus"}
    tri = s.model_copy(update={"intake": config.Intake(forward="triage")})
    d = conflicts.intake(tri, reporter_address="x@example.com", reporter_name="X")
    assert [m.handle for m in d.recipients] == ["ada", "linus"]


@pytest.mark.parametrize(("named", "name", "address"), [
    ("Jordan Roe", "Jordan Roe", ""), ("jordan@example.com", "", "jordan@example.com"),
    ("Jordan Roe <JORDAN@example.com>", "Jordan Roe", "jordan@example.com"),
    ("mailto:jordan@example.com", "", "jordan@example.com"),
    ("Jordan Roe (jordan@example.com).", "Jordan Roe", "jordan@example.com"),
    ('"Roe, Jordan" <j@example.com>', "Roe, Jordan", "j@example.com"),
])
def test_a_reported_person_is_a_name_an_address_or_both(named: str, name: str,
                                                       address: str) -> None:
    person = conflicts.Person.named(named)
    assert (person.name, person.address) == (name, address)


def test_reported_people_are_matched_by_address_and_by_name() -> None:
    ada = _settings().members[0]  # Ada Example, ada@example.net; conflicts name Jose Roe, Pat
    for named in ("ada@example.net", "Someone <ADA@example.net>", "Example, Ada",
                  "ada  EXAMPLE.", "pat@example.com", "Roe, José"):
        assert conflicts.conflicts_with_person(ada, conflicts.Person.named(named)), named
    assert not conflicts.conflicts_with_person(ada, conflicts.Person.named("Ada Exampler"))
    assert conflicts.conflicts_with_person(ada, conflicts.Person.named("x@example.org"),
                                           ["Someone <x@example.org>"])


FORMULAS = ["=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1", "＝1", " =1",
            '=HYPERLINK("http://x","y")']


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=30) | st.sampled_from(FORMULAS), min_size=7, max_size=7))
def test_no_export_cell_is_a_formula(row: list[str]) -> None:
    import csv
    import io

    from openpyxl import load_workbook

    from coc_mail.cases import status

    for cell in next(csv.reader(io.StringIO(status.render([row], "csv").decode().split(
            "\n", 1)[1]))) if "\n" not in "".join(row) and "\r" not in "".join(row) else []:
        assert not cell.lstrip(" ").startswith(status.FORMULA_START), cell
    ws = load_workbook(io.BytesIO(status.render([row], "xlsx"))).active
    assert ws is not None
    assert all(c.data_type == "s" for c in ws[2] if c.value is not None)
    md = status.render([row], "md").decode().splitlines()[2]
    assert len(re.split(r"(?<!\\)\|", md.strip()[1:-1])) == 7, md


def test_the_budget_names_the_limit_without_content() -> None:
    from coc_mail.mail import budget

    limits = budget.Limits()
    ok = (b"From: a@example.com\r\nContent-Type: multipart/alternative; boundary=B\r\n\r\n"
          b"--B\r\nContent-Type: text/plain\r\n\r\nhi\r\n--B\r\nContent-Type: text/html\r\n\r\n"
          b"<p>hi</p>\r\n--B--\r\n")
    assert budget.check(ok, limits) == ""
    parts = b"Content-Type: multipart/mixed; boundary=B\r\n\r\n" + b"--B\r\n\r\nx\r\n" * 1001
    assert budget.check(parts, limits) == "more than 1000 MIME parts"
    deep = b"Content-Type: message/rfc822\r\n\r\n" * 31 + b"\r\nx"
    assert "nested more than 30" in budget.check(deep, limits)
    inner = b"Content-Type: multipart/mixed; boundary=\"C\"\r\n\r\n--C\r\n\r\nx\r\n--C--\r\n"
    nested = b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n" + inner + b"--B--\r\n"
    assert budget.check(nested, budget.Limits(parts=3)) == ""
    assert budget.check(nested, budget.Limits(parts=2)) == "more than 2 MIME parts"
    params = b"Content-Type: text/plain; " + b"; ".join(b"p%d=1" % i for i in range(101))
    assert "parameters" in budget.check(params + b"\r\n\r\nx", limits)
    quoted = b'Content-Type: text/plain; name="' + b";" * 500 + b'"\r\n\r\nx'
    assert budget.check(quoted, limits) == ""  # semicolons inside quotes are no parameters
    dkim = b"DKIM-Signature: v=1; h=" + b":".join([b"from"] * 101) + b"; b=x\r\n\r\nx"
    assert "DKIM" in budget.check(dkim, limits)


@pytest.mark.parametrize(("value", "mailbox"), [
    ("Ada <ada@example.net>", "ada@example.net"), ("ADA@Example.NET", "ada@example.net"),
    ('"Example, Ada" <ada@example.net>', "ada@example.net"),
    ("ada@example.net <mallory@example.com>", ""), ("ada@example.net, m@example.com", ""),
    ('"ada@example.net" <m@example.com>', ""), ("=?utf-8?q?ada=40example.net?= <m@x.org>", ""),
    ("g: ada@example.net;", ""), ("Ada <ada@example.net> (m@example.com)", ""),
    ("Ada <ada@example.net", ""), ("Ada <@route:ada@example.net>", ""), ("", ""),
])
def test_a_from_is_one_mailbox_strictly(value: str, mailbox: str) -> None:
    from coc_mail.mail.message import Envelope, Incoming

    msg = Incoming(Envelope("x@example.com", []), f"From: {value}\r\n\r\nbody".encode())
    assert msg.mailbox == mailbox


@pytest.mark.parametrize("named", [
    "Dr. Mallory Member", "Mallory Q. Member", "Mallory Member (she/her)", "Mallory-Member",
    "mallory+coc@Example.net", "Mallory Member Jr.", "M. Member", "Mallory M.", "mallory",
    "Member", "MEMBER, Mallory",
])
def test_a_member_who_may_be_the_person_named(named: str) -> None:
    mallory = config.Member(name="Mallory Member", email="mallory@example.net")
    assert conflicts.may_be(mallory, conflicts.Person.named(named)), named


@pytest.mark.parametrize("named", ["Jordan Roe", "Mary Member", "Mal", "mallory@example.org"])
def test_a_member_who_is_not_the_person_named(named: str) -> None:
    mallory = config.Member(name="Mallory Member", email="mallory@example.net")
    assert not conflicts.may_be(mallory, conflicts.Person.named(named)), named


def test_a_thread_sender_wrapped_by_the_client_ends_what_was_written() -> None:
    from coc_mail.mail import quotes

    marks = quotes.our_mail("conduct@example.org", "zippy pelican", lambda line: False)
    lines = ["Thanks, we will call them.", "From: Grace Sample via zippy", "pelican", "text"]
    assert quotes.first_quote(lines, marks) == 1
