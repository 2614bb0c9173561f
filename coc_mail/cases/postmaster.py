"""Mail for the operators: postmaster@ and abuse@, and mail that belongs to no one else."""

from __future__ import annotations

from coc_mail.cases.unit import Unit
from coc_mail.mail.addresses import Recipient
from coc_mail.mail.compose import ForwardBody, forward_head, mailbox

INTRO = "Mail to postmaster@ / abuse@ of the committee domain, attached.\n"


def arrived(unit: Unit, recipients: list[Recipient]) -> None:
    """Mail to the role addresses: to the operators, once however many it was sent to."""
    to_operators(unit)


def to_operators(unit: Unit, original: bytes | None = None, intro: str = INTRO) -> None:
    """Queue the message (or ``original``) attached, for every operator (the members when
    the configuration names no operator)."""
    app, msg = unit.app, unit.msg
    targets = app.settings.operators or app.settings.members
    body = ForwardBody.build(intro, msg.content if original is None else original)
    stored = unit.outbox.share(body.parts)
    for member in targets:
        unit.outbox.queue(
            case=None,
            role="operator",
            recipient=member.email,
            body=stored,
            build=lambda ids, m=member: forward_head(  # type: ignore[misc]
                from_name=app.settings.committee.name,
                from_addr=app.alias,
                to=mailbox(m.name, m.email, "To"),
                reply_to=msg.sender or app.alias,
                subject=f"[postmaster] {msg.subject or '(no subject)'}",
                body=body,
                ids=ids,
                loop=app.alias,
                auth_results=None,
            ),
        )
