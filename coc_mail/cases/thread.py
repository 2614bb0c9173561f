"""The case thread (SPEC 4.3): a cleared member's post, relayed to the other cleared members."""

from __future__ import annotations

import logging

from coc_mail.cases.standing import Standing
from coc_mail.cases.work import Refusal, Work
from coc_mail.config import Member
from coc_mail.mail.compose import mailbox, relay_message
from coc_mail.store import Case, utcnow

log = logging.getLogger(__name__)


def post(work: Work, case: Case, member: Member) -> None:
    """Relay a cleared member's post to the other cleared members of the case (never kept)."""
    if case.status == "New":
        st = work.standing(case, member)
        if st in (Standing.NOTIFIED, Standing.CLEARED):
            raise Refusal(
                "Name the reported person first: reply `/involves NAME`. Your message was "
                "not relayed: until the conflict check, the case has no thread."
            )
        raise Refusal(work.why_not(case, member))
    if work.standing(case, member) is not Standing.CLEARED:
        raise Refusal(work.why_not(case, member))
    others = [m for m in work.receiving(case) if m != member]
    if not others:
        raise Refusal("You are the only cleared member of this case: nothing was relayed.")
    app = work.app
    redactor = work.redactor(case)
    subject = redactor.text(work.msg.subject) or "(no subject)"
    if f"[{case.code_name}]" not in subject:
        subject = f"[{case.code_name}] {subject}"
    # Our addresses and tokens out of every part, in whatever encoding (a forwarded or
    # quoted case mail carries the author's own case address): see coc_mail/mail/redact.py.
    post = redactor.message(work.msg.content)
    for other in others:
        work.outbox.queue(
            case=case, role=other.handle, recipient=other.email,
            build=lambda ids, o=other: relay_message(  # type: ignore[misc]
                original=post,
                from_name=f"{member.name} via {case.code_name}", from_addr=app.alias,
                to=mailbox(o.name, o.email, "To"),
                reply_to=app.addresses.case(case.code_name, o.handle),
                subject=subject, ids=ids, loop=app.alias,
            ),
        )
    case.updated_at = utcnow()
    work.session.add(case)
    log.info("case %s: post relayed to %d member(s)", case.code_name, len(others))
