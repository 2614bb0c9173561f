"""Not a report (SPEC 4.7): /discard, confirmed by a second member, and the deletion itself."""

from __future__ import annotations

import logging

from sqlmodel import Session

from coc_mail.app import App
from coc_mail.cases import audit
from coc_mail.cases.commands.table import Command, case_command
from coc_mail.cases.standing import member_tag, receiving_members
from coc_mail.cases.work import Refusal, Work
from coc_mail.config import Member
from coc_mail.delivery.outbox import Outbox
from coc_mail.store import Case

log = logging.getLogger(__name__)


@case_command("discard", "/discard",
              "not a report (spam, misdirected): delete the case and its document",
              touches=False)
def discard_command(work: Work, case: Case, member: Member, cmd: Command) -> None:
    """Not a report (SPEC 4.7): the first /discard marks the case and tells every other
    member who receives it; the case is deleted only when a second one confirms (or an
    operator runs ``coc-mail discard``). No member can make a report vanish alone."""
    work.require_receiving(case, member)
    if case.status != "New":
        raise Refusal("Only a New case can be discarded (spam or misdirected mail is "
                      "recognised before anyone is named); nothing changed.")
    tag = member_tag(work.app, member.handle)
    others = [m for m in work.receiving(case) if m != member]
    if case.discard_by is None:
        case.discard_by = tag
        work.audit(case, member.handle, "discard requested (a second member must confirm)")
        for other in others:
            work.outbox.to_member(
                other, case, f"[{case.code_name}] Discard requested",
                f'{member.name} asked to discard case "{case.code_name}" as not a report '
                "(spam or misdirected mail).\nIf you agree, reply /discard: the case and "
                "its report are then deleted.\nIf it is a report, name the reported "
                "person instead: /involves NAME.\n",
            )
        how = ("another member who received it confirms with /discard, or an operator "
               f"runs `coc-mail discard {case.code_name.replace(' ', '-')}`"
               if others else "an operator runs `coc-mail discard "
               f"{case.code_name.replace(' ', '-')}` (nobody else receives this case)")
        work.reply(member, case, f'Case "{case.code_name}" is marked for discarding. It '
                   f"is deleted when {how}. {len(others)} other member(s) were told.\n")
        return
    if case.discard_by == tag:
        raise Refusal("You asked to discard this case already; a second member who "
                      "received it must confirm with /discard. Nothing changed.")
    first = next((m for m in work.app.settings.members
                  if member_tag(work.app, m.handle) == case.discard_by), None)
    discard(work.app, work.session, work.outbox, case, member.handle,
            f"{first.name if first else 'a member'} asked and {member.name} confirmed")
    work.reply(member, None, f'Case "{case.code_name}" is discarded: its report and '
                             "document are deleted.\n", subject=f"[{case.code_name}] discarded")


def discard(app: App, session: Session, outbox: Outbox, case: Case, actor: str,
            how: str) -> None:
    """Delete a New case that is not a report: its report, document and standings (the code
    name is never drawn again; the audit log keeps who did it). Every other member who
    received it is told."""
    code_name = case.code_name
    audit.record(app.keys, session, code_name, actor, "case discarded (not a report)")
    handles = set(receiving_members(app, session, case)) - {actor}
    for m in app.settings.members:
        if m.handle in handles:
            outbox.to_member(m, None, f"[{code_name}] discarded",
                             f'Case "{code_name}" was discarded as not a report ({how}). Its '
                             "report and document are deleted.\n")
    for pending in outbox.pending:
        if pending.case is case:
            pending.case = None
    session.delete(case)
    log.info("case %s discarded", code_name)
