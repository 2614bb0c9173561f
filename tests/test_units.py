"""The pure parts: address scheme, tokens, encryption, code names, conflict rules."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coc_mail import codenames, config, conflicts
from coc_mail.addresses import Addresses, Kind
from coc_mail.crypto import Keyring
from coc_mail.errors import StorageKeyError

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
