"""The conflict check (SPEC 4.2): /involves names the reported person; the answers; /recuse."""

from __future__ import annotations

import datetime as dt

from coc_mail.cases import audit, document
from coc_mail.cases.commands.table import Command, case_command, usage
from coc_mail.cases.conflicts import Person, conflicts_with_person
from coc_mail.cases.members import declared_conflicts, pending_members
from coc_mail.cases.standing import Standing, set_standing, standings
from coc_mail.cases.work import Refusal, Work
from coc_mail.config import Member
from coc_mail.store import Case, utcnow


@case_command("involves", "/involves NAME",
              "name the reported person; starts the conflict check")
def involves(work: Work, case: Case, member: Member, cmd: Command) -> None:
    work.require_receiving(case, member)
    person = Person.named(cmd.args)
    name = str(person)
    if not name:
        raise Refusal(usage("involves"))
    if case.status == "Ongoing":
        add_person(work, case, member, person)
        return
    if case.status != "New":
        raise Refusal("The case is resolved; /reopen it first to name another person.")
    app, session = work.app, work.session
    now = utcnow()
    deadline = now + dt.timedelta(hours=app.settings.intake.conflict_check_hours)
    case.reported = app.keys.seal_text(name, "cases.reported")
    case.status = "Ongoing"
    case.discard_by = None  # named: a report after all
    case.check_started_at, case.check_deadline = now, deadline
    current = standings(app, session, case)
    pending = pending_members(app, session)
    declared = declared_conflicts(app, session)
    asked, excluded = [], []
    for m in app.settings.members:
        if m.handle in pending or current.get(m.handle) not in (None, Standing.NOTIFIED):
            continue  # excluded, or left the case while it was New: never asked back
        if conflicts_with_person(m, person, declared.get(m.handle, ())):
            set_standing(app, session, case, m.handle, Standing.EXCLUDED)
            excluded.append(m)
        elif m == member:
            set_standing(app, session, case, m.handle, Standing.CLEARED)
        else:
            set_standing(app, session, case, m.handle, Standing.ASKED)
            asked.append(m)
    for m in asked:
        ask(work, case, m, name, deadline)
    work.audit(case, member.handle, "conflict check started; status New -> Ongoing")
    yours = (
        "You are excluded from it: you may be this person, or your own conflicts list "
        "names them, so you will receive nothing more about this case.\n"
        if member in excluded
        else "You are cleared; reply /conflict if you have one.\n"
    )
    work.reply(
        member, case,
        f'Case "{case.code_name}" now involves {name}. The conflict check went to '
        f"{len(asked)} member(s); {len(excluded)} excluded by known conflicts.\n"
        f"Answers are due by {deadline:%Y-%m-%d %H:%M} UTC. " + yours,
    )


def add_person(work: Work, case: Case, member: Member, person: Person) -> None:
    """``/involves`` once the check has started names one more person (a report about
    several people, or a first name that was wrong or a decoy): every member who may be
    them or lists them is out of the case at once, the members still taking part are
    told, and those not yet answering are asked again with every name."""
    app, session = work.app, work.session
    people = document.reported_people(app.keys, case)
    if any(Person.named(p) == person for p in people):
        raise Refusal(f"The case already involves {person}; nothing changed.")
    people.append(str(person))
    declared = declared_conflicts(app, session)
    current = standings(app, session, case)
    out, still = [], []
    for m in app.settings.members:
        st = current.get(m.handle)
        if st not in (Standing.NOTIFIED, Standing.ASKED, Standing.CLEARED):
            continue
        if conflicts_with_person(m, person, declared.get(m.handle, ())):
            out.append(m)
        elif m != member:
            still.append((m, st))
    others_out = [m for m in out if m != member]
    taking_part = [m for m in app.settings.members if m != member and current.get(
        m.handle) in (Standing.NOTIFIED, Standing.ASKED, Standing.CLEARED)]
    if others_out and excluded_others_before(work, case, member):
        raise Refusal(
            "Nothing changed: a person you named in this case already kept other members "
            "out of it. If this one must too, ask another member who receives the case to "
            "name them, or an operator.")
    if others_out and all(m in out for m in taking_part):
        raise Refusal(
            f"Nothing changed: {person} may be every other member taking part in the "
            "case, and naming them would leave you alone in it. If that is really so, an "
            "operator can look into it (coc-mail audit).")
    case.reported = app.keys.seal_text("\n".join(people), "cases.reported")
    for m in out:
        set_standing(app, session, case, m.handle, Standing.EXCLUDED)
    work.audit(case, member.handle, "person added to the case; excluded: "
               + (", ".join(m.handle for m in out) or "nobody"))
    if others_out:
        work.outbox.notify_operators(
            "members excluded from a case",
            f'In case "{case.code_name}", a member named one more person, and '
            f"{len(others_out)} member(s) taking part were excluded as possibly that "
            f"person.\nIf that looks wrong, `coc-mail audit "
            f"{case.code_name.replace(' ', '-')}` says who named and who was excluded.\n")
    names = "; ".join(people)
    for m, st in still:
        if st is Standing.ASKED and case.check_deadline is not None:
            ask(work, case, m, names, case.check_deadline)
        else:
            work.outbox.to_member(
                m, case, f"[{case.code_name}] Another person named",
                f'{member.name} named one more person in case "{case.code_name}": '
                f"{person}.\nThe case now involves: {names}.\n"
                + ("Excluded as possibly that person: " + ", ".join(
                    x.name for x in others_out) + ".\n" if others_out else "")
                + "If you have a conflict of interest with them, reply /conflict (or "
                  "/recuse).\n")
    yours = ("You are excluded from the case now: you may be this person or your "
             "conflicts list names them.\n" if member in out else "")
    work.reply(member, case, f'Case "{case.code_name}" now also involves {person}. '
                             f"{len(out)} member(s) excluded; {len(still)} told.\n" + yours)


def excluded_others_before(work: Work, case: Case, member: Member) -> bool:
    """Did a person this member named in this case already exclude other members? (One
    such naming per member and case: no member can empty a case of the others.)"""
    lines, _ = audit.verify(work.app.keys, work.session, case.code_name)
    return any(line.actor == member.handle and line.action.startswith(
        "person added to the case; excluded: ") and line.action.split(": ", 1)[1] not in (
        "nobody", member.handle) for line in lines)


def ask(work: Work, case: Case, m: Member, name: str, deadline: dt.datetime) -> None:
    app = work.app
    rendered = app.templates.render(
        "conflict-check", committee=app.settings.committee, case=case, member=m,
        reported=name, deadline=f"{deadline:%Y-%m-%d %H:%M} UTC",
    )
    subject = rendered.subject or f"[{case.code_name}] Conflict check"
    work.outbox.to_member(m, case, subject, rendered.body)


@case_command("noconflict", "/noconflict", "answer the conflict check: you can take part",
              plain=("no conflict", "noconflict"))
def noconflict(work: Work, case: Case, member: Member, cmd: Command) -> None:
    st = work.standing(case, member)
    if st is Standing.CLEARED:
        raise Refusal("You are already cleared for this case; nothing changed.")
    late = case.check_deadline is not None and utcnow() >= case.check_deadline
    if st is Standing.SILENT or (st is Standing.ASKED and late):
        if st is Standing.ASKED:
            set_standing(work.app, work.session, case, member.handle, Standing.SILENT)
            work.audit(case, "coc-mail", "member not added: no answer to the conflict check")
        raise Refusal("The conflict check deadline has passed, so you were not added to "
                      "this case (the procedure's rule). Nothing changed.")
    if st is not Standing.ASKED:
        raise Refusal(work.why_not(case, member))
    set_standing(work.app, work.session, case, member.handle, Standing.CLEARED)
    work.audit(case, member.handle, "member cleared (no conflict)")
    work.brief(case, member, "Thank you: you are cleared for this case.")


@case_command("conflict", "/conflict", "answer the conflict check: you cannot take part",
              plain=("conflict",))
def conflict(work: Work, case: Case, member: Member, cmd: Command) -> None:
    st = work.standing(case, member)
    if st not in (Standing.ASKED, Standing.CLEARED, Standing.NOTIFIED):
        raise Refusal(work.why_not(case, member))
    set_standing(work.app, work.session, case, member.handle, Standing.CONFLICTED)
    work.audit(case, member.handle, "member declared a conflict")
    work.reply(member, case, "Noted: you have a conflict of interest. You will receive "
                             "nothing more about this case.\n")


@case_command("recuse", "/recuse", "leave the case now; you get nothing more about it")
def recuse(work: Work, case: Case, member: Member, cmd: Command) -> None:
    st = work.standing(case, member)
    if st in (None, Standing.EXCLUDED, Standing.RECUSED, Standing.CONFLICTED):
        raise Refusal(work.why_not(case, member))
    set_standing(work.app, work.session, case, member.handle, Standing.RECUSED)
    work.audit(case, member.handle, "member recused")
    work.reply(member, case, "You have recused yourself. You will receive nothing more "
                             "about this case.\n")
