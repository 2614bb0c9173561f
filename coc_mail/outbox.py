"""Queueing outbound copies: sign, seal, record the Message-ID for routing, all in the caller's
transaction (so a copy exists exactly when the change that caused it is committed)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from email.utils import formataddr

from sqlmodel import Session

from .addresses import Addresses
from .app import App
from .compose import new_message_id, text_message
from .store import Outbound, SentCopy

log = logging.getLogger(__name__)


def enqueue(
    app: App,
    session: Session,
    *,
    case_id: int | None,
    role: str,
    recipient: str,
    build: Callable[[str], bytes],
) -> str:
    """Build (given a fresh Message-ID), sign and queue one copy; return its Message-ID.

    ``role`` says who the copy is for (a member handle, ``reporter`` or ``operator``); it is
    stored sealed next to the Message-ID so replies and bounces find their case.
    """
    uid = Addresses.new_copy_uid()
    message_id = new_message_id(app.domain)
    signed = app.signer.sign(build(message_id))
    session.add(
        SentCopy(
            uid=uid,
            case_id=case_id,
            message_id=message_id,
            role=app.keys.seal_text(role, "sent_copies.role"),
        )
    )
    session.add(
        Outbound(
            uid=uid,
            case_id=case_id,
            envelope_from=app.addresses.bounce(uid),
            recipient=app.keys.seal_text(recipient, "outbound.recipient"),
            content=app.keys.seal(signed, "outbound.content"),
        )
    )
    return message_id


def notify_operators(app: App, session: Session, subject: str, body: str) -> int:
    """Queue a notice (no message content, no reporter address) to every operator."""
    operators = app.settings.operators
    if not operators:
        log.warning("operator notice not sent: no member has the 'operator' role")
        return 0
    for member in operators:
        enqueue(
            app,
            session,
            case_id=None,
            role="operator",
            recipient=member.email,
            build=lambda mid, m=member: text_message(  # type: ignore[misc]
                from_name=app.settings.committee.name,
                from_addr=app.alias,
                to=formataddr((m.name, m.email)),
                reply_to=app.addresses.member(m.handle),
                subject=f"[coc-mail] {subject}",
                body=body,
                message_id=mid,
                loop=app.alias,
            ),
        )
    return len(operators)
