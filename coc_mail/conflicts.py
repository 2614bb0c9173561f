"""The conflict-of-interest rules, all in one file: who may hear of a case, and who may not."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from .config import Member, Settings


def normalize_name(name: str) -> str:
    """Compare names without case, accents or spacing differences ("José  Roe" == "jose roe")."""
    folded = unicodedata.normalize("NFKD", name)
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    return re.sub(r"\s+", " ", folded).strip().casefold()


def entry_matches(entry: str, *, address: str | None = None, name: str | None = None) -> bool:
    """Does one ``conflicts`` entry (an address or a name) designate this person?"""
    entry = entry.strip()
    if "@" in entry:
        return address is not None and entry.lower() == address.strip().lower()
    return name is not None and bool(name.strip()) and normalize_name(entry) == normalize_name(name)


def has_known_conflict(
    member: Member,
    *,
    address: str | None,
    name: str | None,
    declared: Iterable[str] = (),
) -> bool:
    """The member listed this person in ``conflicts`` (or ``declared`` them by mail with
    ``/conflicts``), or the person is the member."""
    if address and address.strip().lower() == member.email:
        return True
    if name and normalize_name(name) == normalize_name(member.name):
        return True
    entries = [*member.conflicts, *declared]
    return any(entry_matches(e, address=address, name=name) for e in entries)


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
