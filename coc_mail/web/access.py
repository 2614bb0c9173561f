"""Who may see what on the web, asked again on every request: the cases a member receives."""

from __future__ import annotations

import datetime as dt

from sqlmodel import Session, select

from coc_mail.app import App
from coc_mail.cases import standing
from coc_mail.config import Member
from coc_mail.store import Case, MemberRecord


def receives(app: App, session: Session, case: Case, member: Member) -> bool:
    """Whether ``member`` receives ``case`` now (cleared, not recused, conflicted, excluded or
    silent, and still in the configuration): the mail rule, unchanged."""
    return standing.receives(app, session, case, member.handle)


def cases_of(app: App, session: Session, member: Member, limit: int | None = None
             ) -> list[tuple[str, str, dt.datetime, dt.datetime]]:
    """The cases ``member`` receives, newest first: (code name, status, opened, updated)."""
    return standing.received_cases(app, session, member.handle, limit)


def case_of(app: App, session: Session, member: Member, code_name: str) -> Case | None:
    """The case named ``code_name`` ("home-shelf" or "home shelf") when ``member`` receives
    it; None otherwise, whether it does not exist or is not theirs (both answer 404)."""
    name = code_name.replace("-", " ").strip().lower()
    case = session.exec(select(Case).where(Case.code_name == name)).first()
    if case is None or not receives(app, session, case, member):
        return None
    return case


def onboarded(app: App, session: Session, member: Member) -> bool:
    """Whether ``member`` has answered onboarding (the status sheet is theirs to read):
    :func:`coc_mail.cases.members.pending_members` for one member, from their one row."""
    state = session.exec(select(MemberRecord.state).where(
        MemberRecord.member_tag == standing.member_tag(app, member.handle))).first()
    return state == "active"
