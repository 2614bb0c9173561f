"""The delivery side: a worker that hands queued copies to a Maildir or an SMTP relay.

A copy is claimed with a lease (one ``UPDATE ... RETURNING``, so several worker processes and
daemons share the queue), DKIM-signed, delivered, and its row deleted (nothing is archived);
a shared body goes with the last copy that uses it.
Temporary failures back off exponentially (``delivery.retry_seconds`` doubling, at most an
hour) until ``delivery.max_queue_days``; permanent failures and expired copies are dropped
and the operators told, without content.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import bindparam, func, or_
from sqlmodel import Session, col, select, update

from coc_mail.app import App
from coc_mail.delivery.maildir import MaildirTransport, Transport
from coc_mail.delivery.outbox import notify_operators
from coc_mail.delivery.relay import SmtpTransport, shared_part
from coc_mail.errors import DeliveryError, where
from coc_mail.mail.dkim import body_hash, unsigned
from coc_mail.mail.downgrade import seven_bit
from coc_mail.store import Body, Outbound, SentCopy, drop_unused_bodies, utcnow
from coc_mail.store.crypto import BIG  # copies larger than this go one at a time per worker

log = logging.getLogger(__name__)

LEASE = dt.timedelta(seconds=30)  # renewed every RENEW while the copy is in flight
RENEW = 10.0
MAX_BACKOFF = 3600.0
CLAIMED = ("id", "uid", "envelope_from", "recipient", "content", "body_id")  # a claim reads
COLUMNS = [col(getattr(Outbound, name)) for name in CLAIMED]


# The statements a busy delivery runs all the time, built once as Core (compiled once, no
# ORM bookkeeping): through the ORM, building and running them cost a delivery worker more
# CPU than its relay client.
_OUT = Outbound.__table__  # type: ignore[attr-defined]
_DELIVERED = _OUT.delete().where(_OUT.c.id.in_(bindparam("ids", expanding=True)))
_DUE_IN_SHARE = (
    sa.select(*(_OUT.c[name] for name in CLAIMED))
    .where(_OUT.c.next_attempt_at <= bindparam("now"))
    .where(func.coalesce(_OUT.c.body_id, _OUT.c.id) % bindparam("count", type_=sa.Integer)
           == bindparam("index", type_=sa.Integer))
    .where(_OUT.c.id.not_in(bindparam("in_hand", expanding=True)))
    .order_by(_OUT.c.next_attempt_at)
    .limit(bindparam("limit", type_=sa.Integer))
)
_HANDED_BACK = _OUT.update().where(_OUT.c.id.in_(bindparam("ids", expanding=True))).values(
    claimed_until=None)
_BODY = Body.__table__  # type: ignore[attr-defined]
_BODIES_WANTED = sa.select(_BODY.c.id, _BODY.c.content).where(
    _BODY.c.id.in_(bindparam("ids", expanding=True)))


def _redact(error: DeliveryError) -> str:
    """A relay's reply without the addresses it may quote (operators may be excluded)."""
    return re.sub(r"\S+@\S+", "<address>", str(error))[:300]


def make_transport(app: App) -> Transport:
    delivery = app.settings.delivery
    if delivery.is_maildir:
        transport = MaildirTransport(delivery.maildir_path)
        transport.prepare()
        return transport
    signer = app.signer

    def downgrade(message: bytes) -> bytes:
        """A signed copy for a relay without 8BITMIME: re-encoded, then signed again (the
        signature over the 8-bit form would not verify)."""
        return signer.sign(seven_bit(unsigned(message)))

    return SmtpTransport.from_settings(app.settings, downgrade=downgrade)


@dataclass
class SharedBody:
    """A body in use by claimed copies: opened once, its DKIM body hash computed once."""

    content: bytes
    bh: bytes
    users: int = 0


@dataclass
class Claimed:
    """One copy taken from the queue, opened for delivery (signed just before sending)."""

    id: int
    uid: str
    envelope_from: str
    recipient: str
    content: bytes  # the whole message, or its header block when body_id is set
    body_id: int | None = None
    body: SharedBody | None = None


class Deliverer:
    """The delivery worker: claims due copies, delivers them concurrently, records outcomes."""

    def __init__(
        self, app: App, transport: Transport, partition: tuple[int, int] | None = None
    ) -> None:
        self.app = app
        self.partition = partition  # (index, count): this worker's share of a SQLite queue
        self.transport = transport
        self.wake = asyncio.Event()
        self.delivered = 0
        self.deferred = 0
        self.in_flight: set[int] = set()
        self.bodies: dict[int, SharedBody] = {}  # opened bodies of the copies in hand
        self._cache = threading.Lock()  # claims run in a thread, releases in the loop
        self.stopping = False
        self._sent: list[Claimed] = []  # delivered, not yet deleted
        self._flushing = asyncio.Lock()
        self._delivered_event = asyncio.Event()
        self._big = asyncio.Semaphore(1)  # big copies one at a time: bounded memory
        self._unbegun: list[int] = []  # claimed, left when stopping: their leases handed back
        self._begun: set[int] = set()  # copies that had a sending slot (begun, or being sent)
        self._halt = asyncio.Event()  # set by stop(): ends a wait for a copy to finish

    # -- queue operations (sync, run in a thread) ---------------------------------------------
    def claim(self, limit: int, in_hand: frozenset[int] = frozenset()) -> list[Claimed]:
        """Take up to ``limit`` due copies and open them; their shared bodies are opened once
        and kept while copies use them.

        With a :attr:`partition` (one daemon on SQLite: each delivery worker owns the copies
        whose shared body's id, or their own id when they have none, falls in its share, so a
        report's copies go through one worker and its body is opened and hashed once) this is
        a plain read, skipping the copies ``in_hand``;
        otherwise the copies are leased in one statement, ``SKIP LOCKED`` on PostgreSQL, so
        several daemons share the queue.
        """
        now = utcnow()
        keys = self.app.keys
        with Session(self.app.engine) as session:
            if self.partition is not None:
                index, count = self.partition
                rows = session.connection().execute(_DUE_IN_SHARE, {
                    "now": now, "count": count, "index": index, "in_hand": sorted(in_hand),
                    "limit": limit}).all()
            else:
                due = (
                    select(Outbound.id)
                    .where(Outbound.next_attempt_at <= now)
                    .where(or_(col(Outbound.claimed_until).is_(None),
                               col(Outbound.claimed_until) < now))
                    .order_by(col(Outbound.next_attempt_at))
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
                rows = session.execute(
                    update(Outbound)
                    .where(col(Outbound.id).in_(due.scalar_subquery()))
                    .values(claimed_until=now + LEASE)
                    .returning(*COLUMNS)
                    .execution_options(synchronize_session=False)
                ).all()
                session.commit()
            with self._cache:  # pin the bodies in hand that these copies share
                pinned = {r.body_id: self.bodies[r.body_id] for r in rows
                          if r.body_id is not None and r.body_id in self.bodies}
                for shared in pinned.values():
                    shared.users += 1
            wanted = {r.body_id for r in rows if r.body_id is not None} - set(pinned)
            fetched = {}
            if wanted:
                for body_id, sealed in session.connection().execute(
                        _BODIES_WANTED, {"ids": sorted(wanted)}):
                    plain = keys.open(sealed, "bodies.content")
                    fetched[body_id] = SharedBody(shared_part(plain), body_hash(plain))
        claimed, orphans = [], []
        with self._cache:
            for shared in pinned.values():
                shared.users -= 1  # each copy below takes its own
            for r in rows:
                copy = Claimed(
                    id=r.id, uid=r.uid, envelope_from=r.envelope_from,
                    recipient=keys.open_text(r.recipient, "outbound.recipient"),
                    content=keys.open(r.content, "outbound.content"), body_id=r.body_id,
                )
                if r.body_id is not None:
                    body = pinned.get(r.body_id) or fetched.get(r.body_id)
                    if body is None:
                        orphans.append(copy)
                        continue
                    self.bodies.setdefault(r.body_id, body)
                    body.users += 1
                    copy.body = body
                claimed.append(copy)
        for copy in orphans:  # cannot happen short of hand-editing the database: say so
            log.error("delivery: copy %s has no stored body", copy.uid)
            self.failed(copy, DeliveryError("its stored body is missing", permanent=True))
        return claimed

    def message(self, copy: Claimed) -> list[bytes]:
        """The copy as sent, in parts: DKIM-signed now (copies queued before 0.3 were signed
        already); a shared body is not copied."""
        if copy.body_id is None:
            if copy.content.startswith(b"DKIM-Signature:"):
                return [copy.content]
            return [self.app.signer.sign(copy.content)]
        shared = copy.body
        assert shared is not None
        return [self.app.signer.signature(copy.content, shared.bh), copy.content, shared.content]

    def release(self, copy: Claimed) -> None:
        """The copy is done with (delivered or not): forget its body once nothing uses it."""
        shared, copy.body = copy.body, None
        if shared is None or copy.body_id is None:
            return
        with self._cache:
            shared.users -= 1
            if shared.users <= 0 and self.bodies.get(copy.body_id) is shared:
                del self.bodies[copy.body_id]

    def renew(self) -> None:
        """Extend the lease of the copies this daemon is delivering right now."""
        ids = list(self.in_flight)
        if not ids or self.partition is not None:
            return
        with Session(self.app.engine) as session:
            session.exec(
                update(Outbound)
                .where(col(Outbound.id).in_(ids))
                .values(claimed_until=utcnow() + LEASE)
            )
            session.commit()

    async def renew_leases(self) -> None:
        while True:
            await asyncio.sleep(RENEW)
            try:
                await asyncio.to_thread(self.renew)
            except Exception:  # noqa: BLE001 - the lease just runs out; another try later
                log.warning("delivery: could not renew leases")

    def hand_back(self, ids: list[int]) -> None:
        """End this daemon's leases on copies it claimed but did not begin (stopping), so
        that another daemon, or the next start, takes them at once, not when they run out."""
        if not ids or self.partition is not None:  # SQLite's shares are read, not leased
            return
        with Session(self.app.engine) as session:
            session.connection().execute(_HANDED_BACK, {"ids": ids})
            session.commit()

    def done_many(self, copies: list[Claimed]) -> None:
        """Delete delivered copies (nothing is archived) and the shared bodies no copy uses
        any more, in one transaction (Core statements built once: see blobs.py)."""
        with Session(self.app.engine) as session:
            session.connection().execute(_DELIVERED, {"ids": [c.id for c in copies]})
            drop_unused_bodies(session, {c.body_id for c in copies if c.body_id is not None})
            session.commit()

    def failed(self, copy: Claimed, error: DeliveryError) -> None:
        with Session(self.app.engine) as session:
            row = session.get(Outbound, copy.id)
            if row is None:
                return
            row.attempts += 1
            age = utcnow() - row.created_at
            limit = dt.timedelta(days=self.app.settings.delivery.max_queue_days)
            if error.permanent or age >= limit:
                days = self.app.settings.delivery.max_queue_days
                why = (
                    "refused permanently"
                    if error.permanent
                    else f"still undeliverable after {days:g} days"
                )
                session.delete(row)
                session.flush()
                if row.body_id is not None:
                    drop_unused_bodies(session, {row.body_id})
                if self._role(session, row.uid) != "operator":  # no notices about notices
                    notify_operators(
                        self.app,
                        session,
                        "a copy could not be delivered",
                        f"A copy (id {row.uid}) was {why}.\nLast answer: {_redact(error)}\n"
                        "It has been removed from the queue.\n",
                    )
                log.error(
                    "delivery: copy %s dropped: %s",
                    row.uid,
                    "permanent failure" if error.permanent else "expired",
                )
            else:
                delay = min(
                    self.app.settings.delivery.retry_seconds * 2 ** (row.attempts - 1), MAX_BACKOFF
                )
                row.next_attempt_at = utcnow() + dt.timedelta(seconds=delay)
                row.claimed_until = None
                row.last_error = self.app.keys.seal_text(str(error)[:500], "outbound.last_error")
                session.add(row)
                log.info(
                    "delivery: copy %s deferred %.0fs (attempt %d)", row.uid, delay, row.attempts
                )
            session.commit()

    def _role(self, session: Session, uid: str) -> str:
        copy = session.get(SentCopy, uid)
        return self.app.keys.open_text(copy.role, "sent_copies.role") if copy else ""

    def next_due(self) -> float | None:
        """Seconds until the next copy is due (None when the queue is empty)."""
        with Session(self.app.engine) as session:
            due = session.exec(
                select(Outbound.next_attempt_at).order_by(col(Outbound.next_attempt_at)).limit(1)
            ).first()
        if due is None:
            return None
        return max(0.0, (due - utcnow()).total_seconds())

    # -- the loop -----------------------------------------------------------------------------
    async def deliver(self, copy: Claimed) -> bool:
        """Send one copy; a failure is recorded at once, a success by the recorder (batched)."""
        message: list[bytes] = []
        try:
            message = self.message(copy)
            await self.transport.send(copy.uid, copy.envelope_from, copy.recipient, message)
        except DeliveryError as exc:
            self.deferred += 1
            await self._record(self.failed, copy, exc)
            return False
        finally:
            del message
            self.release(copy)
        self.delivered += 1
        return True

    async def _record(self, func: Callable[..., None], *args: object) -> bool:
        """Run a queue update, retrying a few times through a busy or restarting database."""
        for attempt in range(6):
            try:
                await asyncio.to_thread(func, *args)
                return True
            except Exception as exc:  # noqa: BLE001 - retried, then left to the lease
                log.warning("delivery: queue update failed (%s), retrying", type(exc).__name__)
                await asyncio.sleep(0.2 * 2**attempt)
        return False

    async def _flush_sent(self) -> None:
        """Delete every copy delivered since the last flush, in one transaction."""
        async with self._flushing:
            chunk, self._sent = self._sent, []
            if not chunk:
                return
            if await self._record(self.done_many, chunk):
                for c in chunk:
                    log.info("delivery: copy %s delivered", c.uid)
            else:
                log.error("delivery: %d delivered copies not recorded; they may be sent "
                          "again", len(chunk))
            for c in chunk:
                self.in_flight.discard(c.id)

    async def _recorder(self) -> None:
        """Record deliveries in the background: senders never wait for the database, and all
        that were delivered while one deletion ran go in the next (one commit for many)."""
        while True:
            await self._delivered_event.wait()
            self._delivered_event.clear()
            await self._flush_sent()

    async def _one(self, copy: Claimed, slots: asyncio.Semaphore) -> None:
        big = len(copy.content) + (len(copy.body.content) if copy.body else 0) > BIG
        try:
            async with slots, (self._big if big else contextlib.nullcontext()):
                if self.stopping:
                    # Stopping (SIGTERM, or the main process gone: a grace of two seconds):
                    # a copy not begun yet is left in the queue for the next start, not
                    # begun now and perhaps cut off after the relay took it (sent twice).
                    self.release(copy)
                    self.in_flight.discard(copy.id)
                    self._unbegun.append(copy.id)
                    return
                self._begun.add(copy.id)
                ok = await self.deliver(copy)
        except Exception as exc:  # noqa: BLE001 - the worker must never die
            log.error("delivery: copy %s: unexpected %s at %s", copy.uid, type(exc).__name__,
                      where(exc))
            # deferred like a temporary failure: backed off, never retried in a tight loop
            await self._record(self.failed, copy, DeliveryError(
                f"unexpected {type(exc).__name__} at {where(exc)}", permanent=False))
            ok = False
        finally:
            self._begun.discard(copy.id)
        if ok:
            self._sent.append(copy)
            self._delivered_event.set()
        else:
            self.in_flight.discard(copy.id)

    def stop(self) -> None:
        """Claim and begin nothing more; :meth:`run` returns once the copies being sent are
        done (the others stay queued: the next start sends them)."""
        self.stopping = True
        self._halt.set()
        self.wake.set()

    async def run(self, poll: float = 2.0) -> None:
        """Keep up to :meth:`Settings.copies_in_flight` copies in flight (four times that in
        hand), taking more as they finish, until :meth:`stop`."""
        workers = self.app.settings.copies_in_flight()
        slots = asyncio.Semaphore(workers)
        renewer = asyncio.create_task(self.renew_leases(), name="lease-renewal")
        recorder = asyncio.create_task(self._recorder(), name="delivery-records")
        tasks: dict[asyncio.Task[None], Claimed] = {}
        halted = asyncio.ensure_future(self._halt.wait())
        try:
            while not self.stopping:
                room = workers * 4 - len(tasks)
                if room < workers * 2:  # claim in batches: a query per copy cost more
                    await asyncio.wait([*tasks, halted], return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    batch = await asyncio.to_thread(self.claim, room, frozenset(self.in_flight))
                except Exception as exc:  # noqa: BLE001 - database down: retry soon
                    log.warning("delivery: cannot claim copies (%s)", type(exc).__name__)
                    batch = []
                if batch:
                    self.in_flight.update(c.id for c in batch)  # leases renewed from now on
                    for c in batch:
                        task = asyncio.create_task(self._one(c, slots))
                        tasks[task] = c
                        task.add_done_callback(lambda t: tasks.pop(t, None))
                    continue
                await self._idle(poll)
            await self._hand_back_waiting(tasks)
            if tasks:
                await asyncio.wait(tasks)
            await self._flush_sent()
            if self._unbegun:
                await self._record(self.hand_back, self._unbegun)
        finally:
            renewer.cancel()
            recorder.cancel()
            halted.cancel()
            self.transport.close()

    async def _hand_back_waiting(self, tasks: dict[asyncio.Task[None], Claimed]) -> None:
        """Stopping: the copies still waiting for a sending slot are not begun; their leases
        are handed back now, not after the copies being sent are done (a slow relay can hold
        those past the stop's 30 seconds, and these would wait for their leases to run out)."""
        waiting = [(t, c) for t, c in tasks.items() if c.id not in self._begun and not t.done()]
        for task, _ in waiting:
            task.cancel()
        if waiting:
            await asyncio.wait([t for t, _ in waiting])
        for _, copy in waiting:
            self.release(copy)
            self.in_flight.discard(copy.id)
            self._unbegun.append(copy.id)
        if self._unbegun:
            await self._record(self.hand_back, self._unbegun)
            self._unbegun = []

    async def _idle(self, poll: float) -> None:
        """Nothing due: wait for a wake-up, the next due copy, or ``poll`` seconds."""
        try:
            due = await asyncio.to_thread(self.next_due)
        except Exception:  # noqa: BLE001
            due = None
        wait = poll if due is None else min(poll, max(due, 0.05))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout=wait)
        self.wake.clear()


def retry_now(app: App, *, clear_claims: bool) -> int:
    """Make every waiting copy due now (``queue --flush`` and start-up). Returns the count."""
    with Session(app.engine) as session:
        stmt = update(Outbound).values(next_attempt_at=utcnow())
        if clear_claims:
            stmt = stmt.values(claimed_until=None)
        result = session.exec(stmt)
        session.commit()
        return int(result.rowcount or 0)
