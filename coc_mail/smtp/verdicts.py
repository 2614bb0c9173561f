"""Every SMTP reply the daemon gives, named, and the RCPT-time verdict on each address."""

from __future__ import annotations

from sqlmodel import Session, select

from coc_mail.config import Settings
from coc_mail.mail.addresses import Addresses, Kind, Recipient
from coc_mail.store import Case

OK_RCPT = "250 2.1.5 Recipient OK"
NO_SUCH_USER = "550 5.1.1 Recipient address rejected: no such address here"
RELAY_DENIED = "554 5.7.1 Relay access denied: this server only takes mail for {domain}"
TOO_MANY_RCPTS = "452 4.5.3 Too many recipients in one transaction"
LOOP = "554 5.4.6 Mail loop detected: this message has already passed through this server"
TOO_MANY_HOPS = "554 5.4.6 Too many hops (Received headers): mail loop?"
NO_HEADERS = "554 5.6.0 Message has no header section"
QUEUED = "250 2.0.0 Ok: queued as {id}"
TEMP_STORE = "451 4.3.0 Temporary failure: cannot store the message now, try again later"
DISK_FULL = "452 4.3.1 Insufficient system storage, try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
HEADERS_TOO_BIG = "552 5.3.4 Message header section too big (limit {limit} bytes)"
UNEXPECTED = "451 4.3.0 Temporary local problem, try again later"
GUESSING = "450 4.7.1 Too many unknown recipients from your address; try again later"
TOO_BUSY = "451 4.3.1 Too much mail in progress at once; try again later"
MAX_HEADER_BYTES = 256 * 1024

MAX_RECIPIENTS = 50
MAX_HOPS = 50


def rcpt_verdict(
    address: str, settings: Settings, addresses: Addresses, session: Session | None
) -> tuple[str, Recipient | None]:
    """Decide on one RCPT TO. Returns the SMTP reply and, when accepted, the parsed address.

    A wrong token and an unknown code name get the same answer, so a guesser learns nothing.
    ``session`` is needed only for case and reporter addresses (a database lookup).
    """
    _, at, domain = address.rpartition("@")
    if not at and address.strip("<> ").lower() == "postmaster":  # RFC 5321 4.5.1
        return OK_RCPT, Recipient(Kind.POSTMASTER)
    if not at or not addresses.is_ours(domain):
        return RELAY_DENIED.format(domain=addresses.domain), None
    recipient = addresses.parse(address)
    if recipient is None:
        return NO_SUCH_USER, None
    if recipient.kind is Kind.WITHOUT and settings.member_by_handle(recipient.value) is None:
        return NO_SUCH_USER, None
    if recipient.kind is Kind.MEMBER and not any(
        addresses.keys.check_token(recipient.token, "member", m.handle) for m in settings.members
    ):
        return NO_SUCH_USER, None
    if recipient.kind is Kind.CASE:
        if not any(
            addresses.keys.check_token(recipient.token, "case", recipient.value, m.handle)
            for m in settings.members
        ):
            return NO_SUCH_USER, None
        assert session is not None
        if session.exec(select(Case.id).where(Case.code_name == recipient.value)).first() is None:
            return NO_SUCH_USER, None
    if recipient.kind is Kind.REPORTER:
        assert session is not None
        tag = addresses.keys.tag("reporter", recipient.token)
        if session.exec(select(Case.id).where(Case.reporter_key == tag)).first() is None:
            return NO_SUCH_USER, None
    return OK_RCPT, recipient


def needs_database(recipient: Recipient | None) -> bool:
    return recipient is not None and recipient.kind in (Kind.CASE, Kind.REPORTER)
