"""Deadlines of the procedure, checked every minute: conflict-check reminders and deadline,
reminders to name the reported person, to follow up with the reporter and on stale cases,
and the retention purge of resolved documents."""

from __future__ import annotations

import datetime as dt
import logging
import threading

from sqlalchemy import text
from sqlmodel import Session, col, delete, select

from coc_mail.app import App
from coc_mail.cases import audit
from coc_mail.cases.standing import Standing, member_tag, receiving_members, set_standing, standings
from coc_mail.config import Member
from coc_mail.delivery.outbox import Outbox
from coc_mail.store import (
    AckBudget,
    Case,
    CaseMember,
    DocEntry,
    ProcessedInbound,
    drop_unused_bodies,
    utcnow,
)

log = logging.getLogger(__name__)
WARN_BEFORE_PURGE = dt.timedelta(days=7)


def remind(app: App, outbox: Outbox, case: Case, members: list[Member], reason: str) -> None:
    for m in members:
        rendered = app.templates.render(
            "reminder", committee=app.settings.committee, case=case, member=m, reason=reason
        )
        subject = rendered.subject or f"[{case.code_name}] Reminder"
        outbox.to_member(m, case, subject, rendered.body)


def _members(app: App, handles: list[str]) -> list[Member]:
    return [m for m in app.settings.members if m.handle in handles]


def _once(case: Case, key: str) -> bool:
    """True the first time ``key`` is asked for this case (and remembers it)."""
    keys = set(filter(None, case.reminders.split(",")))
    if key in keys:
        return False
    if key.startswith("stale"):  # only the latest inactivity reminder needs remembering
        keys = {k for k in keys if not k.startswith("stale")}
    keys.add(key)
    case.reminders = ",".join(sorted(keys))
    return True


def conflict_checks(app: App, session: Session, outbox: Outbox, now: dt.datetime) -> int:
    """Halfway reminders to members who have not answered, and silence at the deadline."""
    changed = 0
    for case in session.exec(select(Case).where(col(Case.check_deadline).is_not(None))
                             .with_for_update()):
        assert case.check_deadline is not None and case.check_started_at is not None
        asked = [h for h, s in standings(app, session, case).items() if s is Standing.ASKED]
        if not asked:
            continue
        if now >= case.check_deadline:
            for handle in asked:
                set_standing(app, session, case, handle, Standing.SILENT)
                audit.record(app.keys, session, case.code_name, "coc-mail",
                             "member not added: no answer to the conflict check")
            changed += len(asked)
            continue
        halfway = case.check_started_at + (case.check_deadline - case.check_started_at) / 2
        if now >= halfway and app.settings.intake.conflict_check_reminder:
            todo = []
            for handle in asked:
                row = session.get(CaseMember, (case.id, member_tag(app, handle)))
                if row is not None and not row.reminded:
                    row.reminded = True
                    session.add(row)
                    todo.append(handle)
            remind(app, outbox, case, _members(app, todo),
                   f"please answer the conflict check (/noconflict or /conflict) by "
                   f"{case.check_deadline:%Y-%m-%d %H:%M} UTC")
            changed += len(todo)
    return changed


def case_reminders(app: App, session: Session, outbox: Outbox, now: dt.datetime) -> int:
    cfg = app.settings.cases
    sent = 0
    for case in session.exec(select(Case).where(col(Case.status).in_(("New", "Ongoing")))
                             .with_for_update()):
        receiving = _members(app, receiving_members(app, session, case))
        reason = ""
        if (case.status == "New" and cfg.remind_unchecked_hours
                and now - case.opened_at >= dt.timedelta(hours=cfg.remind_unchecked_hours)
                and _once(case, "unchecked")):
            reason = "nobody has named the reported person yet (reply /involves NAME)"
        elif (case.status == "Ongoing" and cfg.remind_followup_days
                and case.last_followup_at is None
                and now - case.opened_at >= dt.timedelta(days=cfg.remind_followup_days)
                and _once(case, "followup")):
            reason = "the reporter has had no follow-up yet (/followup TEMPLATE)"
        elif (cfg.stale_days and now - case.updated_at >= dt.timedelta(days=cfg.stale_days)
                and _once(case, f"stale{case.updated_at:%Y%m%d%H%M}")):
            reason = f"nothing has happened for {cfg.stale_days:g} days"
        if reason and receiving:
            remind(app, outbox, case, receiving, reason)
            session.add(case)
            sent += len(receiving)
    return sent


def purge(app: App, session: Session, outbox: Outbox, now: dt.datetime) -> int:
    """Purge the documents of cases resolved ``cases.purge_after_days`` ago (warning a week
    before); the status-sheet row stays. Returns the number of documents purged."""
    days = app.settings.cases.purge_after_days
    if not days:
        return 0
    purged = 0
    for case in session.exec(select(Case).where(Case.status == "Resolved")
                             .where(col(Case.purged_at).is_(None))):
        assert case.resolved_at is not None
        due = case.resolved_at + dt.timedelta(days=days)
        if now >= due:
            case.report = case.reporter = case.reported = None
            case.purged_at = now
            session.exec(delete(DocEntry).where(col(DocEntry.case_id) == case.id))
            session.add(case)
            audit.record(app.keys, session, case.code_name, "coc-mail", "document purged")
            purged += 1
        elif now >= due - WARN_BEFORE_PURGE and not case.purge_warned:
            case.purge_warned = True
            session.add(case)
            remind(app, outbox, case, _members(app, receiving_members(app, session, case)),
                   f"its document will be purged on {due:%Y-%m-%d} (retention); send /doc "
                   "before then if it must be kept elsewhere")
    return purged


def digests(app: App, session: Session, outbox: Outbox) -> int:
    """Reports held during a flood: one message per member listing the new cases, each with
    the member's own address for it (reply there with /doc to read one, /discard for spam)."""
    held = session.exec(
        select(Case).where(col(Case.reminders).contains("digest-pending")).with_for_update()
    ).all()
    if not held:
        return 0
    per_member: dict[str, list[Case]] = {}
    for case in held:
        case.reminders = case.reminders.replace("digest-pending", "digest-sent")
        session.add(case)
        for handle in receiving_members(app, session, case):
            per_member.setdefault(handle, []).append(case)
    for member in app.settings.members:
        cases = per_member.get(member.handle)
        if not cases:
            continue
        lines = [
            f"{len(cases)} report(s) arrived from one sender or client address in a short",
            "time (a flood?). Each one is a case, listed here instead of mailed one by one:",
            "",
        ] + [
            f"  {c.code_name:<28} {c.opened_at:%Y-%m-%d %H:%M} UTC  "
            f"{app.addresses.case(c.code_name, member.handle)}"
            for c in cases
        ] + [
            "",
            "Write to a case's address with /doc to read its report, /discard if it is spam,",
            "or /involves NAME to start its conflict check.",
        ]
        subject = f"{len(cases)} new report(s) held during a flood"
        outbox.to_member(member, None, subject, "\n".join(lines) + "\n")
    log.info("digest of %d held report(s) sent", len(held))
    return len(held)


def forget_old_counters(session: Session, now: dt.datetime) -> None:
    """Drop yesterday's counters, day-old processed-message marks and shared bodies no queued
    copy uses (left when two daemons deleted a body's last copies at the same moment)."""
    session.exec(delete(AckBudget).where(col(AckBudget.day) < now.date()))
    day_ago = now - dt.timedelta(days=1)
    session.exec(delete(ProcessedInbound).where(col(ProcessedInbound.at) < day_ago))
    drop_unused_bodies(session, older_than=now - dt.timedelta(hours=1))


def tick(app: App, *, only_purge: bool = False) -> int:
    """One pass over every deadline, in one transaction. Returns how many things changed."""
    now = utcnow()
    with Session(app.engine, autoflush=False) as session:
        if session.get_bind().dialect.name == "postgresql" and not session.connection().execute(
            text("SELECT pg_try_advisory_xact_lock(7310042)")  # one daemon at a time
        ).scalar():
            return 0
        outbox = Outbox(app, session)
        changed = purge(app, session, outbox, now)
        if not only_purge:
            changed += digests(app, session, outbox)
            changed += conflict_checks(app, session, outbox, now)
            changed += case_reminders(app, session, outbox, now)
            forget_old_counters(session, now)
        outbox.write(session)
        session.commit()
    return changed


class Scheduler:
    """Runs :func:`tick` every ``cases.check_interval_seconds`` in a thread."""

    def __init__(self, app: App, on_queued: object) -> None:
        self.app = app
        self.on_queued = on_queued
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.app.settings.cases.check_interval_seconds):
            try:
                if tick(self.app) and callable(self.on_queued):
                    self.on_queued()
            except Exception as exc:  # noqa: BLE001 - next minute, another try
                log.warning("reminders: pass failed (%s)", type(exc).__name__)
