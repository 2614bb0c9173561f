"""Commands for any address: /statusreport, /conflicts (after onboarding) and /help."""

from __future__ import annotations

import json
from collections.abc import Iterable

from sqlmodel import col, select

from coc_mail.cases import document
from coc_mail.cases.commands.table import Command, general_command, help_text, usage
from coc_mail.cases.conflicts import Person, conflicts_with_person, has_known_conflict
from coc_mail.cases.members import pending_members
from coc_mail.cases.standing import Standing, member_tag, set_standing
from coc_mail.cases.status import report_text
from coc_mail.cases.work import Refusal, Work
from coc_mail.config import Member
from coc_mail.mail.message import Envelope, Incoming
from coc_mail.store import Case, MemberRecord, utcnow

MAX_CONFLICTS = 200  # entries of one /conflicts, each at most MAX_ENTRY characters
MAX_ENTRY = 200
OPEN = ("New", "Ongoing")


@general_command("statusreport", "/statusreport", "mail yourself the status sheet of all cases")
def statusreport(work: Work, case: Case | None, member: Member, cmd: Command) -> None:
    if member.handle in pending_members(work.app, work.session):
        raise Refusal("Answer your onboarding mail first (/conflicts ...).")
    work.reply(member, None, report_text(work.app, work.session))


@general_command("conflicts", "/conflicts none | /conflicts NAME, NAME",
                 "after onboarding: declare your conflicts of interest")
def declare_conflicts(work: Work, case: Case | None, member: Member, cmd: Command) -> None:
    app, session = work.app, work.session
    text = cmd.args.strip()
    if not text:
        raise Refusal(usage("conflicts"))
    names = [] if text.lower() == "none" else [
        " ".join(n.split()) for n in text.split(",") if n.strip()]
    if len(names) > MAX_CONFLICTS or any(len(n) > MAX_ENTRY for n in names):
        raise Refusal(f"At most {MAX_CONFLICTS} names or addresses of at most {MAX_ENTRY} "
                      "characters each; nothing was recorded.\n"
                      + usage("conflicts"))
    tag = member_tag(app, member.handle)
    record = session.get(MemberRecord, tag) or MemberRecord(member_tag=tag, state="pending")
    was_pending = record.state == "pending"
    record.state, record.answered_at = "active", utcnow()
    record.conflicts = app.keys.seal(json.dumps(names).encode(), "member_records.conflicts")
    session.add(record)
    added = join_open_cases(work, member, names) if was_pending else []
    left = [] if was_pending else leave_conflicting_cases(work, member, names)
    work.reply(
        member, None,
        ("Thank you. Your conflicts are recorded: " + (", ".join(names) or "none") + ".\n")
        + (f"You are now part of {len(added)} open case(s); each one's report follows.\n"
           if was_pending else "")
        + (f"You are out of {len(left)} case(s) where you now have a conflict.\n"
           if left else ""),
    )


def conflicted_with(work: Work, member: Member, case: Case, declared: Iterable[str]) -> bool:
    """Known conflict with the case's reporter (address or name) or reported person."""
    app = work.app
    reporter = app.keys.open_text(case.reporter, "cases.reporter") if case.reporter else None
    reporter_name = None
    if case.report is not None:
        report = app.keys.open(case.report, "cases.report")
        reporter_name = Incoming(Envelope("", []), report).from_name or None
    return has_known_conflict(member, address=reporter, name=reporter_name,
                              declared=declared) or any(
        conflicts_with_person(member, Person.named(p), declared)
        for p in document.reported_people(app.keys, case)
    )


def leave_conflicting_cases(work: Work, member: Member, declared: Iterable[str]) -> list[Case]:
    """A member declared new conflicts: leave every open case they now conflict with."""
    left = []
    for case in work.session.exec(select(Case).where(col(Case.status).in_(OPEN))):
        if work.standing(case, member) in (Standing.NOTIFIED, Standing.ASKED,
                                           Standing.CLEARED) and conflicted_with(
                work, member, case, list(declared)):
            set_standing(work.app, work.session, case, member.handle, Standing.CONFLICTED)
            work.audit(case, member.handle, "member declared a conflict (/conflicts)")
            left.append(case)
    return left


def join_open_cases(work: Work, member: Member, declared: Iterable[str]) -> list[Case]:
    """After onboarding: join every open case where the member has no conflict."""
    app, session = work.app, work.session
    joined: list[Case] = []
    for case in session.exec(select(Case).where(col(Case.status).in_(OPEN))):
        if work.standing(case, member) is not None:
            continue
        if conflicted_with(work, member, case, list(declared)):
            set_standing(app, session, case, member.handle, Standing.EXCLUDED)
            continue
        if case.status == "New" and not (
            app.settings.intake.forward == "all" or "triage" in member.roles
        ):
            continue  # like at intake: the conflict check (/involves) will ask them
        standing = Standing.NOTIFIED if case.status == "New" else Standing.CLEARED
        set_standing(app, session, case, member.handle, standing)
        work.audit(case, member.handle, "member joined after onboarding")
        work.brief(case, member, "Welcome: you have no declared conflict with this case.")
        joined.append(case)
    return joined


@general_command("help", "/help", "this list")
def list_commands(work: Work, case: Case | None, member: Member, cmd: Command) -> None:
    work.reply(member, case, help_text(case=case is not None))
