"""The reporter's correspondence: mail to a reporter address, to the members and the document."""

from __future__ import annotations

import logging

from sqlmodel import Session, select

from coc_mail.app import App
from coc_mail.cases import audit, document
from coc_mail.cases.standing import receiving_members
from coc_mail.cases.unit import Unit
from coc_mail.mail import readable
from coc_mail.mail.addresses import Recipient
from coc_mail.mail.redact import Redactor
from coc_mail.store import Case, utcnow

log = logging.getLogger(__name__)


def arrived(unit: Unit, recipients: list[Recipient]) -> None:
    """Mail to reporter addresses: each case it reaches, once."""
    for r in recipients:
        case = case_of_token(unit.app, unit.session, r.token)
        if case is None:
            log.info("reporter address of a case that no longer exists: dropped")
        elif case.id not in unit.done_cases:
            unit.done_cases.add(int(case.id or 0))
            correspondence(unit, case)


def case_of_token(app: App, session: Session, token: str) -> Case | None:
    """The case whose reporter address carries ``token``."""
    tag = app.keys.tag("reporter", token)
    return session.exec(select(Case).where(Case.reporter_key == tag)).first()


def correspondence(unit: Unit, case: Case) -> None:
    """Mail from the reporter (or anyone replying as them): to the receiving members. The
    reporter's address works without a sender check (a reporter may write from another
    address), so mail whose From: is not the reporter's says so, to the members and in
    the document; a member writing to it is told to use /followup instead."""
    app, msg = unit.app, unit.msg
    case = unit.session.exec(select(Case).where(Case.id == case.id).with_for_update()).one()
    member = app.settings.member_by_email(msg.mailbox) if msg.mailbox else None
    member = member or app.settings.member_by_email(msg.envelope.mail_from)
    if member is not None:
        log.warning("case %s: a member's mail to the reporter address: not forwarded",
                    case.code_name)
        if unit.notice_allowed(member):
            unit.reply_to_member(
                case, member,
                f'Your message to the reporter\'s address of case "{case.code_name}" was '
                "not forwarded: that address is the reporter's own. To write to the\n"
                "reporter, send /followup TEMPLATE to your case address.\n")
        return
    reporter = (app.keys.open_text(case.reporter, "cases.reporter").lower()
                if case.reporter else "")
    verdict = unit.verdict()
    # The reporter's own From:, sent from their own envelope address or signed for it.
    genuine = bool(msg.mailbox) and msg.mailbox == reporter and (
        msg.envelope.mail_from.lower() == reporter
        or (verdict is not None and verdict.aligned_for(reporter)))
    where = ("it is in the case document" if document.notice_mode(app.settings)
             else "it is attached")
    intro_lines = [
        f'The reporter of case "{case.code_name}" wrote again; {where}.'
        if genuine else
        f'Someone wrote to the reporter\'s address of case "{case.code_name}"; {where}.'
        "\nWARNING: its From: is not the address the report came from, so it "
        "may not be from the reporter.",
        "Reply to this message to write to the case (not to the reporter).",
        "",
        *unit.dkim_warning(),
        *unit.client_note(),
    ]
    intro = "\n".join(intro_lines).rstrip("\n") + "\n"
    for handle in receiving_members(app, unit.session, case):
        receiver = app.settings.member_by_handle(handle)
        if receiver is not None:
            unit.forward(case, receiver, intro)
    if case.purged_at is None:  # a purged document stays purged
        text = readable.text_of(msg.content)
        redactor = Redactor(app.alias, [app.addresses.reporter_token(case.code_name)])
        document.add(
            app.keys, unit.session, case, section=document.CORRESPONDENCE,
            author="the reporter" if genuine else "not the reporter's From: address",
            body=redactor.text(text),
        )
    audit.record(app.keys, unit.session, case.code_name, "reporter",
                 "reporter correspondence received")
    case.updated_at = utcnow()
    unit.session.add(case)
    log.info("case %s: reporter correspondence forwarded", case.code_name)
