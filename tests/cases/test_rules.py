"""Pure rules of cases/: code names, the conflict rules, reported people, export cells."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coc_mail import config
from coc_mail.cases import codenames, conflicts


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
