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
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from email.utils import formataddr
from pathlib import Path

from sqlalchemy import delete, func, insert, or_, update
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlmodel import Session, col, select

from coc_mail.app import App
from coc_mail.cases import audit, conflicts, document, watchdog
from coc_mail.cases.members import declared_conflicts, pending_members
from coc_mail.cases.standing import Standing, open_standings, receiving_members, unused_code_name
from coc_mail.cases.work import Work
from coc_mail.config import Member
from coc_mail.delivery.outbox import Outbox
from coc_mail.errors import where
from coc_mail.mail import budget, dkim, readable
from coc_mail.mail.addresses import Kind, Recipient
from coc_mail.mail.compose import ForwardBody, forward_head, one_line, text_message
from coc_mail.mail.message import Envelope, Incoming, header_block
from coc_mail.mail.redact import Redactor
from coc_mail.store import (
    Case,
    CodeName,
    Inbound,
    ProcessedInbound,
    SentCopy,
    counter,
    deferred_blob,
    fill_blob,
    utcnow,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
BATCH = 32  # messages per processing transaction
BATCH_BYTES = 4 << 20  # and about this much content at most (a big report goes alone)
DIGEST_PENDING = "digest-pending"
NOTICES_PER_HOUR = 3
MEMBER_STATE = "coc-mail member state"
# The database itself is in trouble (down, locked, full): not the message's fault, so the loop
# waits and tries again. Any other error (an IntegrityError, a DataError: what a message can
# cause) is the message's: retried a few times on its own, then set aside.
DB_TROUBLE = (OperationalError, DisconnectionError, InterfaceError)


@dataclass
class Unit:
    """One message's unit of work: the session it reads and writes, and the copies it queues."""

    app: App
    session: Session
    msg: Incoming
    outbox: Outbox
    row_id: int = 0
    _verdict: dkim.Verdict | None = None
    _verified: bool = False
    bodies: dict[str, tuple[ForwardBody, int]] = field(default_factory=dict)  # per intro text

    def verdict(self) -> dkim.Verdict | None:
        """The inbound DKIM verdict, computed once (a DNS lookup; no write lock is held)."""
        if not self._verified:
            self._verified = True
            if self.app.settings.dkim.verify_inbound:
                self._verdict = dkim.verify(
                    self.msg.content, self.app.dnsfunc, self.app.settings.dkim.dns_timeout,
                    self.app.settings.processing.max_dkim_signed_headers,
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
        # For the watchdog (coc_mail/cases/watchdog.py): the message being worked on, and the
        # processor thread's CPU clock and its reading when that work began.
        self.current: int | None = None
        self.cpu_clock: int | None = None
        self.cpu_start = 0.0
        self.hand_fd: int | None = None  # the "message in hand" file (coc_mail/cases/watchdog.py)
        self.kernel_timer = False  # arm ITIMER_PROF per message (a worker that only processes)

    @property
    def limits(self) -> budget.Limits:
        p = self.app.settings.processing
        return budget.Limits(
            parts=p.max_parts, depth=p.max_depth, part_header_bytes=p.max_part_header_bytes,
            header_fields=p.max_header_fields, parameters=p.max_parameters,
            dkim_signed_headers=p.max_dkim_signed_headers,
        )

    def _begin(self, row_id: int) -> None:
        if self.cpu_clock is not None:
            self.cpu_start = time.clock_gettime(self.cpu_clock)
        self.current = row_id
        if self.hand_fd is not None:
            watchdog.in_hand(self.hand_fd, row_id)
        if self.kernel_timer:
            signal.setitimer(signal.ITIMER_PROF, self.app.settings.processing.max_cpu_seconds
                             + watchdog.KERNEL_GRACE)

    def _end(self) -> None:
        self.current = None
        if self.kernel_timer:
            signal.setitimer(signal.ITIMER_PROF, 0)
        if self.hand_fd is not None:
            watchdog.in_hand(self.hand_fd, 0)

    # -- the loop ---------------------------------------------------------------------------
    def run(self, poll: float = 2.0) -> None:
        self.cpu_clock = time.pthread_getcpuclockid(threading.get_ident())
        hand = watchdog.files(self.app.settings.server.pid_file)[1]
        hand.parent.mkdir(parents=True, exist_ok=True)
        self.hand_fd = os.open(hand, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self.set_aside_over_budget()
        except DB_TROUBLE as exc:
            log.warning("processor: could not set aside messages over budget yet (%s)",
                        type(exc).__name__)
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
        return Unit(self.app, session, Incoming(envelope, content), outbox, row.id)

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
        limits = self.limits
        over: dict[int, str] = {}
        try:
            for unit in units:
                self._begin(unit.row_id)
                problem = budget.check(unit.msg.content, limits)
                if problem:
                    over[unit.row_id] = problem
                    continue
                unit.verdict()  # the slow work, before the first write
            units = [u for u in units if u.row_id not in over]
            for unit in units:
                self._begin(unit.row_id)
                self.handle(unit)
                main.flush()  # the next message sees this one's changes
        finally:
            self._end()
        for row_id, problem in over.items():
            self._tell_set_aside(outbox, row_id, problem)
        outbox.write(main)
        done = [r for r in rows if r.id not in over]
        if self.shared:
            self._mark_set_aside(main, over)
            if done:
                main.execute(delete(Inbound).where(col(Inbound.id).in_([r.id for r in done])))
        elif done:
            now = utcnow()
            main.connection().execute(
                insert(ProcessedInbound.__table__),  # type: ignore[attr-defined]
                [{"uid": _uid(r), "at": now} for r in done],
            )
        main.commit()
        if not self.shared:
            try:
                self._mark_set_aside(inq, over)
                if done:
                    inq.exec(delete(Inbound).where(col(Inbound.id).in_([r.id for r in done])))
                inq.commit()
            except DB_TROUBLE as exc:  # applied already: the next pass removes them
                log.warning("processor: could not remove %d applied message(s) (%s)",
                            len(rows), type(exc).__name__)
        self.processed += len(done)
        self.on_queued()

    # -- the processing budget --------------------------------------------------------------
    @staticmethod
    def _mark_set_aside(session: Session, over: dict[int, str]) -> None:
        for row_id, problem in over.items():
            session.execute(update(Inbound).where(col(Inbound.id) == row_id).values(
                shunted=True, attempts=MAX_ATTEMPTS, error=problem[:200]))

    @staticmethod
    def _tell_set_aside(outbox: Outbox, row_id: int, problem: str) -> None:
        log.warning("processor: inbound %d set aside, over its processing budget: %s",
                    row_id, problem)
        outbox.notify_operators(
            "a message was set aside",
            f"Inbound message {row_id} was set aside without being processed: {problem}.\n"
            "The limits are the [processing] keys of the configuration. The message is kept,\n"
            "encrypted, in the incoming queue; after raising the limit (`coc-mail reload`),\n"
            "`coc-mail queue --flush` processes it. The next messages went on as usual.\n",
        )

    @property
    def over_budget_file(self) -> Path:
        """Where the watchdog writes the id of a message that used up its CPU time before it
        ends the worker (the transaction that held the message dies with it)."""
        return watchdog.files(self.app.settings.server.pid_file)[0]

    def set_aside_over_budget(self) -> int:
        """Set aside the messages the watchdog stopped (see :attr:`over_budget_file`)."""
        path = self.over_budget_file
        try:
            lines = path.read_text().split()
        except FileNotFoundError:
            return 0
        over = {int(w): f"more than {self.app.settings.processing.max_cpu_seconds:g} CPU "
                        "seconds of processing" for w in lines if w.isdigit()}
        with self._sessions() as (main, inq):
            outbox = Outbox(self.app)
            for row_id, problem in over.items():
                self._tell_set_aside(outbox, row_id, problem)
            outbox.write(main)
            self._mark_set_aside(inq, over)
            if inq is not main:
                inq.commit()
            main.commit()
        path.unlink(missing_ok=True)
        return len(over)

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
        auto = unit.msg.auto_reply()
        for r in recipients:
            if auto and r.kind in (Kind.REPORTER, Kind.CASE, Kind.MEMBER):
                # Out-of-office replies and responders: never relayed, never answered.
                log.info("automatic reply (%s) to a %s address: dropped", auto, r.kind.value)
                continue
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

    def referenced(self, session: Session, msg: Incoming) -> list[tuple[Case, str]]:
        """The cases of the copies of ours that ``In-Reply-To``/``References`` name, each with
        whom that copy went to (a member's handle, ``reporter`` or ``operator``)."""
        ids = msg.referenced_ids()
        if not ids:
            return []
        found: list[tuple[Case, str]] = []
        for copy in session.exec(
            select(SentCopy)
            .where(col(SentCopy.message_id).in_(ids))
            .where(col(SentCopy.case_id).is_not(None))
        ):
            case = session.get(Case, copy.case_id)
            if case is not None:
                found.append((case, self.app.keys.open_text(copy.role, "sent_copies.role")))
        return found

    def case_by_reporter_token(self, session: Session, token: str) -> Case | None:
        tag = self.app.keys.tag("reporter", token)
        return session.exec(select(Case).where(Case.reporter_key == tag)).first()

    # -- new reports ------------------------------------------------------------------------
    def to_alias(self, unit: Unit, without: list[str], done_cases: set[int]) -> None:
        """Mail to the alias: a new report, unless it answers a copy that went to a reporter
        (the acknowledgment, a follow-up): then it is that reporter's correspondence. Holding
        the Message-ID of any other copy (a conflict check, a member's copy) opens nothing:
        the mail is a new report. A member answering their own copy of a case at the alias
        is told to use their case address (nothing is relayed)."""
        # A report that excludes a member (without.) is always a new case: filed into an old
        # one, it would reach that member through the old case.
        msg = unit.msg
        refs = [] if without else self.referenced(unit.session, msg)
        member = self.app.settings.member_by_email(msg.mailbox) if msg.mailbox else None
        reporters = [case for case, role in refs if role == "reporter"]
        own = [case for case, role in refs if member is not None and role == member.handle]
        if not reporters and not own:
            quoted = self.quoted_cases(unit)
            automatic = bool(msg.auto_reply()) or msg.is_report()
            if quoted is None and automatic and self.our_copies(unit):
                self.automatic_about_our_mail(unit)  # an auto-reply to one of our copies
            elif quoted is None:  # nothing of ours in it: a new report (SPEC 8.1)
                self.new_case(unit, without)
            elif automatic:
                self.automatic_about_our_mail(unit)
            elif member is not None:
                self.member_forwarded_case_mail(unit, member)
            else:
                self.case_mail_came_back(unit, quoted, done_cases)
            return
        case = (reporters or own)[0]
        done_cases.add(int(case.id or 0))
        if msg.auto_reply():
            log.info("case %s: automatic reply (%s) at the alias: dropped", case.code_name,
                     msg.auto_reply())
        elif member is not None:
            self.member_wrote_to_alias(unit, case, member)
        else:
            self.reporter_correspondence(unit, case)

    # -- mail at the alias that carries our own mail ------------------------------------------
    def our_copies(self, unit: Unit, *, named: bool = True) -> list[SentCopy]:
        """Copies of ours that the message carries inside (a bounce or an auto-reply quoting
        our copy's headers) or, with ``named``, names (In-Reply-To, References)."""
        content = unit.msg.content
        body = content[len(header_block(content)):][:4 << 20]
        found = re.findall(rf"<[0-9a-f]{{24}}@{re.escape(self.app.domain)}>",
                           body.decode("latin-1").lower())[:50]
        ids = list(dict.fromkeys([*(unit.msg.referenced_ids() if named else []), *found]))
        if not ids:
            return []
        return list(unit.session.exec(
            select(SentCopy).where(col(SentCopy.message_id).in_(ids))).all())

    def quoted_cases(self, unit: Unit) -> list[Case] | None:
        """The cases whose mail this message carries: it names or embeds one of our copies,
        shows one of our ``+`` addresses in any part, or a thread sender ("Ada via home
        shelf"). None when it carries nothing of ours; an empty list when it does, but of
        no case that still exists."""
        session = unit.session
        found: dict[int, Case] = {}
        ours = False
        for copy in self.our_copies(unit, named=False):  # naming a copy is no quoting it
            ours = True
            case = session.get(Case, copy.case_id) if copy.case_id else None
            if case is not None:
                found[int(case.id or 0)] = case
        redactor = Redactor(self.app.alias)
        names: set[str] = set()
        for view in readable.views(_without_addressing(unit.msg.content),
                                   wanted=redactor.worth_reading):
            for address in redactor.addresses_in(view):
                r = self.app.addresses.parse(address)
                if r is not None and r.kind is Kind.WITHOUT:
                    continue  # a published address, no secret
                ours = True
                if r is not None and r.kind is Kind.CASE:
                    names.add(r.value)
                elif r is not None and r.kind is Kind.REPORTER:
                    case = self.case_by_reporter_token(session, r.token)
                    if case is not None:
                        found[int(case.id or 0)] = case
            lowered = view.lower()
            if "via" in lowered and len(names) < 50:
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

    def case_mail_came_back(self, unit: Unit, cases: list[Case], done_cases: set[int]) -> None:
        """Mail at the alias, from someone who is not a member, that carries a case's mail
        (a forward from a member's other address, a quote in an out-of-office reply): as a
        new report it would reach every member. It goes to the members who receive every
        case it quotes, our addresses taken out, and to nobody else; with no such case, to
        the operators."""
        msg = unit.msg
        redactor = Redactor(self.app.alias, [self.app.addresses.reporter_token(c.code_name)
                                             for c in cases])
        original = redactor.message(msg.content)
        if not cases:
            log.warning("mail quoting coc-mail mail of no open case at the alias: to the "
                        "operators")
            self.to_postmaster(unit, original, "Mail at the committee address that quotes "
                               "coc-mail mail of no open case, attached (our addresses taken "
                               "out). It went to nobody else.\n")
            return
        handles = set.intersection(*(set(receiving_members(self.app, unit.session, c))
                                     for c in cases))
        case = cases[0]
        done_cases.update(int(c.id or 0) for c in cases)
        intro = (f'A message that quotes mail of case "{case.code_name}" came to the committee '
                 "address, from someone who is not a member; it is attached (our addresses "
                 "taken out). It went to the members who receive the case, and to nobody "
                 "else.\n\n" + "\n".join(self.dkim_warning(unit.verdict())))
        for member in self.app.settings.members:
            if member.handle in handles:
                self.forward(unit, case, member, intro, original)
        for c in cases:
            audit.record(self.app.keys, unit.session, c.code_name, "coc-mail",
                         "mail quoting the case came to the alias")
        log.warning("case %s: mail quoting the case at the alias: to %d member(s)",
                    case.code_name, len(handles))

    def automatic_about_our_mail(self, unit: Unit) -> None:
        """An automatic message at the alias about mail of ours (a bounce sent to the From:
        instead of the envelope sender, an out-of-office reply that quotes our copy): it is
        no report and reaches no member; a bounce is told to the operators, once per copy."""
        status = dsn_failure(unit.msg.parsed())
        copies = self.our_copies(unit)
        if status is not None and copies:
            self.copy_bounced(unit, copies[0], status)
            return
        log.info("automatic message (%s) at the alias about our own mail: dropped",
                 unit.msg.auto_reply())

    def member_forwarded_case_mail(self, unit: Unit, member: Member) -> None:
        """A member sent the alias mail that carries case mail (a forwarded thread post, say):
        sent on as a new report it would reach every member, conflicted ones too, with the
        case's text and the forwarder's own case address. It is not; the member is told."""
        log.warning("member mail at the alias carrying case mail: not opened as a report")
        if not self.notice_allowed(unit.session, member):
            return
        self.reply_to_member(
            unit, None, member,
            "Your message to the committee address was not sent on: it carries coc-mail case\n"
            "mail (a forwarded or quoted case message, or a coc-mail case address). As a new\n"
            "report it would have reached every member, conflicted ones too.\n\n"
            "To write to a case, reply to a message of that case (its Reply-To: is your own\n"
            "address for the case). To report something new, write a new message without the\n"
            "forwarded mail.\n",
        )

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
        if self.app.settings.intake.is_trusted(peer):
            peer = ""  # a front MTA relays for everyone: count senders only
        for who in {f"sender:{sender.lower()}" if sender else "", f"ip:{peer}" if peer else ""}:
            if not who:
                continue
            tag = self.app.keys.tag("flood", who, hour)
            row = counter(session, tag, now.date())
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

    def forward(self, unit: Unit, case: Case, member: Member, intro: str,
                original: bytes | None = None) -> None:
        """Queue a copy of the incoming message, attached unaltered (or ``original``: the
        message with our addresses taken out), for one member."""
        committee = self.app.settings.committee
        verdict = unit.verdict()
        auth = verdict.header_value(self.app.settings.server.hostname) if verdict else None
        msg = unit.msg
        shared = unit.bodies.get(intro)
        if shared is None:
            built = ForwardBody.build(intro, msg.content if original is None else original)
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
        row = counter(session, tag, today)
        if row.day != today:
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
        """Mail from the reporter (or anyone replying as them): to the receiving members. The
        reporter's address works without a sender check (a reporter may write from another
        address), so mail whose From: is not the reporter's says so, to the members and in
        the document; a member writing to it is told to use /followup instead."""
        locked = unit.session.exec(select(Case).where(Case.id == case.id).with_for_update())
        case = locked.one()
        msg = unit.msg
        member = self.app.settings.member_by_email(msg.mailbox) if msg.mailbox else None
        member = member or self.app.settings.member_by_email(msg.envelope.mail_from)
        if member is not None:
            log.warning("case %s: a member's mail to the reporter address: not forwarded",
                        case.code_name)
            if self.notice_allowed(unit.session, member):
                self.reply_to_member(
                    unit, case, member,
                    f'Your message to the reporter\'s address of case "{case.code_name}" was '
                    "not forwarded: that address is the reporter's own. To write to the\n"
                    "reporter, send /followup TEMPLATE to your case address.\n")
            return
        reporter = (self.app.keys.open_text(case.reporter, "cases.reporter").lower()
                    if case.reporter else "")
        verdict = unit.verdict()
        # The reporter's own From:, sent from their own envelope address or signed for it.
        genuine = bool(msg.mailbox) and msg.mailbox == reporter and (
            msg.envelope.mail_from.lower() == reporter
            or (verdict is not None and verdict.aligned_for(reporter)))
        intro_lines = [
            f'The reporter of case "{case.code_name}" wrote again; their message is attached.'
            if genuine else
            f'Someone wrote to the reporter\'s address of case "{case.code_name}"; the message '
            "is attached.\nWARNING: its From: is not the address the report came from, so it "
            "may not be from the reporter.",
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
            text = readable.text_of(unit.msg.content)
            redactor = Redactor(self.app.alias, [
                self.app.addresses.reporter_token(case.code_name)])
            document.add(
                self.app.keys, unit.session, case, section=document.CORRESPONDENCE,
                author="the reporter" if genuine else "not the reporter's From: address",
                body=redactor.text(text),
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
        row = counter(session, tag, now.date())
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
        if not msg.mailbox:
            return ("its From: is not one plain mailbox (several addresses, an address in "
                    "the display name, or a malformed field)")
        if msg.mailbox != member.email:
            return "its From: address is not yours"
        if self.app.settings.server.require_tls_for_members and not msg.envelope.tls:
            return "it did not arrive over an encrypted (STARTTLS) connection"
        if self.app.settings.dkim.require_aligned_members:
            verdict = unit.verdict()
            domain = member.email.rpartition("@")[2]
            if verdict is None or not verdict.aligned_for(member.email):
                result = verdict.result if verdict else "none"
                return (f"it carried no DKIM signature of {domain} for your address that "
                        f"verified (dkim={result})")
        return ""

    def member_wrote_to_alias(self, unit: Unit, case: Case, member: Member) -> None:
        """A member replied to the alias about a case: not authenticated by a token, so
        nothing is done; the member is told to use their case address (a few times an hour
        at most: the From may be forged)."""
        if not self.notice_allowed(unit.session, member):
            return
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
        """A delivery status notification for one of our copies: the operators are told, once
        per copy, when it reports a failure. Anything else (an out-of-office reply to the
        envelope sender every recipient sees as Return-Path, a delay notice) is dropped."""
        status = dsn_failure(unit.msg.parsed())
        if status is None:
            log.info("mail to a bounce address that reports no failed delivery: dropped")
            return
        copy = unit.session.get(SentCopy, r.value)
        if copy is None:
            log.info("bounce for an unknown or expired copy: dropped")
            return
        self.copy_bounced(unit, copy, status)

    def copy_bounced(self, unit: Unit, copy: SentCopy, status: str) -> None:
        if copy.bounced_at is not None:
            log.info("another bounce for a copy the operators were told of: dropped")
            return
        copy.bounced_at = utcnow()
        unit.session.add(copy)
        role = self.app.keys.open_text(copy.role, "sent_copies.role")
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

    def to_postmaster(self, unit: Unit, original: bytes | None = None,
                      intro: str = "Mail to postmaster@ / abuse@ of the committee domain, "
                                   "attached.\n") -> None:
        msg = unit.msg
        targets = self.app.settings.operators or self.app.settings.members
        body = ForwardBody.build(intro, msg.content if original is None else original)
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


_ADDRESSING = re.compile(rb"(?im)^(?:to|cc|bcc|delivered-to|x-original-to|envelope-to"
                         rb"|resent-to|resent-cc)[ \t]*:.*(?:\r?\n[ \t].*)*\r?\n")


def _without_addressing(content: bytes) -> bytes:
    """The message without its own top-level recipient fields: the addresses of ours it was
    sent to are its addressing, not mail of ours it quotes (nested messages keep theirs)."""
    head = header_block(content)
    return _ADDRESSING.sub(b"", head) + content[len(head):]


DSN_TYPES = ("message/delivery-status", "message/global-delivery-status")
_VIA = re.compile(r"\bvia\s+([a-z]{2,20})[\s-]+([a-z]{2,20})\b")  # a thread sender's name


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
