"""Mail to the committee address: a new report, unless it answers a reporter copy or quotes ours."""

from __future__ import annotations

import logging
import re

from sqlmodel import col, select

from coc_mail.cases import audit, bounce, postmaster, report, reporter
from coc_mail.cases.standing import receiving_members
from coc_mail.cases.unit import Unit
from coc_mail.config import Member
from coc_mail.mail import readable
from coc_mail.mail.addresses import Kind, Recipient
from coc_mail.mail.message import header_block, with_head, without_client_fields
from coc_mail.mail.redact import Redactor
from coc_mail.store import Case, CodeName, SentCopy

log = logging.getLogger(__name__)

_ADDRESSING = re.compile(rb"(?im)^(?:to|cc|bcc|delivered-to|x-original-to|envelope-to"
                         rb"|resent-to|resent-cc)[ \t]*:.*(?:\r?\n[ \t].*)*\r?\n")
_VIA = re.compile(r"\bvia\s+([a-z]{2,20})[\s-]+([a-z]{2,20})\b")  # a thread sender's name


def _may_say_via(view: str) -> bool:
    """Can ``view.lower()`` hold "via"? Only where the view has v, i and a in a row, in any
    case: no other character lowers to one of them alone (I with a dot lowers to two), so
    its UTF-8 bytes, ASCII lowered, say as much, several times faster than lowering it."""
    return b"via" in view.encode("utf-8", "surrogatepass").lower()


def arrived(unit: Unit, recipients: list[Recipient]) -> None:
    """Mail to the alias (and to ``without.`` addresses): a new report, unless it answers a
    copy that went to a reporter (the acknowledgment, a follow-up): then it is that
    reporter's correspondence. Holding the Message-ID of any other copy (a conflict check, a
    member's copy) opens nothing: the mail is a new report. A member answering their own
    copy of a case at the alias is told to use their case address (nothing is relayed)."""
    without = [r.value for r in recipients if r.kind is Kind.WITHOUT]
    # A report that excludes a member (without.) is always a new case: filed into an old
    # one, it would reach that member through the old case.
    msg = unit.msg
    refs = [] if without else referenced(unit)
    member = unit.app.settings.member_by_email(msg.mailbox) if msg.mailbox else None
    reporters = [case for case, role in refs if role == "reporter"]
    own = [case for case, role in refs if member is not None and role == member.handle]
    if not reporters and not own:
        quoted = quoted_cases(unit)
        automatic = bool(msg.auto_reply()) or msg.is_report()
        if quoted is None and not (automatic and our_copies(unit)):
            report.open_case(unit, without)  # nothing of ours in it: a new report (SPEC 8.1)
            return
        unit.outbox.write_rows(unit.session)  # mail about our mail: it may read new cases
        if quoted is None:
            automatic_about_our_mail(unit)  # an auto-reply to one of our copies
        elif automatic:
            automatic_about_our_mail(unit)
        elif member is not None:
            member_forwarded_case_mail(unit, member)
        else:
            case_mail_came_back(unit, quoted)
        return
    unit.outbox.write_rows(unit.session)
    case = (reporters or own)[0]
    unit.done_cases.add(int(case.id or 0))
    if msg.auto_reply():
        log.info("case %s: automatic reply (%s) at the alias: dropped", case.code_name,
                 msg.auto_reply())
    elif member is not None:
        member_wrote_to_alias(unit, case, member)
    else:
        reporter.correspondence(unit, case)


def referenced(unit: Unit) -> list[tuple[Case, str]]:
    """The cases of the copies of ours that ``In-Reply-To``/``References`` name, each with
    whom that copy went to (a member's handle, ``reporter`` or ``operator``)."""
    ids = unit.msg.referenced_ids()
    if not ids:
        return []
    session = unit.session
    found: list[tuple[Case, str]] = []
    for copy in session.exec(
        select(SentCopy)
        .where(col(SentCopy.message_id).in_(ids))
        .where(col(SentCopy.case_id).is_not(None))
    ):
        case = session.get(Case, copy.case_id)
        if case is not None:
            found.append((case, unit.app.keys.open_text(copy.role, "sent_copies.role")))
    return found


def our_copies(unit: Unit, *, named: bool = True) -> list[SentCopy]:
    """Copies of ours that the message carries inside (a bounce or an auto-reply quoting
    our copy's headers) or, with ``named``, names (In-Reply-To, References)."""
    content = unit.msg.content
    body = content[len(header_block(content)):][:4 << 20]
    found = re.findall(rf"<[0-9a-f]{{24}}@{re.escape(unit.app.domain)}>",
                       body.decode("latin-1").lower())[:50]
    ids = list(dict.fromkeys([*(unit.msg.referenced_ids() if named else []), *found]))
    if not ids:
        return []
    return list(unit.session.exec(
        select(SentCopy).where(col(SentCopy.message_id).in_(ids))).all())


def quoted_cases(unit: Unit) -> list[Case] | None:
    """The cases whose mail this message carries: it names or embeds one of our copies,
    shows one of our ``+`` addresses in any part, or a thread sender ("Ada via home
    shelf"). None when it carries nothing of ours; an empty list when it does, but of
    no case that still exists."""
    app, session = unit.app, unit.session
    found: dict[int, Case] = {}
    ours = False
    for copy in our_copies(unit, named=False):  # naming a copy is no quoting it
        ours = True
        case = session.get(Case, copy.case_id) if copy.case_id else None
        if case is not None:
            found[int(case.id or 0)] = case
    redactor = Redactor(app.alias)
    names: set[str] = set()
    for view in readable.views(_without_addressing(unit.msg.content),
                               wanted=redactor.worth_reading):
        for address in redactor.addresses_in(view):
            r = app.addresses.parse(address)
            if r is not None and r.kind is Kind.WITHOUT:
                continue  # a published address, no secret
            ours = True
            if r is not None and r.kind is Kind.CASE:
                names.add(r.value)
            elif r is not None and r.kind is Kind.REPORTER:
                case = reporter.case_of_token(app, session, r.token)
                if case is not None:
                    found[int(case.id or 0)] = case
        if len(names) < 50 and _may_say_via(view):
            lowered = view.lower()
            names.update(f"{m.group(1)} {m.group(2)}" for m in _VIA.finditer(lowered))
    if names:
        for case in session.exec(select(Case).where(col(Case.code_name).in_(
                sorted(names)[:100]))):
            ours = True
            found[int(case.id or 0)] = case
        if not ours and session.exec(select(CodeName.name).where(
                col(CodeName.name).in_(sorted(names)[:100]))).first() is not None:
            ours = True  # the thread sender of a discarded case
    return list(found.values()) if ours else None


def case_mail_came_back(unit: Unit, cases: list[Case]) -> None:
    """Mail at the alias, from someone who is not a member, that carries a case's mail (a
    forward from a member's other address, a quote in an out-of-office reply): as a new
    report it would reach every member. It goes to the members who receive every case it
    quotes, our addresses taken out, and to nobody else; with no such case, to the
    operators."""
    app = unit.app
    redactor = Redactor(app.alias, [app.addresses.reporter_token(c.code_name) for c in cases])
    original = redactor.message(unit.msg.content)
    if not cases:
        log.warning("mail quoting coc-mail mail of no open case at the alias: to the "
                    "operators")
        if app.settings.intake.strip_client_headers:  # as in the members' copies
            original = without_client_fields(original)
        postmaster.to_operators(unit, original, "Mail at the committee address that quotes "
                                "coc-mail mail of no open case, attached (our addresses taken "
                                "out). It went to nobody else.\n")
        return
    handles = set.intersection(*(set(receiving_members(app, unit.session, c)) for c in cases))
    case = cases[0]
    unit.done_cases.update(int(c.id or 0) for c in cases)
    intro = (f'A message that quotes mail of case "{case.code_name}" came to the committee '
             "address, from someone who is not a member; it is attached (our addresses "
             "taken out). It went to the members who receive the case, and to nobody "
             "else.\n\n" + "\n".join(unit.dkim_warning()))
    for member in app.settings.members:
        if member.handle in handles:
            unit.forward(case, member, intro, original)
    for c in cases:
        audit.record(app.keys, unit.session, c.code_name, "coc-mail",
                     "mail quoting the case came to the alias")
    log.warning("case %s: mail quoting the case at the alias: to %d member(s)",
                case.code_name, len(handles))


def automatic_about_our_mail(unit: Unit) -> None:
    """An automatic message at the alias about mail of ours (a bounce sent to the From:
    instead of the envelope sender, an out-of-office reply that quotes our copy): it is no
    report and reaches no member; a bounce is told to the operators, once per copy."""
    status = bounce.dsn_failure(unit.msg.parsed())
    copies = our_copies(unit)
    if status is not None and copies:
        bounce.copy_bounced(unit, copies[0], status)
        return
    log.info("automatic message (%s) at the alias about our own mail: dropped",
             unit.msg.auto_reply())


def member_forwarded_case_mail(unit: Unit, member: Member) -> None:
    """A member sent the alias mail that carries case mail (a forwarded thread post, say):
    sent on as a new report it would reach every member, conflicted ones too, with the
    case's text and the forwarder's own case address. It is not; the member is told."""
    log.warning("member mail at the alias carrying case mail: not opened as a report")
    if not unit.notice_allowed(member):
        return
    unit.reply_to_member(
        None, member,
        "Your message to the committee address was not sent on: it carries coc-mail case\n"
        "mail (a forwarded or quoted case message, or a coc-mail case address). As a new\n"
        "report it would have reached every member, conflicted ones too.\n\n"
        "To write to a case, reply to a message of that case (its Reply-To: is your own\n"
        "address for the case). To report something new, write a new message without the\n"
        "forwarded mail.\n",
    )


def member_wrote_to_alias(unit: Unit, case: Case, member: Member) -> None:
    """A member replied to the alias about a case: not authenticated by a token, so nothing
    is done; the member is told to use their case address (a few times an hour at most:
    the From may be forged)."""
    if not unit.notice_allowed(member):
        return
    unit.reply_to_member(
        case,
        member,
        "Your message to the committee address was not relayed to the case: it carried no\n"
        "case address. Reply to a message from the case instead (its Reply-To: is your own\n"
        "address for the case).\n",
    )


def _without_addressing(content: bytes) -> bytes:
    """The message without its own top-level recipient fields: the addresses of ours it was
    sent to are its addressing, not mail of ours it quotes (nested messages keep theirs)."""
    head = header_block(content)
    stripped = _ADDRESSING.sub(b"", head)
    return content if stripped == head else with_head(stripped, content, len(head))
