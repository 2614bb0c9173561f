"""Processing the incoming queue: route each accepted message and apply it in one transaction.

A row is claimed with a lease, handled, and deleted in the same transaction as the case
change and the copies it queues, so a crash at any point either redoes the whole step or
finds it done. A message that fails repeatedly is shunted (kept sealed, operator told).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from email import message_from_bytes, message_from_string
from email.message import Message
from email.policy import compat32, default
from email.utils import formataddr, parseaddr

from sqlalchemy import or_
from sqlmodel import Session, col, select

from . import conflicts, dkim
from .addresses import Kind, Recipient
from .app import App
from .cases import Standing, open_case, receiving_members, set_standing
from .compose import forward_message, one_line, text_message
from .config import Member
from .intake import header_block
from .outbox import enqueue, notify_operators
from .spool import Envelope
from .store import AckBudget, Case, Inbound, SentCopy, utcnow

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
AUTO_HEADERS = (
    "list-id",
    "list-unsubscribe",
    "x-autoreply",
    "x-autorespond",
    "x-auto-response-suppress",
)


class Incoming:
    """One accepted message, parsed just enough to route it (headers via compat32: tolerant)."""

    def __init__(self, envelope: Envelope, content: bytes) -> None:
        self.envelope = envelope
        self.content = content
        head = header_block(content).decode("utf-8", "replace")
        self.headers: Message = message_from_string(head, policy=compat32)
        self.decoded: Message = message_from_string(head, policy=default)
        name, address = parseaddr(self.header("From"))
        self.from_name = one_line(name, 200)
        self.from_address = address.strip().lower() if "@" in address else ""
        self.subject = one_line(self.header("Subject"), 200)
        self.message_id = one_line(self.header("Message-ID"), 900)

    def header(self, name: str) -> str:
        """A header's value with RFC 2047 words decoded; the raw value if it cannot be."""
        try:
            return str(self.decoded.get(name, ""))
        except Exception:  # noqa: BLE001 - malformed headers must not stop routing
            return str(self.headers.get(name, ""))

    @property
    def sender(self) -> str:
        """Who a reply goes to: the From address, else the envelope sender."""
        return self.from_address or self.envelope.mail_from.lower()

    def referenced_ids(self) -> list[str]:
        ids: list[str] = []
        for header in ("In-Reply-To", "References"):
            for value in self.headers.get_all(header, []):
                ids += [f"<{p.strip('<> ')}>" for p in str(value).split() if "@" in p]
        return ids

    def is_automatic(self) -> bool:
        """Auto-replies, bounces and list mail never get an acknowledgment."""
        if not self.envelope.mail_from:
            return True
        auto = str(self.headers.get("Auto-Submitted", "no")).strip().lower()
        if auto and not auto.startswith("no"):
            return True
        precedence = str(self.headers.get("Precedence", "")).strip().lower()
        if precedence in ("bulk", "list", "junk"):
            return True
        return any(h in (k.lower() for k in self.headers) for h in AUTO_HEADERS)

    def cleaned_subject(self, code_name: str) -> str:
        tag = f"[{code_name}]"
        subject = self.subject.replace(tag, "").strip() or "(no subject)"
        return f"{tag} {subject}"


class Processor:
    """Claims incoming-queue rows and handles them; run by :meth:`run` in a thread."""

    def __init__(self, app: App, on_queued: Callable[[], None]) -> None:
        self.app = app
        self.on_queued = on_queued
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.processed = 0

    # -- the loop ---------------------------------------------------------------------------
    def run(self, poll: float = 2.0) -> None:
        while not self.stopping.is_set():
            try:
                done = self.run_once()
            except Exception:
                log.exception("processor: cannot claim work")
                done = 0
            if not done:
                self.wake.wait(poll)
                self.wake.clear()

    def run_once(self) -> int:
        """Process queued messages until none is ready; return how many were handled."""
        handled = 0
        while not self.stopping.is_set() and self.process_next():
            handled += 1
        return handled

    def process_next(self) -> bool:
        """Handle the oldest ready message in one transaction; False when there is none.

        The row is locked (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the write lock on SQLite)
        for the whole transaction, so two daemons never handle the same message, and a daemon
        that dies mid-way leaves the row to be handled again from scratch.
        """
        now = utcnow()
        row_id: int | None = None
        try:
            with Session(self.app.engine) as session:
                row = session.exec(
                    select(Inbound)
                    .where(col(Inbound.shunted).is_(False))
                    .where(or_(col(Inbound.claimed_until).is_(None),
                               col(Inbound.claimed_until) <= now))
                    .order_by(col(Inbound.id))
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if row is None:
                    return False
                row_id = row.id
                envelope = Envelope.from_json(self.app.keys.open(row.envelope, "inbound.envelope"))
                content = self.app.keys.open(row.content, "inbound.content")
                self.handle(session, Incoming(envelope, content))
                session.delete(row)
                session.commit()
        except Exception as exc:
            if row_id is None:
                raise
            log.exception("processor: inbound %d failed (%s)", row_id, type(exc).__name__)
            self._defer(row_id, exc)
            return True
        self.processed += 1
        self.on_queued()
        return True

    def _defer(self, row_id: int, exc: BaseException) -> None:
        with Session(self.app.engine) as session:
            row = session.get(Inbound, row_id)
            if row is None:
                return
            row.attempts += 1
            row.error = type(exc).__name__[:200]
            row.claimed_until = utcnow() + dt.timedelta(seconds=30 * 2**row.attempts)
            if row.attempts >= MAX_ATTEMPTS:
                row.shunted = True
                notify_operators(
                    self.app,
                    session,
                    "a message could not be processed",
                    f"Inbound message {row_id} failed {row.attempts} times ({row.error}).\n"
                    "It is kept, encrypted, in the incoming queue; see `coc-mail queue`.\n",
                )
                log.error("processor: inbound %d shunted after %d attempts", row_id, row.attempts)
            session.add(row)
            session.commit()

    # -- routing ----------------------------------------------------------------------------
    def handle(self, session: Session, msg: Incoming) -> None:
        """Route one message by the recipients it was accepted for."""
        parsed = [self.app.addresses.parse(r) for r in msg.envelope.rcpt_tos]
        recipients = [r for r in parsed if r is not None]
        new_report = [r for r in recipients if r.kind in (Kind.ALIAS, Kind.WITHOUT)]
        if new_report:
            without = [r.value for r in new_report if r.kind is Kind.WITHOUT]
            self.to_alias(session, msg, without=without)
        for r in recipients:
            if r.kind is Kind.REPORTER:
                self.to_reporter_address(session, msg, r)
            elif r.kind in (Kind.CASE, Kind.MEMBER):
                self.to_member_address(session, msg, r)
            elif r.kind is Kind.BOUNCE:
                self.to_bounce_address(session, msg, r)
            elif r.kind is Kind.POSTMASTER:
                self.to_postmaster(session, msg)

    def case_of_reply(self, session: Session, msg: Incoming) -> Case | None:
        ids = msg.referenced_ids()
        if not ids:
            return None
        copy = session.exec(
            select(SentCopy)
            .where(col(SentCopy.message_id).in_(ids))
            .where(col(SentCopy.case_id).is_not(None))
        ).first()
        return session.get(Case, copy.case_id) if copy else None

    # -- new reports ------------------------------------------------------------------------
    def to_alias(self, session: Session, msg: Incoming, without: list[str]) -> None:
        case = self.case_of_reply(session, msg)
        if case is not None:
            member = self.app.settings.member_by_email(msg.sender)
            if member is None:
                self.reporter_correspondence(session, case, msg)
            else:
                self.member_mail(session, case, member, msg)
            return
        self.new_case(session, msg, without)

    def verdict(self, msg: Incoming) -> dkim.Verdict | None:
        if not self.app.settings.dkim.verify_inbound:
            return None
        return dkim.verify(msg.content, self.app.dnsfunc, self.app.settings.dkim.dns_timeout)

    def new_case(self, session: Session, msg: Incoming, without: list[str]) -> None:
        reporter = msg.sender or None
        case = open_case(self.app, session, reporter=reporter, report=msg.content)
        decision = conflicts.intake(
            self.app.settings,
            reporter_address=reporter,
            reporter_name=msg.from_name,
            without=without,
        )
        recipients = decision.recipients or [
            m for m in self.app.settings.members if m not in decision.excluded
        ]
        for member in decision.excluded:
            set_standing(self.app, session, case, member.handle, Standing.EXCLUDED)
        for member in recipients:
            set_standing(self.app, session, case, member.handle, Standing.NOTIFIED)
        verdict = self.verdict(msg)
        intro = self.intake_intro(case, verdict)
        for member in recipients:
            self.forward(session, case, member, msg, intro, verdict)
        if not recipients:
            log.error("case %s: every member is excluded; nobody received it", case.code_name)
        if reporter and not msg.is_automatic() and self.ack_allowed(session, reporter):
            self.acknowledge(session, case, reporter, msg)
        log.info(
            "case %s opened: %d recipient(s), %d excluded",
            case.code_name,
            len(recipients),
            len(decision.excluded),
        )

    def intake_intro(self, case: Case, verdict: dkim.Verdict | None) -> str:
        committee = self.app.settings.committee
        lines = [
            f'A new report came in to {committee.address}: case "{case.code_name}",',
            f"opened {case.opened_at:%Y-%m-%d %H:%M} UTC. The report is attached, unaltered.",
            "",
        ]
        if verdict is not None and verdict.result in ("fail", "permerror"):
            lines += [
                f"WARNING: the sender's DKIM signature did not verify (dkim={verdict.result}).",
                "The sender address may be forged; be careful before replying to it.",
                "",
            ]
        lines += [
            "Reply to this message to write to the case. Nothing is archived.",
            "To start the conflict check, name the reported person:  /involves NAME",
            "Send /help for all commands.",
        ]
        return "\n".join(lines) + "\n"

    def forward(
        self,
        session: Session,
        case: Case,
        member: Member,
        msg: Incoming,
        intro: str,
        verdict: dkim.Verdict | None,
    ) -> None:
        committee = self.app.settings.committee
        auth = verdict.header_value(self.app.settings.server.hostname) if verdict else None
        enqueue(
            self.app,
            session,
            case_id=case.id,
            role=member.handle,
            recipient=member.email,
            build=lambda mid: forward_message(
                from_name=committee.name,
                from_addr=self.app.alias,
                to=formataddr((member.name, member.email)),
                reply_to=self.app.addresses.case(case.code_name, member.handle),
                subject=msg.cleaned_subject(case.code_name),
                intro=intro,
                original=msg.content,
                message_id=mid,
                loop=self.app.alias,
                auth_results=auth,
            ),
        )

    def ack_allowed(self, session: Session, sender: str) -> bool:
        limit = self.app.settings.intake.acknowledgments_per_day
        today = utcnow().date()
        tag = self.app.keys.tag("ack", sender.lower())
        row = session.get(AckBudget, tag)
        if row is None or row.day != today:
            row = row or AckBudget(tag=tag, day=today)
            row.day, row.count = today, 0
        row.count += 1
        session.add(row)
        return row.count <= limit

    def acknowledge(self, session: Session, case: Case, reporter: str, msg: Incoming) -> None:
        committee = self.app.settings.committee
        rendered = self.app.templates.render(
            "acknowledgment",
            committee=committee,
            case=case,
        )
        subject = rendered.subject or f"Re: {msg.subject or 'your report'}"
        enqueue(
            self.app,
            session,
            case_id=case.id,
            role="reporter",
            recipient=reporter,
            build=lambda mid: text_message(
                from_name=committee.name,
                from_addr=self.app.alias,
                to=reporter,
                reply_to=self.app.addresses.reporter(case.code_name),
                subject=subject,
                body=rendered.body,
                message_id=mid,
                loop=self.app.alias,
                in_reply_to=msg.message_id or None,
                references=msg.message_id or None,
            ),
        )

    # -- mail about an existing case --------------------------------------------------------
    def reporter_correspondence(self, session: Session, case: Case, msg: Incoming) -> None:
        """Mail from the reporter (or anyone replying as them): to the receiving members."""
        verdict = self.verdict(msg)
        intro = (
            f'The reporter of case "{case.code_name}" wrote again; their message is attached.\n'
            "Reply to this message to write to the case (not to the reporter).\n"
        )
        for handle in receiving_members(self.app, session, case):
            member = self.app.settings.member_by_handle(handle)
            if member is not None:
                self.forward(session, case, member, msg, intro, verdict)
        case.updated_at = utcnow()
        session.add(case)
        log.info("case %s: reporter correspondence forwarded", case.code_name)

    def to_reporter_address(self, session: Session, msg: Incoming, r: Recipient) -> None:
        tag = self.app.keys.tag("reporter", r.token)
        case = session.exec(select(Case).where(Case.reporter_key == tag)).first()
        if case is None:
            log.info("reporter address of a case that no longer exists: dropped")
            return
        self.reporter_correspondence(session, case, msg)

    def to_member_address(self, session: Session, msg: Incoming, r: Recipient) -> None:
        member = self.authenticated_member(msg, r)
        if member is None:
            log.warning("member address used by a sender who is not that member: ignored")
            return
        case = None
        if r.kind is Kind.CASE:
            case = session.exec(select(Case).where(Case.code_name == r.value)).first()
        if case is None and r.kind is Kind.CASE:
            return
        self.member_mail(session, case, member, msg)

    def authenticated_member(self, msg: Incoming, r: Recipient) -> Member | None:
        """The member whose token this is, if the sender is that member too (SPEC 1.5)."""
        for member in self.app.settings.members:
            if r.kind is Kind.CASE:
                mine = self.app.keys.check_token(r.token, "case", r.value, member.handle)
            else:
                mine = self.app.keys.check_token(r.token, "member", member.handle)
            if mine:
                return member if msg.from_address == member.email else None
        return None

    def member_mail(
        self, session: Session, case: Case | None, member: Member, msg: Incoming
    ) -> None:
        """A member's mail to a case or to their own address: answered, never stored.

        Case threads and commands are the next piece of work (see README, "Status"); until
        they land the member is told so, and nothing is relayed.
        """
        committee = self.app.settings.committee
        what = f'case "{case.code_name}"' if case else "your member address"
        body = (
            f"Your message to {what} was received but not relayed: case threads and\n"
            "commands are not available in this version of coc-mail yet. Write to the other\n"
            "members directly for now.\n"
        )
        enqueue(
            self.app,
            session,
            case_id=case.id if case else None,
            role=member.handle,
            recipient=member.email,
            build=lambda mid: text_message(
                from_name=committee.name,
                from_addr=self.app.alias,
                to=formataddr((member.name, member.email)),
                reply_to=None,
                subject=f"Re: {msg.subject}" if msg.subject else "coc-mail",
                body=body,
                message_id=mid,
                loop=self.app.alias,
                in_reply_to=msg.message_id or None,
            ),
        )

    # -- bounces and role addresses ---------------------------------------------------------
    def to_bounce_address(self, session: Session, msg: Incoming, r: Recipient) -> None:
        copy = session.get(SentCopy, r.value)
        status = dsn_status(msg.content)
        if copy is None:
            log.info("bounce for an unknown or expired copy: dropped")
            return
        role = self.app.keys.open_text(copy.role, "sent_copies.role")
        case = session.get(Case, copy.case_id) if copy.case_id else None
        who = "the reporter" if role == "reporter" else role
        where = f' of case "{case.code_name}"' if case else ""
        log.warning(
            "bounce for a copy%s (status %s)",
            f" of case {case.code_name}" if case else "",
            status or "?",
        )
        notify_operators(
            self.app,
            session,
            "a copy bounced",
            f"A copy{where} for {who} was returned by the receiving mail server\n"
            f"(status {status or 'unknown'}). Check that address.\n",
        )

    def to_postmaster(self, session: Session, msg: Incoming) -> None:
        targets = self.app.settings.operators or self.app.settings.members
        for member in targets:
            enqueue(
                self.app,
                session,
                case_id=None,
                role="operator",
                recipient=member.email,
                build=lambda mid, m=member: forward_message(  # type: ignore[misc]
                    from_name=self.app.settings.committee.name,
                    from_addr=self.app.alias,
                    to=formataddr((m.name, m.email)),
                    reply_to=msg.sender or self.app.alias,
                    subject=f"[postmaster] {msg.subject or '(no subject)'}",
                    intro="Mail to postmaster@ / abuse@ of the committee domain, attached.\n",
                    original=msg.content,
                    message_id=mid,
                    loop=self.app.alias,
                    auth_results=None,
                ),
            )


def dsn_status(content: bytes) -> str:
    """The first ``Status:`` of a delivery status notification (RFC 3464), if any."""
    parsed = message_from_bytes(content, policy=compat32)
    for part in parsed.walk():
        if part.get_content_type() == "message/delivery-status":
            payload = part.get_payload()
            blocks = payload if isinstance(payload, list) else []
            for block in blocks:
                status = block.get("Status") if isinstance(block, Message) else None
                if status:
                    return one_line(str(status), 20)
    return ""
