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
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import aiosmtplib
import aiosmtplib.protocol
from sqlalchemy import func, or_
from sqlmodel import Session, col, delete, select, update

from .app import App
from .crypto import BIG  # copies larger than this go one at a time per worker
from .dkim import body_hash
from .errors import DeliveryError
from .outbox import notify_operators
from .store import Body, Outbound, SentCopy, drop_unused_bodies, utcnow

log = logging.getLogger(__name__)

LEASE = dt.timedelta(seconds=30)  # renewed every RENEW while the copy is in flight
RENEW = 10.0
MAX_BACKOFF = 3600.0
COLUMNS = [col(c) for c in (Outbound.id, Outbound.uid, Outbound.envelope_from,
                             Outbound.recipient, Outbound.content, Outbound.body_id)]


class Transport(Protocol):
    """Hands one copy (the message as consecutive parts) to its next hop; raises
    :class:`DeliveryError`."""

    async def send(
        self, uid: str, envelope_from: str, recipient: str, parts: Sequence[bytes]
    ) -> None:
        """Deliver or raise."""


class MaildirTransport:
    """Delivers into one Maildir (an outbox), each file with ``Delivered-To``, like Postfix's
    local(8). The file name carries the copy's uid, so a retried copy is never written twice."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.host = socket.gethostname().replace("/", "_").replace(":", "_")

    def prepare(self) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    async def send(
        self, uid: str, envelope_from: str, recipient: str, parts: Sequence[bytes]
    ) -> None:
        await asyncio.to_thread(self._write, uid, envelope_from, recipient, parts)

    def _exists(self, uid: str) -> bool:
        marker = f".C{uid}."
        return any(marker in name for sub in ("new", "cur") for name in os.listdir(self.path / sub))

    def _write(
        self, uid: str, envelope_from: str, recipient: str, parts: Sequence[bytes]
    ) -> None:
        try:
            self.prepare()
            if self._exists(uid):
                return
            name = f"{int(time.time())}.C{uid}.{self.host}"
            tmp = self.path / "tmp" / name
            first = f"Return-Path: <{envelope_from}>\nDelivered-To: {recipient}\n".encode()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb", closefd=False) as out:
                    out.write(first)
                    for part in parts:  # CRLF to the local LF, a megabyte at a time
                        for piece in _pieces(part):
                            out.write(piece.replace(b"\r\n", b"\n"))
                os.fsync(fd)
            finally:
                os.close(fd)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, self.path / "new" / name)
            os.unlink(tmp)
            dfd = os.open(self.path / "new", os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            raise DeliveryError(f"maildir: {exc.strerror}", permanent=False) from None


class SmtpTransport:
    """Delivers through an SMTP relay: ``smtp://`` (STARTTLS when offered, or required with
    ``delivery.require_tls``) or ``smtps://`` (TLS from the start), AUTH when configured.
    Connections are kept open and reused (at most ``pool`` idle ones), as Postfix's
    connection cache does; a reused connection that fails is replaced once."""

    def __init__(
        self,
        url: str,
        username: str | None,
        password: str | None,
        require_tls: bool,
        timeout: float,
        ca_file: str | None = None,
        pool: int = 4,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.implicit = parts.scheme == "smtps"
        self.port = parts.port or (465 if self.implicit else 25)
        self.username, self.password = username, password
        self.require_tls, self.timeout = require_tls, timeout
        self.context = ssl.create_default_context(cafile=ca_file)  # built once: it is costly
        self.pool = pool
        self.idle: list[aiosmtplib.SMTP] = []

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self.host, port=self.port, use_tls=self.implicit,
            start_tls=True if self.require_tls else None, tls_context=self.context,
            timeout=self.timeout,
        )
        await client.connect()
        if self.username:
            await client.login(self.username, self.password or "")
        return client

    async def send(
        self, uid: str, envelope_from: str, recipient: str, parts: Sequence[bytes]
    ) -> None:
        content = parts[0] if len(parts) == 1 else b"".join(parts)
        reused = bool(self.idle)
        client = self.idle.pop() if reused else None
        try:
            try:
                if client is None or not client.is_connected:
                    client = await self._connect()
                await _transaction(client, envelope_from, recipient, content)
            except aiosmtplib.SMTPServerDisconnected:
                if not reused:
                    raise
                client = await self._connect()  # the relay closed an idle connection
                await _transaction(client, envelope_from, recipient, content)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            await _close(client)
            refusal = exc.recipients[0] if exc.recipients else None
            code = refusal.code if refusal else 450
            raise DeliveryError(
                f"{code} {refusal.message if refusal else ''}", permanent=500 <= code < 600
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            await _close(client)
            raise DeliveryError(
                f"{exc.code} {exc.message}", permanent=500 <= exc.code < 600
            ) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await _close(client)
            raise DeliveryError(f"relay: {type(exc).__name__}: {exc}", permanent=False) from None
        if len(self.idle) < self.pool:
            self.idle.append(client)
        else:
            await _close(client)


_ORIGINAL_NORMALIZE = aiosmtplib.protocol.normalize_message_line_endings
_ORIGINAL_PERIOD = aiosmtplib.protocol.PERIOD_REGEX


def _normalized(message: bytes) -> bytes:
    """aiosmtplib's line-ending normalisation, byte for byte, without its regex when the
    message is CRLF throughout already (every copy coc-mail sends is)."""
    pairs = message.count(b"\r\n")
    if message.count(b"\n") == pairs and message.count(b"\r") == pairs:
        return message if message.endswith(b"\r\n") else message + b"\r\n"
    return _ORIGINAL_NORMALIZE(message)


class _LeadingDots:
    """aiosmtplib's dot-stuffing (``(?m)^\\.`` -> ``..``, RFC 5321 4.5.2), byte for byte, as
    ``bytes.replace``: a line starts at the text's start or after a LF."""

    @staticmethod
    def sub(repl: bytes, message: bytes) -> bytes:
        if repl != b"..":
            return _ORIGINAL_PERIOD.sub(repl, message)
        stuffed = message.replace(b"\n.", b"\n..")
        return b"." + stuffed if stuffed.startswith(b".") else stuffed


def use_fast_data_encoding() -> None:
    """Make aiosmtplib's DATA encoding use :func:`_normalized` and :class:`_LeadingDots`: the
    same bytes on the wire, without two regex passes over every copy (they were an eighth of
    a delivery worker's time). Like the OpenSSL signing in :mod:`coc_mail.dkim`, a patch of
    one library function, checked against the original in the tests."""
    aiosmtplib.protocol.normalize_message_line_endings = _normalized
    aiosmtplib.protocol.PERIOD_REGEX = _LeadingDots()  # type: ignore[assignment]


_PLAIN_ADDRESS = re.compile(r"[!-;=?-~]+@[!-;=?-~]+")  # printable ASCII, no < or >


async def _transaction(
    client: aiosmtplib.SMTP, sender: str, recipient: str, content: bytes
) -> None:
    """One mail transaction. Plain ASCII addresses go straight into MAIL and RCPT (our own
    bounce address and a member's or reporter's address: parsing them again for every copy
    cost more than the rest of the dialogue); anything else takes aiosmtplib's ``sendmail``,
    which quotes it and negotiates SMTPUTF8."""
    if not (_PLAIN_ADDRESS.fullmatch(sender) and _PLAIN_ADDRESS.fullmatch(recipient)):
        await client.sendmail(sender, [recipient], content)
        return
    if client.is_ehlo_or_helo_needed:
        await client.ehlo()
    reply = await client.execute_command(b"MAIL", b"FROM:<" + sender.encode() + b">")
    if reply.code != 250:
        raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
    reply = await client.execute_command(b"RCPT", b"TO:<" + recipient.encode() + b">")
    if reply.code not in (250, 251):
        raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
    await client.data(content)


def _pieces(data: bytes, size: int = BIG) -> Iterator[bytes]:
    """``data`` in pieces of about ``size`` bytes, never splitting a CRLF."""
    start = 0
    while start < len(data):
        end = min(start + size, len(data))
        if data[end - 1:end] == b"\r":
            end += 1
        yield data[start:end]
        start = end


async def _close(client: aiosmtplib.SMTP | None) -> None:
    if client is None:
        return
    with contextlib.suppress(Exception):
        if client.is_connected:
            await client.quit()
    with contextlib.suppress(Exception):
        client.close()


def _redact(error: DeliveryError) -> str:
    """A relay's reply without the addresses it may quote (operators may be excluded)."""
    return re.sub(r"\S+@\S+", "<address>", str(error))[:300]


def make_transport(app: App) -> Transport:
    delivery = app.settings.delivery
    if delivery.is_maildir:
        transport = MaildirTransport(delivery.maildir_path)
        transport.prepare()
        return transport
    use_fast_data_encoding()
    return SmtpTransport(
        delivery.relay,
        delivery.username,
        delivery.password(),
        delivery.require_tls,
        delivery.timeout_seconds,
        delivery.tls_ca_file,
        pool=delivery.workers,
    )


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
                rows = session.execute(
                    select(*COLUMNS)
                    .where(Outbound.next_attempt_at <= now)
                    .where(func.coalesce(col(Outbound.body_id), col(Outbound.id)) % count
                           == index)
                    .where(col(Outbound.id).not_in(in_hand))
                    .order_by(col(Outbound.next_attempt_at))
                    .limit(limit)
                ).all()
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
                for body_id, sealed in session.execute(
                    select(Body.id, Body.content).where(col(Body.id).in_(wanted))
                ):
                    plain = keys.open(sealed, "bodies.content")
                    fetched[body_id] = SharedBody(plain, body_hash(plain))
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

    def done_many(self, copies: list[Claimed]) -> None:
        """Delete delivered copies (nothing is archived) and the shared bodies no copy uses
        any more, in one transaction."""
        with Session(self.app.engine) as session:
            session.exec(delete(Outbound).where(col(Outbound.id).in_([c.id for c in copies])))
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
                ok = await self.deliver(copy)
        except Exception as exc:  # noqa: BLE001 - the worker must never die
            log.error("delivery: unexpected %s", type(exc).__name__)
            ok = False
        if ok:
            self._sent.append(copy)
            self._delivered_event.set()
        else:
            self.in_flight.discard(copy.id)

    def stop(self) -> None:
        """Claim nothing more; :meth:`run` returns once the copies in hand are done."""
        self.stopping = True
        self.wake.set()

    async def run(self, poll: float = 2.0) -> None:
        """Keep up to ``delivery.workers`` copies in flight (four times that in hand), taking
        more as they finish, until :meth:`stop`."""
        workers = self.app.settings.delivery.workers
        slots = asyncio.Semaphore(workers)
        renewer = asyncio.create_task(self.renew_leases(), name="lease-renewal")
        recorder = asyncio.create_task(self._recorder(), name="delivery-records")
        tasks: set[asyncio.Task[None]] = set()
        try:
            while not self.stopping:
                room = workers * 4 - len(tasks)
                if room < workers * 2:  # claim in batches: a query per copy cost more
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
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
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    continue
                await self._idle(poll)
            if tasks:
                await asyncio.wait(tasks)
            await self._flush_sent()
        finally:
            renewer.cancel()
            recorder.cancel()

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
