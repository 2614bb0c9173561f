"""Delivery status notifications for our copies: the operators told of a failure, once a copy."""

from __future__ import annotations

import logging
from email.message import Message

from coc_mail.cases.unit import Unit
from coc_mail.mail.addresses import Recipient
from coc_mail.mail.compose import one_line
from coc_mail.store import Case, SentCopy, utcnow

log = logging.getLogger(__name__)

DSN_TYPES = ("message/delivery-status", "message/global-delivery-status")


def arrived(unit: Unit, recipients: list[Recipient]) -> None:
    """Mail to a bounce address (one per copy). Only a report of a failed delivery counts;
    anything else (an out-of-office reply to the envelope sender every recipient sees as
    Return-Path, a delay notice) is dropped."""
    status = dsn_failure(unit.msg.parsed())
    if status is None:
        log.info("mail to a bounce address that reports no failed delivery: dropped")
        return
    for r in recipients:
        copy = unit.session.get(SentCopy, r.value)
        if copy is None:
            log.info("bounce for an unknown or expired copy: dropped")
            continue
        copy_bounced(unit, copy, status)


def copy_bounced(unit: Unit, copy: SentCopy, status: str) -> None:
    """Tell the operators that ``copy`` bounced, unless they were told already."""
    if copy.bounced_at is not None:
        log.info("another bounce for a copy the operators were told of: dropped")
        return
    copy.bounced_at = utcnow()
    unit.session.add(copy)
    role = unit.app.keys.open_text(copy.role, "sent_copies.role")
    if role == "operator":
        log.warning("an operator notice bounced (status %s)", status)
        return
    case = unit.session.get(Case, copy.case_id) if copy.case_id else None
    who = "the reporter" if role == "reporter" else role
    place = f' of case "{case.code_name}"' if case else ""
    log.warning("bounce for a copy%s (status %s)", place, status)
    unit.outbox.notify_operators(
        "a copy bounced",
        f"A copy{place} for {who} was returned by the receiving mail server\n"
        f"(status {status}). Check that address.\n",
    )


def dsn_failure(parsed: Message) -> str | None:
    """The ``Status:`` of a failed delivery in a delivery status notification (RFC 3464: a
    multipart/report holding a message/delivery-status part with ``Action: failed``), or
    "unknown" when it gives none; None when this is no report of a failure."""
    if parsed.get_content_type() != "multipart/report":
        return None
    payload = parsed.get_payload()
    parts = payload if isinstance(payload, list) else []
    for part in parts:
        if not isinstance(part, Message) or part.get_content_type() not in DSN_TYPES:
            continue
        blocks = part.get_payload()
        for block in blocks if isinstance(blocks, list) else []:
            if not isinstance(block, Message):
                continue
            if str(block.get("Action", "")).strip().lower() == "failed":
                return one_line(str(block.get("Status", "") or "unknown"), 20)
    return None
