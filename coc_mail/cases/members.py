"""The member roster: onboarding, declared conflicts, who is pending, and handle changes."""

from __future__ import annotations

import json
import logging

from sqlmodel import Session, col, select, update

from coc_mail.app import App
from coc_mail.cases import document
from coc_mail.cases.standing import member_tag
from coc_mail.delivery.outbox import Outbox
from coc_mail.store import Case, CaseMember, MemberRecord, utcnow

log = logging.getLogger(__name__)


def declared_conflicts(app: App, session: Session) -> dict[str, list[str]]:
    """Conflicts each member declared by mail (``/conflicts``), by handle."""
    records = {r.member_tag: r for r in session.exec(select(MemberRecord))}
    out: dict[str, list[str]] = {}
    for m in app.settings.members:
        r = records.get(member_tag(app, m.handle))
        if r is not None and r.conflicts:
            out[m.handle] = list(json.loads(app.keys.open(r.conflicts, "member_records.conflicts")))
    return out


def pending_members(app: App, session: Session) -> set[str]:
    """Handles of members who may not receive case mail yet: onboarding not answered, or no
    record at all (a member added to the file whose onboarding has not been sent)."""
    active = {
        r.member_tag
        for r in session.exec(select(MemberRecord).where(MemberRecord.state == "active"))
    }
    return {m.handle for m in app.settings.members if member_tag(app, m.handle) not in active}


def reported_names(app: App, session: Session) -> list[str]:
    """Everyone reported so far (the onboarding list), without duplicates."""
    names: dict[str, str] = {}
    for case in session.exec(select(Case).where(col(Case.reported).is_not(None))):
        for name in document.reported_people(app.keys, case):
            names.setdefault(" ".join(name.split()).casefold(), name)
    return sorted(names.values(), key=str.casefold)


def sync_members(app: App, outbox: Outbox, session: Session) -> list[str]:
    """Give every configured member a record; members new since the last start get the
    onboarding mail. On a database with no records (the first start), the configured members
    are the founding committee and need no onboarding. A member whose handle changed but whose
    address did not (renamed in the file, the handle taken from the name) is the same member:
    their record and standings move to the new handle, so no exclusion is lost. Returns the
    onboarded handles."""
    records = {r.member_tag: r for r in session.exec(select(MemberRecord))}
    founding = not records
    configured = {member_tag(app, m.handle) for m in app.settings.members}
    by_email = {r.email_tag: r for r in records.values()
                if r.email_tag and r.member_tag not in configured}
    onboarded: list[str] = []
    names: list[str] | None = None
    for member in app.settings.members:
        tag = member_tag(app, member.handle)
        email_tag = app.keys.tag("member-email", member.email)
        if tag in records:
            if records[tag].email_tag != email_tag:
                records[tag].email_tag = email_tag
                session.add(records[tag])
            continue
        old = by_email.pop(email_tag, None)
        if old is not None:
            _rekey(session, old.member_tag, tag)
            log.warning("a member's handle changed (same address): record and standings "
                        "carried over")
            continue
        if founding:
            session.add(MemberRecord(member_tag=tag, state="active", answered_at=utcnow(),
                                     email_tag=email_tag))
            continue
        session.add(MemberRecord(member_tag=tag, state="pending", email_tag=email_tag))
        if names is None:
            names = reported_names(app, session)
        rendered = app.templates.render(
            "onboarding", committee=app.settings.committee, member=member, reported_names=names
        )
        outbox.to_member(member, None, rendered.subject or "Welcome", rendered.body)
        onboarded.append(member.handle)
        log.info("member onboarding sent (%d names listed)", len(names))
    return onboarded


def _rekey(session: Session, old: str, new: str) -> None:
    session.execute(update(CaseMember).where(col(CaseMember.member_tag) == old)
                    .values(member_tag=new))
    session.execute(update(MemberRecord).where(col(MemberRecord.member_tag) == old)
                    .values(member_tag=new))
