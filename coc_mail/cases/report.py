"""A new report: a code-named case opened, copies to the members it may reach, an acknowledgment."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session

from coc_mail.app import App
from coc_mail.cases import audit, conflicts, document
from coc_mail.cases.members import declared_conflicts, pending_members
from coc_mail.cases.standing import (
    CASE_MEMBERS,
    CODE_NAMES,
    Standing,
    first_standings,
    unused_code_name,
)
from coc_mail.cases.unit import Unit
from coc_mail.mail.compose import text_message
from coc_mail.store import Case, attach, count_up, deferred_blob, fill_blob, new_row, utcnow

log = logging.getLogger(__name__)

DIGEST_PENDING = "digest-pending"
MEMBER_STATE = "coc-mail member state"
CASES = Case.__table__  # type: ignore[attr-defined]
_NEW_CASE = insert(CASES).returning(CASES.c.id)  # built once: building cost more than running


def open_case(unit: Unit, without: list[str]) -> None:
    """Open a case for the message and send it to every member the conflict rules allow."""
    app, msg, session = unit.app, unit.msg, unit.session
    reporter = msg.sender or None
    unit.verdict()  # slow work first (DNS), before anything is written
    report = app.keys.seal(msg.content, "cases.report")
    code_name = unused_code_name(session)
    values = {
        "code_name": code_name,
        "reporter_key": app.keys.tag("reporter", app.addresses.reporter_token(code_name)),
        "reporter": app.keys.seal_text(reporter, "cases.reporter") if reporter else None,
    }
    pending, declared = member_state(app, session)
    decision = conflicts.intake(
        app.settings,
        reporter_address=reporter,
        reporter_name=msg.from_name,
        without=without,
        pending=pending,
        declared=declared,
    )
    recipients = decision.recipients or [
        m for m in app.settings.members if m not in decision.excluded and m.handle not in pending
    ]
    flood = flooding(app, session, reporter or "", msg.envelope.peer)
    if flood:  # never dropped: opened, and listed in the next digest instead of mailed
        values["reminders"] = DIGEST_PENDING
    case = insert_case(session, values, report)  # the write transaction starts: slow work done
    unit.outbox.fresh.add(case.code_name)  # no copy of it exists yet: each first one is a root
    fill_blob(session, "cases", "report", int(case.id or 0), report)
    del report  # stored: a big report is not held twice while its copies are built
    if not flood:
        intro = intake_intro(unit, case)
        for member in recipients:
            unit.forward(case, member, intro, notice="A new report")
    if reporter and not msg.is_automatic() and ack_allowed(app, session, reporter):
        acknowledge(unit, case, reporter)
    first = {m.handle: Standing.EXCLUDED for m in decision.excluded}
    first.update({m.handle: Standing.NOTIFIED for m in recipients})
    later = unit.outbox.later  # with the batch's other new cases (nothing reads them before)
    later(CODE_NAMES, [{"name": case.code_name}])
    later(CASE_MEMBERS, first_standings(app, case, first))
    later(audit.AUDIT_LOG, [audit.entry(app.keys, case.code_name, "coc-mail",
                                        "case opened (New)")])
    if not recipients:
        log.error("case %s: every member is excluded; nobody received it", case.code_name)
    log.info(
        "case %s opened: %d recipient(s), %d excluded%s",
        case.code_name,
        len(recipients),
        len(decision.excluded),
        " (a flood: held for the digest)" if flood else "",
    )


def insert_case(session: Session, values: dict[str, Any], report: bytes) -> Case:
    """Insert a new case of ``values`` (its sealed ``report`` beside it) with one Core
    statement and return it attached to the session as the stored row it now is: later
    changes to it are updates. A new case is the processor's commonest write under a flood;
    the unit of work's flush of one object, and the model's constructor, had each cost more
    than the insert."""
    row, case = new_row(Case, values, apart=("report",))  # not held twice: read if asked for
    stored = deferred_blob(session, report)
    if isinstance(stored, bytes):
        stmt, row["report"] = _NEW_CASE, stored
    else:  # a big report on SQLite: a zero blob of its size, filled in pieces (fill_blob)
        stmt = insert(CASES).values(report=stored).returning(CASES.c.id)
        row.pop("report", None)
    case.id = session.connection().execute(stmt, row).scalar_one()
    attach(session, case)
    return case


def member_state(app: App, session: Session) -> tuple[set[str], dict[str, list[str]]]:
    """Members not onboarded yet and conflicts declared by mail, read once per batch of new
    reports (the router forgets them after any other kind of mail: see :func:`forget`)."""
    state = session.info.get(MEMBER_STATE)
    if state is None:
        state = session.info[MEMBER_STATE] = (
            pending_members(app, session), declared_conflicts(app, session)
        )
    return state


def forget(session: Session) -> None:
    """Member mail may change what :func:`member_state` read: read it again next time."""
    session.info.pop(MEMBER_STATE, None)


def flooding(app: App, session: Session, sender: str, peer: str) -> bool:
    """Has this sender, or this client address, sent more reports this hour than
    ``intake.reports_per_hour_before_digest``? (Counted under keyed tags.)"""
    limit = app.settings.intake.reports_per_hour_before_digest
    if not limit:
        return False
    now = utcnow()
    hour = f"{now:%Y%m%d%H}"
    over = False
    if app.settings.intake.is_trusted(peer):
        peer = ""  # a front MTA relays for everyone: count senders only
    tags = {app.keys.tag("flood", who, hour) for who in (
        f"sender:{sender.lower()}" if sender else "", f"ip:{peer}" if peer else "") if who}
    for tag in sorted(tags):  # rows locked in one order: two daemons never deadlock on them
        over = count_up(session, tag, now.date()) > limit or over
    return over


def intake_intro(unit: Unit, case: Case) -> str:
    """The note above the attached report in each member's copy."""
    committee = unit.app.settings.committee
    where = ("It is in the web view, with its case document (link below)."
             if document.notice_mode(unit.app.settings)
             else "The report follows; the original is attached, unaltered.")
    lines = [
        f'A new report came in to {committee.address}: case "{case.code_name}",',
        f"opened {case.opened_at:%Y-%m-%d %H:%M} UTC. {where}",
        "",
    ]
    lines += unit.dkim_warning() + unit.client_note()
    lines += [
        "Reply to this message to write to the case. Nothing is archived.",
        "To start the conflict check, name the reported person:  /involves NAME",
        "Send /help for all commands.",
    ]
    return "\n".join(lines) + "\n"


def ack_allowed(app: App, session: Session, sender: str) -> bool:
    """At most ``intake.acknowledgments_per_day`` acknowledgments to one address a day."""
    limit = app.settings.intake.acknowledgments_per_day
    if not limit:
        return False
    return count_up(session, app.keys.tag("ack", sender.lower()), utcnow().date()) <= limit


def acknowledge(unit: Unit, case: Case, reporter: str) -> None:
    """Queue the acknowledgment template for the reporter, in reply to the report."""
    app, msg = unit.app, unit.msg
    committee = app.settings.committee
    rendered = app.templates.render("acknowledgment", committee=committee, case=case)
    subject = rendered.subject or f"Re: {msg.subject or 'your report'}"
    unit.outbox.queue(
        case=case,
        role="reporter",
        recipient=reporter,
        in_reply_to=msg.message_id or None,
        answer=True,
        build=lambda ids: text_message(
            from_name=committee.name,
            from_addr=app.alias,
            to=reporter,
            reply_to=app.addresses.reporter(case.code_name),
            subject=subject,
            body=rendered.body,
            ids=ids,
            loop=app.alias,
        ),
    )
