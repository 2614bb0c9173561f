"""Processing the incoming queue: route each accepted message and apply it in one transaction.

For each message: read and open the row, do the slow work (DKIM verification, rendering,
signing) with no write lock held, then in one short transaction apply the case change, add
the queued copies and delete the row. A crash at any point either redoes the whole step or
finds it done. A message that keeps failing (not for a database outage) is shunted: kept
sealed, the operators told, and retried by ``coc-mail queue --flush``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from email.utils import formataddr

from sqlalchemy import delete, func, insert, or_
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlmodel import Session, col, select

from . import audit, conflicts, dkim, document
from .addresses import Kind, Recipient
from .app import App
from .cases import Standing, open_standings, receiving_members, unused_code_name
from .compose import ForwardBody, forward_head, one_line, text_message
from .config import Member
from .errors import where
from .message import Incoming
from .outbox import Outbox
from .spool import Envelope
from .store import (
    AckBudget,
    Case,
    Inbound,
    ProcessedInbound,
    SentCopy,
    deferred_blob,
    fill_blob,
    utcnow,
)
from .workflow import Work, declared_conflicts, pending_members

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
BATCH = 32  # messages per processing transaction
BATCH_BYTES = 4 << 20  # and about this much content at most (a big report goes alone)
DIGEST_PENDING = "digest-pending"
NOTICES_PER_HOUR = 3
MEMBER_STATE = "coc-mail member state"
DB_TROUBLE = (OperationalError, DisconnectionError, DBAPIError)


@dataclass
class Unit:
    """One message's unit of work: the session it reads and writes, and the copies it queues."""

    app: App
    session: Session
    msg: Incoming
    outbox: Outbox
    _verdict: dkim.Verdict | None = None
    _verified: bool = False
    bodies: dict[str, tuple[ForwardBody, int]] = field(default_factory=dict)  # per intro text

    def verdict(self) -> dkim.Verdict | None:
        """The inbound DKIM verdict, computed once (a DNS lookup; no write lock is held)."""
        if not self._verified:
            self._verified = True
            if self.app.settings.dkim.verify_inbound:
                self._verdict = dkim.verify(
                    self.msg.content, self.app.dnsfunc, self.app.settings.dkim.dns_timeout
                )
        return self._verdict


class Processor:
    """Takes incoming-queue rows one by one and handles them; run by :meth:`run` in a thread."""

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
            except DB_TROUBLE as exc:
                log.warning("processor: database unavailable (%s); retrying", type(exc).__name__)
                done = 0
            except Exception as exc:  # noqa: BLE001 - the loop must survive anything
                log.error("processor: unexpected %s at %s", type(exc).__name__, where(exc))
                done = 0
            if not done:
                self.wake.wait(poll)
                self.wake.clear()

    def run_once(self) -> int:
        """Process queued messages until none is ready; return how many were handled."""
        handled = 0
        while not self.stopping.is_set():
            done = self.process_batch()
            if not done:
                break
            handled += done
        return handled

    def _ready(self, session: Session, limit: int) -> list[int]:
        """Ids of the oldest ready messages, at most ``limit`` and about BATCH_BYTES in all
        (always at least one). On PostgreSQL they are locked ``FOR UPDATE SKIP LOCKED`` until
        the caller's transaction ends, so two daemons never handle the same message; SQLite
        has one daemon and one processor."""
        now = utcnow()
        rows = session.execute(
            select(Inbound.id, func.length(Inbound.content))
            .where(col(Inbound.shunted).is_(False))
            .where(or_(col(Inbound.claimed_until).is_(None), col(Inbound.claimed_until) <= now))
            .order_by(col(Inbound.id))
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        ids: list[int] = []
        size = 0
        for row_id, length in rows:
            if ids and size + length > BATCH_BYTES:
                break
            ids.append(int(row_id))
            size += length
        return ids

    def _unit(self, session: Session, row: Queued, outbox: Outbox) -> Unit:
        envelope = Envelope.from_json(self.app.keys.open(row.envelope, "inbound.envelope"))
        content = self.app.keys.open(row.content, "inbound.content")
        row.content = b""  # the sealed copy is not needed any more (a big report: 1x less)
        return Unit(self.app, session, Incoming(envelope, content), outbox)

    @property
    def shared(self) -> bool:
        """Is the incoming queue a table of the main database (PostgreSQL)?"""
        return self.app.incoming is self.app.engine

    @contextlib.contextmanager
    def _sessions(self) -> Iterator[tuple[Session, Session]]:
        """The main database's session and the incoming queue's (the same one when shared)."""
        with Session(self.app.engine, autoflush=False) as main:
            if self.shared:
                yield main, main
                return
            with Session(self.app.incoming, autoflush=False) as inq:
                yield main, inq

    def _load(self, main: Session, inq: Session, ids: list[int]) -> list[Queued]:
        """The rows, minus those already applied (a crash came between the main commit and
        the deletion from a separate incoming file): those are deleted now."""
        rows = [Queued(*r) for r in inq.execute(
            select(col(Inbound.id), col(Inbound.uid), col(Inbound.envelope),
                   col(Inbound.content))
            .where(col(Inbound.id).in_(ids)).order_by(col(Inbound.id))
            .with_for_update(skip_locked=True)
        ).all()]
        if self.shared or not rows:
            return rows
        applied = set(main.exec(
            select(ProcessedInbound.uid).where(col(ProcessedInbound.uid).in_(
                [_uid(r) for r in rows]))
        ).all())
        if applied:
            done = [r.id for r in rows if _uid(r) in applied]
            inq.exec(delete(Inbound).where(col(Inbound.id).in_(done)))
            inq.commit()
            log.info("processor: %d message(s) already applied; removed from the queue",
                     len(done))
            rows = [r for r in rows if _uid(r) not in applied]
        return rows

    def _apply(self, main: Session, inq: Session, rows: list[Queued]) -> None:
        """Handle ``rows`` in one transaction of the main database and commit it; then take
        them off a separate incoming queue. Raises what a handler raises (nothing is kept)."""
        # One outbox for the batch: its copies go in with one statement per table. No message
        # of the batch can refer to a copy another one queued: nobody has received it yet.
        outbox = Outbox(self.app)
        units = [self._unit(main, row, outbox) for row in rows]
        for unit in units:
            unit.verdict()  # the slow work, before the first write
        for unit in units:
            self.handle(unit)
            main.flush()  # the next message sees this one's changes
        outbox.write(main)
        if self.shared:
            main.execute(delete(Inbound).where(col(Inbound.id).in_([r.id for r in rows])))
        else:
            now = utcnow()
            main.connection().execute(
                insert(ProcessedInbound.__table__),  # type: ignore[attr-defined]
                [{"uid": _uid(r), "at": now} for r in rows],
            )
        main.commit()
        if not self.shared:
            try:
                inq.exec(delete(Inbound).where(col(Inbound.id).in_([r.id for r in rows])))
                inq.commit()
            except DB_TROUBLE as exc:  # applied already: the next pass removes them
                log.warning("processor: could not remove %d applied message(s) (%s)",
                            len(rows), type(exc).__name__)
        self.processed += len(rows)
        self.on_queued()

    def process_batch(self, limit: int = BATCH) -> int:
        """Handle up to ``limit`` ready messages in one transaction (one commit for all);
        return how many were taken, 0 when none was ready.

        If one message fails, the whole batch is rolled back and its messages are handled one
        by one, so a bad message costs only itself.
        """
        with self._sessions() as (main, inq):
            ids = self._ready(inq, limit)
            if not ids:
                return 0
            if len(ids) > 1:
                rows = self._load(main, inq, ids)
                try:
                    if rows:
                        self._apply(main, inq, rows)
                    return len(ids)
                except DB_TROUBLE:
                    raise  # not the messages' fault: the loop waits and tries again
                except Exception:  # noqa: BLE001 - one of them is bad: find it, alone
                    main.rollback()
                    if inq is not main:
                        inq.rollback()
        return sum(self.process_one(i) for i in ids)

    def process_one(self, row_id: int) -> bool:
        """Handle one message in its own transaction; a failure is recorded on its row."""
        try:
            with self._sessions() as (main, inq):
                rows = self._load(main, inq, [row_id])
                if rows:
                    self._apply(main, inq, rows)
        except DB_TROUBLE:
            raise  # not the message's fault: the loop waits and tries again, uncounted
        except Exception as exc:  # noqa: BLE001 - recorded on the row; shunted after a few
            log.error(
                "processor: inbound %d failed: %s at %s", row_id, type(exc).__name__, where(exc)
            )
            self._defer(row_id, exc)
        return True

    def _defer(self, row_id: int, exc: BaseException) -> None:
        with self._sessions() as (main, inq):
            row = inq.get(Inbound, row_id)
            if row is None:
                return
            row.attempts += 1
            row.error = f"{type(exc).__name__} at {where(exc)}"[:200]
            row.claimed_until = utcnow() + dt.timedelta(seconds=30 * 2**row.attempts)
            if row.attempts >= MAX_ATTEMPTS:
                row.shunted = True
                outbox = Outbox(self.app)
                outbox.notify_operators(
                    "a message could not be processed",
                    f"Inbound message {row_id} failed {row.attempts} times ({row.error}).\n"
                    "It is kept, encrypted, in the incoming queue. `coc-mail queue --flush`\n"
                    "retries it (after an upgrade that fixes the cause).\n",
                )
                outbox.write(main)
                main.commit()
                log.error("processor: inbound %d shunted after %d attempts", row_id, row.attempts)
            inq.add(row)
            inq.commit()

    # -- routing ----------------------------------------------------------------------------
    def handle(self, unit: Unit) -> None:
        """Route one message by the distinct recipients it was accepted for.

        Every target (a case, a member address, the alias) is handled once, however many of
        the message's addresses lead to it.
        """
        seen: set[tuple[Kind, str, str]] = set()
        recipients: list[Recipient] = []
        for address in unit.msg.envelope.rcpt_tos:
            r = self.app.addresses.parse(address)
            if r is not None and (r.kind, r.value, r.token) not in seen:
                seen.add((r.kind, r.value, r.token))
                recipients.append(r)
        done_cases: set[int] = set()
        if any(r.kind not in (Kind.ALIAS, Kind.WITHOUT) for r in recipients):
            unit.session.info.pop(MEMBER_STATE, None)  # member mail may change it
        new_report = [r for r in recipients if r.kind in (Kind.ALIAS, Kind.WITHOUT)]
        if new_report:
            without = [r.value for r in new_report if r.kind is Kind.WITHOUT]
            self.to_alias(unit, without, done_cases)
        postmaster = False
        for r in recipients:
            if r.kind is Kind.REPORTER:
                case = self.case_by_reporter_token(unit.session, r.token)
                if case is None:
                    log.info("reporter address of a case that no longer exists: dropped")
                elif case.id not in done_cases:
                    done_cases.add(int(case.id or 0))
                    self.reporter_correspondence(unit, case)
            elif r.kind in (Kind.CASE, Kind.MEMBER):
                self.to_member_address(unit, r)
            elif r.kind is Kind.BOUNCE:
                self.to_bounce_address(unit, r)
            elif r.kind is Kind.POSTMASTER and not postmaster:
                postmaster = True
                self.to_postmaster(unit)

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

    def case_by_reporter_token(self, session: Session, token: str) -> Case | None:
        tag = self.app.keys.tag("reporter", token)
        return session.exec(select(Case).where(Case.reporter_key == tag)).first()

    # -- new reports ------------------------------------------------------------------------
    def to_alias(self, unit: Unit, without: list[str], done_cases: set[int]) -> None:
        # A report that excludes a member (without.) is always a new case: filed into an old
        # one, it would reach that member through the old case.
        case = None if without else self.case_of_reply(unit.session, unit.msg)
        if case is None:
            self.new_case(unit, without)
            return
        done_cases.add(int(case.id or 0))
        member = self.app.settings.member_by_email(unit.msg.sender)
        if member is None:
            self.reporter_correspondence(unit, case)
        else:
            self.member_wrote_to_alias(unit, case, member)

    def new_case(self, unit: Unit, without: list[str]) -> None:
        msg, session = unit.msg, unit.session
        reporter = msg.sender or None
        verdict = unit.verdict()  # slow work first (DNS), before anything is written
        report = self.app.keys.seal(msg.content, "cases.report")
        case = Case(
            code_name=unused_code_name(session),
            reporter_key="",
            reporter=self.app.keys.seal_text(reporter, "cases.reporter") if reporter else None,
            report=deferred_blob(session, report),
        )
        case.reporter_key = self.app.keys.tag(
            "reporter", self.app.addresses.reporter_token(case.code_name)
        )
        pending, declared = self.member_state(session)
        decision = conflicts.intake(
            self.app.settings,
            reporter_address=reporter,
            reporter_name=msg.from_name,
            without=without,
            pending=pending,
            declared=declared,
        )
        recipients = decision.recipients or [
            m
            for m in self.app.settings.members
            if m not in decision.excluded and m.handle not in pending
        ]
        flood = self.flooding(session, reporter or "", msg.envelope.peer)
        if flood:  # never dropped: opened, and listed in the next digest instead of mailed
            case.reminders = DIGEST_PENDING
        session.add(case)
        session.flush()  # the write transaction starts here: the slow work is done
        fill_blob(session, "cases", "report", int(case.id or 0), report)
        del report  # stored: a big report is not held twice while its copies are built
        if not flood:
            intro = self.intake_intro(case, verdict)
            for member in recipients:
                self.forward(unit, case, member, intro)
        if reporter and not msg.is_automatic() and self.ack_allowed(session, reporter):
            self.acknowledge(unit, case, reporter)
        first = {m.handle: Standing.EXCLUDED for m in decision.excluded}
        first.update({m.handle: Standing.NOTIFIED for m in recipients})
        open_standings(self.app, session, case, first)
        audit.record(self.app.keys, session, case.code_name, "coc-mail", "case opened (New)",
                     first=True)
        if not recipients:
            log.error("case %s: every member is excluded; nobody received it", case.code_name)
        log.info(
            "case %s opened: %d recipient(s), %d excluded%s",
            case.code_name,
            len(recipients),
            len(decision.excluded),
            " (a flood: held for the digest)" if flood else "",
        )

    def member_state(self, session: Session) -> tuple[set[str], dict[str, list[str]]]:
        """Members not onboarded yet and conflicts declared by mail, read once per batch of
        new reports (:meth:`handle` forgets them after any other kind of mail)."""
        state = session.info.get(MEMBER_STATE)
        if state is None:
            state = session.info[MEMBER_STATE] = (
                pending_members(self.app, session), declared_conflicts(self.app, session)
            )
        return state

    def flooding(self, session: Session, sender: str, peer: str) -> bool:
        """Has this sender, or this client address, sent more reports this hour than
        ``intake.reports_per_hour_before_digest``? (Counted under keyed tags.)"""
        limit = self.app.settings.intake.reports_per_hour_before_digest
        if not limit:
            return False
        now = utcnow()
        hour = f"{now:%Y%m%d%H}"
        over = False
        if peer in self.app.settings.intake.trusted_relays:
            peer = ""  # a front MTA relays for everyone: count senders only
        for who in {f"sender:{sender.lower()}" if sender else "", f"ip:{peer}" if peer else ""}:
            if not who:
                continue
            tag = self.app.keys.tag("flood", who, hour)
            row = session.get(AckBudget, tag) or AckBudget(tag=tag, day=now.date(), count=0)
            row.count += 1
            session.add(row)
            over = over or row.count > limit
        return over

    def intake_intro(self, case: Case, verdict: dkim.Verdict | None) -> str:
        committee = self.app.settings.committee
        lines = [
            f'A new report came in to {committee.address}: case "{case.code_name}",',
            f"opened {case.opened_at:%Y-%m-%d %H:%M} UTC. The report is attached, unaltered.",
            "",
        ]
        lines += self.dkim_warning(verdict)
        lines += [
            "Reply to this message to write to the case. Nothing is archived.",
            "To start the conflict check, name the reported person:  /involves NAME",
            "Send /help for all commands.",
        ]
        return "\n".join(lines) + "\n"

    @staticmethod
    def dkim_warning(verdict: dkim.Verdict | None) -> list[str]:
        if verdict is None or verdict.result not in ("fail", "permerror"):
            return []
        return [
            f"WARNING: the sender's DKIM signature did not verify (dkim={verdict.result}).",
            "The sender address may be forged; be careful before replying to it.",
            "",
        ]

    def forward(self, unit: Unit, case: Case, member: Member, intro: str) -> None:
        """Queue a copy of the incoming message, attached unaltered, for one member."""
        committee = self.app.settings.committee
        verdict = unit.verdict()
        auth = verdict.header_value(self.app.settings.server.hostname) if verdict else None
        msg = unit.msg
        shared = unit.bodies.get(intro)
        if shared is None:
            built = ForwardBody.build(intro, msg.content)
            shared = unit.bodies[intro] = (built, unit.outbox.share(built.parts))
        body, stored = shared
        unit.outbox.queue(
            case=case,
            role=member.handle,
            recipient=member.email,
            body=stored,
            build=lambda mid: forward_head(
                from_name=committee.name,
                from_addr=self.app.alias,
                to=formataddr((member.name, member.email)),
                reply_to=self.app.addresses.case(case.code_name, member.handle),
                subject=msg.cleaned_subject(case.code_name),
                body=body,
                message_id=mid,
                loop=self.app.alias,
                auth_results=auth,
            ),
        )

    def ack_allowed(self, session: Session, sender: str) -> bool:
        limit = self.app.settings.intake.acknowledgments_per_day
        if not limit:
            return False
        today = utcnow().date()
        tag = self.app.keys.tag("ack", sender.lower())
        row = session.get(AckBudget, tag)
        if row is None or row.day != today:
            row = row or AckBudget(tag=tag, day=today)
            row.day, row.count = today, 0
        row.count += 1
        session.add(row)
        return row.count <= limit

    def acknowledge(self, unit: Unit, case: Case, reporter: str) -> None:
        committee = self.app.settings.committee
        msg = unit.msg
        rendered = self.app.templates.render("acknowledgment", committee=committee, case=case)
        subject = rendered.subject or f"Re: {msg.subject or 'your report'}"
        unit.outbox.queue(
            case=case,
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
    def reporter_correspondence(self, unit: Unit, case: Case) -> None:
        """Mail from the reporter (or anyone replying as them): to the receiving members."""
        locked = unit.session.exec(select(Case).where(Case.id == case.id).with_for_update())
        case = locked.one()
        intro_lines = [
            f'The reporter of case "{case.code_name}" wrote again; their message is attached.',
            "Reply to this message to write to the case (not to the reporter).",
            "",
            *self.dkim_warning(unit.verdict()),
        ]
        intro = "\n".join(intro_lines).rstrip("\n") + "\n"
        for handle in receiving_members(self.app, unit.session, case):
            member = self.app.settings.member_by_handle(handle)
            if member is not None:
                self.forward(unit, case, member, intro)
        if case.purged_at is None:  # a purged document stays purged
            document.add(
                self.app.keys, unit.session, case, section=document.CORRESPONDENCE,
                author="the reporter", body=document.text_of(unit.msg.content),
            )
        audit.record(self.app.keys, unit.session, case.code_name, "reporter",
                     "reporter correspondence received")
        case.updated_at = utcnow()
        unit.session.add(case)
        log.info("case %s: reporter correspondence forwarded", case.code_name)

    def to_member_address(self, unit: Unit, r: Recipient) -> None:
        owner = self.token_owner(r)
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
        problem = self.authentication_problem(unit, owner)
        if problem:
            log.warning("member address used by a sender who is not that member: ignored")
            if not self.notice_allowed(unit.session, owner):
                return  # at most a few notices an hour: a forger cannot flood the member
            self.reply_to_member(
                unit, case, owner,
                "A message sent to your own coc-mail address"
                + (f' for case "{case.code_name}"' if case else "")
                + f" was ignored: {problem}.\nIf it was you, send it again from "
                f"{owner.email}" + (" with your provider's DKIM signature" if
                                    self.app.settings.dkim.require_aligned_members else "")
                + ". If not, someone may have your case address: tell the operators.\n",
            )
            return
        self.member_mail(unit, case, owner)

    def notice_allowed(self, session: Session, member: Member) -> bool:
        """At most NOTICES_PER_HOUR "ignored" notices to one member in an hour."""
        now = utcnow()
        tag = self.app.keys.tag("ignored-notice", member.handle, f"{now:%Y%m%d%H}")
        row = session.get(AckBudget, tag) or AckBudget(tag=tag, day=now.date(), count=0)
        row.count += 1
        session.add(row)
        return row.count <= NOTICES_PER_HOUR

    def token_owner(self, r: Recipient) -> Member | None:
        """The member whose address token this is."""
        for member in self.app.settings.members:
            if r.kind is Kind.CASE:
                mine = self.app.keys.check_token(r.token, "case", r.value, member.handle)
            else:
                mine = self.app.keys.check_token(r.token, "member", member.handle)
            if mine:
                return member
        return None

    def authentication_problem(self, unit: Unit, member: Member) -> str:
        """Why this message does not count as the member's (SPEC 1.5); empty when it does."""
        msg = unit.msg
        if msg.from_address != member.email:
            return "its From: address is not yours"
        if self.app.settings.server.require_tls_for_members and not msg.envelope.tls:
            return "it did not arrive over an encrypted (STARTTLS) connection"
        if self.app.settings.dkim.require_aligned_members:
            verdict = unit.verdict()
            domain = member.email.rpartition("@")[2]
            signer = verdict.domain.lower() if verdict else ""
            aligned = bool(signer) and (domain == signer or domain.endswith("." + signer))
            if verdict is None or verdict.result != "pass" or not aligned:
                result = verdict.result if verdict else "none"
                return f"it carried no DKIM signature of {domain} that verified (dkim={result})"
        return ""

    def member_wrote_to_alias(self, unit: Unit, case: Case, member: Member) -> None:
        """A member replied to the alias about a case: not authenticated by a token, so
        nothing is done; the member is told to use their case address."""
        self.reply_to_member(
            unit,
            case,
            member,
            "Your message to the committee address was not relayed to the case: it carried no\n"
            "case address. Reply to a message from the case instead (its Reply-To: is your own\n"
            "address for the case).\n",
        )

    def member_mail(self, unit: Unit, case: Case | None, member: Member) -> None:
        """A member's mail to a case or to their own address: a command or a thread post."""
        Work(self.app, unit.session, unit.outbox, unit.msg).member_mail(case, member)

    def reply_to_member(self, unit: Unit, case: Case | None, member: Member, body: str) -> None:
        msg = unit.msg
        subject = f"Re: {msg.subject}" if msg.subject else "coc-mail"
        unit.outbox.to_member(member, case, subject, body, in_reply_to=msg.message_id or None)

    # -- bounces and role addresses ---------------------------------------------------------
    def to_bounce_address(self, unit: Unit, r: Recipient) -> None:
        copy = unit.session.get(SentCopy, r.value)
        status = dsn_status(unit.msg.parsed())
        if copy is None:
            log.info("bounce for an unknown or expired copy: dropped")
            return
        role = self.app.keys.open_text(copy.role, "sent_copies.role")
        if role == "operator":
            log.warning("an operator notice bounced (status %s)", status or "?")
            return
        case = unit.session.get(Case, copy.case_id) if copy.case_id else None
        who = "the reporter" if role == "reporter" else role
        place = f' of case "{case.code_name}"' if case else ""
        log.warning("bounce for a copy%s (status %s)", place, status or "?")
        unit.outbox.notify_operators(
            "a copy bounced",
            f"A copy{place} for {who} was returned by the receiving mail server\n"
            f"(status {status or 'unknown'}). Check that address.\n",
        )

    def to_postmaster(self, unit: Unit) -> None:
        msg = unit.msg
        targets = self.app.settings.operators or self.app.settings.members
        body = ForwardBody.build(
            "Mail to postmaster@ / abuse@ of the committee domain, attached.\n", msg.content
        )
        stored = unit.outbox.share(body.parts)
        for member in targets:
            unit.outbox.queue(
                case=None,
                role="operator",
                recipient=member.email,
                body=stored,
                build=lambda mid, m=member: forward_head(  # type: ignore[misc]
                    from_name=self.app.settings.committee.name,
                    from_addr=self.app.alias,
                    to=formataddr((m.name, m.email)),
                    reply_to=msg.sender or self.app.alias,
                    subject=f"[postmaster] {msg.subject or '(no subject)'}",
                    body=body,
                    message_id=mid,
                    loop=self.app.alias,
                    auth_results=None,
                ),
            )


@dataclass
class Queued:
    """An incoming-queue row as read for processing."""

    id: int
    uid: str | None
    envelope: bytes
    content: bytes


def _uid(row: Queued) -> str:
    return row.uid or f"id-{row.id}"


def dsn_status(parsed: Message) -> str:
    """The first ``Status:`` of a delivery status notification (RFC 3464), if any."""
    for part in parsed.walk():
        if part.get_content_type() == "message/delivery-status":
            payload = part.get_payload()
            blocks = payload if isinstance(payload, list) else []
            for block in blocks:
                status = block.get("Status") if isinstance(block, Message) else None
                if status:
                    return one_line(str(status), 20)
    return ""
