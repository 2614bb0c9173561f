"""Processing the incoming queue: route each accepted message and apply it in one transaction.

What a message is and who handles it is decided by :mod:`coc_mail.cases.route`; this module
is the loop around it. For each message: read and open the row, do the slow work (DKIM
verification, rendering, signing) with no write lock held, then in one short transaction
apply the case change, add the queued copies and delete the row. A crash at any point
either redoes the whole step or finds it done. A message that keeps failing (not for a
database outage) is shunted: kept sealed, the operators told, and retried by
``coc-mail queue --flush``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, func, insert, or_, update
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlmodel import Session, col, select

from coc_mail.app import App
from coc_mail.cases import route, watchdog
from coc_mail.cases.unit import Unit
from coc_mail.delivery.outbox import Outbox
from coc_mail.errors import where
from coc_mail.mail import budget
from coc_mail.mail.message import Envelope, Incoming
from coc_mail.store import (
    Inbound,
    ProcessedInbound,
    utcnow,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
BATCH = 32  # messages per processing transaction
BATCH_BYTES = 4 << 20  # and about this much content at most (a big report goes alone)
# The database itself is in trouble (down, locked, full): not the message's fault, so the loop
# waits and tries again. Any other error (an IntegrityError, a DataError: what a message can
# cause) is the message's: retried a few times on its own, then set aside.
DB_TROUBLE = (OperationalError, DisconnectionError, InterfaceError)


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
        outbox = Outbox(self.app, main)
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
                route.handle(unit)
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


@dataclass
class Queued:
    """An incoming-queue row as read for processing."""

    id: int
    uid: str | None
    envelope: bytes
    content: bytes


def _uid(row: Queued) -> str:
    return row.uid or f"id-{row.id}"
