"""The conflict-of-interest rules, all in one file: who may hear of a case, and who may not."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from coc_mail.config import Member, Settings


def normalize_name(name: str) -> str:
    """Compare names without case, accents, spacing or punctuation at the ends, and in either
    order of "Last, First" ("José  Roe" == "jose roe" == "Roe, José")."""
    folded = unicodedata.normalize("NFKD", name)
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    folded = folded.strip(" \t\"'.,;:")
    last, comma, first = folded.partition(",")
    if comma and "," not in first and first.strip():
        folded = f"{first} {last}"
    return re.sub(r"\s+", " ", folded).strip().casefold()


# Bounded parts (RFC 5321's 64 and 255): a long text without "@" is scanned in linear time.
_LOCAL = r"[^\s<>()\[\]\"',;:@]{1,64}"
_DOMAIN = r"[^\s<>()\[\]\"',;:@.]{1,63}(?:\.[^\s<>()\[\]\"',;:@.]{1,63}){1,8}"
_ADDRESS = re.compile(rf"(?:mailto:)?({_LOCAL}@{_DOMAIN})", re.IGNORECASE)
MAX_NAMED = 320  # characters of a name as a member writes it; more is no name


@dataclass(frozen=True)
class Person:
    """Someone named by a member (``/involves``): a name, an address, or both, as written
    ("Jordan Roe", "jordan@example.com", "Jordan Roe <jordan@example.com>")."""

    name: str
    address: str

    @classmethod
    def named(cls, text: str) -> Person:
        text = " ".join(text[:MAX_NAMED].split())
        m = _ADDRESS.search(text)
        if m is None:
            return cls(text.strip(" \"'.,;:"), "")
        address = m.group(1).strip(".").lower()
        rest = (text[:m.start()] + text[m.end():]).replace("<>", " ").replace("()", " ")
        rest = re.sub(r"[<>()\[\]]", " ", rest)
        return cls(" ".join(rest.split()).strip(" \"'.,;:"), address)

    def __str__(self) -> str:
        if self.name and self.address:
            return f"{self.name} <{self.address}>"
        return self.name or self.address


def entry_matches(entry: str, *, address: str | None = None, name: str | None = None) -> bool:
    """Does one ``conflicts`` entry (an address, a name, or "Name <address>") designate this
    person? Addresses are compared with addresses, names with names."""
    person = Person.named(entry)
    if person.address and address and person.address == address.strip().lower():
        return True
    return bool(person.name and name and name.strip()
                and normalize_name(person.name) == normalize_name(name))


def has_known_conflict(
    member: Member,
    *,
    address: str | None,
    name: str | None,
    declared: Iterable[str] = (),
) -> bool:
    """The member listed this person in ``conflicts`` (or ``declared`` them by mail with
    ``/conflicts``), or the person is the member. An address is compared as an address and a
    name as a name, whichever of the two is known."""
    if address and address.strip().lower() == member.email:
        return True
    if name and normalize_name(name) == normalize_name(member.name):
        return True
    entries = [*member.conflicts, *declared]
    return any(entry_matches(e, address=address, name=name) for e in entries)


def may_be(member: Member, person: Person) -> bool:
    """Could ``person``, as a member named them, be this member? Their address, their name
    (see :func:`normalize_name`), their handle, one word of their name alone ("Mallory"), or
    their name with words shortened ("Mallory M.", "M. Member"). Erring this way only keeps a
    member out of a case; erring the other way would tell the reported person about it."""
    if person.address and _plain_address(person.address) == _plain_address(member.email):
        return True
    named = _name_words(person.name)
    if not named:
        return False
    mine = _name_words(member.name)
    if named == mine or named == [member.handle]:
        return True
    if len(named) == 1:
        return named[0] in mine
    if len(named) == len(mine) and all(m.startswith(w) for w, m in zip(named, mine, strict=True)
                                       ) and any(w == m for w, m in zip(named, mine, strict=True)):
        return True
    # a middle name or initial more or less: "Mallory Q. Member" is "Mallory Member"
    return named[0] == mine[0] and named[-1] == mine[-1]


_TITLES = {"dr", "mr", "mrs", "ms", "mx", "miss", "prof", "sir", "dame", "jr", "sr", "ii",
           "iii", "iv", "phd", "md", "esq"}


def _name_words(name: str) -> list[str]:
    """A name's words for :func:`may_be`: normalised, without parenthesised asides ("(she/her)"),
    titles and suffixes, hyphens and dots read as spaces."""
    text = re.sub(r"\([^)]*\)|\[[^]]*\]", " ", name)
    words = normalize_name(re.sub(r"[-.]", " ", text)).split()
    return [w for w in words if w not in _TITLES]


def _plain_address(address: str) -> str:
    """An address without its +tag (mallory+coc@x is mallory@x), lowercased."""
    local, at, domain = address.strip().lower().rpartition("@")
    return f"{local.split('+', 1)[0]}{at}{domain}"


def conflicts_with_person(member: Member, person: Person, declared: Iterable[str] = ()) -> bool:
    """Is the member possibly ``person`` (:func:`may_be`), or did they list them (by address
    or by name)?"""
    return may_be(member, person) or has_known_conflict(
        member, address=person.address or None, name=person.name or None, declared=declared)


@dataclass(frozen=True)
class IntakeDecision:
    """Who receives a new report and who is kept out of the case from the start."""

    recipients: list[Member]
    excluded: list[Member]


def intake(
    settings: Settings,
    *,
    reporter_address: str | None,
    reporter_name: str | None,
    without: Iterable[str] = (),
    pending: Iterable[str] = (),
    declared: dict[str, list[str]] | None = None,
) -> IntakeDecision:
    """Apply SPEC 4.1: all members (or the triage role) minus known conflicts with the
    reporter, the reporter themself if a member, and the members named by ``without.``.
    Members still ``pending`` onboarding get nothing (and are not excluded: they are
    considered when they answer)."""
    without_set = set(without)
    pending_set = set(pending)
    declared = declared or {}
    pool = [m for m in settings.members if m.handle not in pending_set]
    recipients: list[Member] = []
    excluded: list[Member] = []
    for member in settings.members:
        if member.handle in without_set or has_known_conflict(
            member,
            address=reporter_address,
            name=reporter_name,
            declared=declared.get(member.handle, ()),
        ):
            excluded.append(member)
        elif member in pool and (
            settings.intake.forward == "all" or "triage" in member.roles
        ):
            recipients.append(member)
    return IntakeDecision(recipients, excluded)
