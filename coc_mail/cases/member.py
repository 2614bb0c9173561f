"""Mail to a member's own addresses: proven theirs (token and sender), then a command or post."""

from __future__ import annotations

import logging

from sqlmodel import select

from coc_mail.cases import commands, thread
from coc_mail.cases.unit import Unit
from coc_mail.cases.work import MAX_ARGS, Refusal, Work
from coc_mail.config import Member
from coc_mail.errors import TemplateProblem
from coc_mail.mail import readable
from coc_mail.mail.addresses import Kind, Recipient
from coc_mail.store import Case

log = logging.getLogger(__name__)


def arrived(unit: Unit, recipients: list[Recipient]) -> None:
    """Mail to case addresses and member addresses: each one handled on its own."""
    for r in recipients:
        to_member_address(unit, r)


def to_member_address(unit: Unit, r: Recipient) -> None:
    owner = token_owner(unit, r)
    if owner is None:  # the member left the configuration
        log.info("member address of a member no longer configured: dropped")
        return
    case = None
    if r.kind is Kind.CASE:
        case = unit.session.exec(
            select(Case).where(Case.code_name == r.value).with_for_update()
        ).first()
        if case is None:
            return
    problem = authentication_problem(unit, owner)
    if problem:
        log.warning("member address used by a sender who is not that member: ignored")
        if not unit.notice_allowed(owner):
            return  # at most a few notices an hour: a forger cannot flood the member
        unit.reply_to_member(
            case, owner,
            "A message sent to your own coc-mail address"
            + (f' for case "{case.code_name}"' if case else "")
            + f" was ignored: {problem}.\nIf it was you, send it again from "
            f"{owner.email}" + (" with your provider's DKIM signature" if
                                unit.app.settings.dkim.require_aligned_members else "")
            + ". If not, someone may have your case address: tell the operators.\n",
        )
        return
    member_mail(Work(unit.app, unit.session, unit.outbox, unit.msg), case, owner)


def member_mail(work: Work, case: Case | None, member: Member) -> None:
    """A member's mail to a case address (``case``) or to their member address (None): a
    command from the table, or else a post for the case's thread. A refusal is answered to
    the member alone and changes nothing."""
    try:
        work.body = readable.body(work.msg.content, work.quoted_mail_marks(case))
        try:
            command = commands.parse(work.body.lines, work.body.stop)
        except commands.UnknownCommand as exc:
            raise Refusal(
                f"There is no command /{exc}.\n\n" + commands.help_text(case=case is not None)
            ) from None
        if command is not None and len(command.args) > MAX_ARGS:
            raise Refusal(f"The line of /{command.name} is {len(command.args)} characters "
                          f"long; {MAX_ARGS} at most. Nothing changed.\n"
                          + commands.usage(command.name))
        if command is not None:
            commands.run(work, case, member, command)
        elif case is None:
            raise Refusal("Mail to your member address must be a command.\n\n"
                          + commands.help_text(case=False))
        else:
            thread.post(work, case, member)
    except Refusal as refusal:
        work.reply(member, case, str(refusal))
    except TemplateProblem as problem:
        work.reply(member, case, f"Nothing was sent: {problem}")


def token_owner(unit: Unit, r: Recipient) -> Member | None:
    """The member whose address token this is."""
    keys = unit.app.keys
    for member in unit.app.settings.members:
        if r.kind is Kind.CASE:
            mine = keys.check_token(r.token, "case", r.value, member.handle)
        else:
            mine = keys.check_token(r.token, "member", member.handle)
        if mine:
            return member
    return None


def authentication_problem(unit: Unit, member: Member) -> str:
    """Why this message does not count as the member's (SPEC 1.5); empty when it does."""
    msg, settings = unit.msg, unit.app.settings
    if not msg.mailbox:
        return ("its From: is not one plain mailbox (several addresses, an address in "
                "the display name, or a malformed field)")
    if msg.mailbox != member.email:
        return "its From: address is not yours"
    if settings.server.require_tls_for_members and not msg.envelope.tls:
        return "it did not arrive over an encrypted (STARTTLS) connection"
    if settings.dkim.require_aligned_members:
        verdict = unit.verdict()
        domain = member.email.rpartition("@")[2]
        if verdict is None or not verdict.aligned_for(member.email):
            result = verdict.result if verdict else "none"
            return (f"it carried no DKIM signature of {domain} for your address that "
                    f"verified (dkim={result})")
    return ""
