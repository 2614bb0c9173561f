"""The incoming queue writer: seals accepted messages and commits them, many sessions per commit.

SMTP sessions hand their message to :meth:`Spool.put` and wait; one writer thread takes every
message waiting at that moment, inserts them in one transaction and commits once (group
commit), then wakes each session, which only then answers ``250``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

from coc_mail.errors import StoreUnavailable
from coc_mail.mail.message import Envelope
from coc_mail.store import deferred_blob, fill_blob, utcnow
from coc_mail.store.crypto import BIG, Keyring

log = logging.getLogger(__name__)
INBOUND = SQLModel.metadata.tables["inbound"]
_NEW_ROWS = insert(INBOUND).returning(INBOUND.c.id, sort_by_parameter_order=True)  # built once
BATCH = 128


class DiskFull(StoreUnavailable):
    """The database reports that its disk is full."""


@dataclass
class _Item:
    envelope: Envelope
    content: bytes
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[int]


def classify(exc: BaseException) -> StoreUnavailable:
    """Translate a driver error: a full disk, or any other temporary unavailability."""
    text = f"{type(exc).__name__} {exc}".lower()
    if "disk is full" in text or "diskfull" in text or "no space left" in text:
        return DiskFull("disk full")
    return StoreUnavailable(f"database unavailable: {type(exc).__name__}")


class Spool:
    """Group-committing writer of :class:`~coc_mail.store.Inbound` rows."""

    def __init__(self, engine: Engine, keys: Keyring, on_commit: Callable[[], None]) -> None:
        self.engine = engine
        self.keys = keys
        self.on_commit = on_commit
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="spool", daemon=True)
        self.commits = 0
        self.messages = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    async def put(self, envelope: Envelope, content: bytes) -> int:
        """Store one message durably; return its queue id. Raises StoreUnavailable."""
        loop = asyncio.get_running_loop()
        item = _Item(envelope, content, loop, loop.create_future())
        self._queue.put(item)
        return await item.future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)
            if stop:
                return

    def _insert(self, session: Session, batch: list[_Item]) -> list[int]:
        """Insert the batch's rows (sealed) and return their ids, in order: small messages in
        one statement, a big one alone through :func:`fill_blob` (no copies of it)."""
        conn = session.connection()
        small = [item for item in batch if len(item.content) < BIG]
        ids: dict[int, int] = {}
        if small:
            rows = [_row(self.keys, item, self.keys.seal(item.content, "inbound.content"))
                    for item in small]
            for item, (row_id,) in zip(small, conn.execute(_NEW_ROWS, rows), strict=True):
                ids[id(item)] = int(row_id)
        for item in batch:
            if id(item) in ids:
                continue
            sealed = self.keys.seal(item.content, "inbound.content")
            row_id = int(conn.execute(
                insert(INBOUND).values(**_row(self.keys, item, deferred_blob(session, sealed)))
                .returning(INBOUND.c.id)
            ).scalar_one())
            fill_blob(session, "inbound", "content", row_id, sealed)
            ids[id(item)] = row_id
        return [ids[id(item)] for item in batch]

    def _commit(self, batch: list[_Item]) -> None:
        try:
            with Session(self.engine) as session:
                ids = self._insert(session, batch)
                session.commit()
        except Exception as exc:  # noqa: BLE001 - every driver error becomes a 4xx
            error = classify(exc)
            log.warning("spool: commit of %d message(s) failed: %s", len(batch), error)
            for item in batch:
                item.loop.call_soon_threadsafe(_fail, item.future, error)
            return
        self.commits += 1
        self.messages += len(batch)
        for item, row_id in zip(batch, ids, strict=True):
            item.loop.call_soon_threadsafe(_succeed, item.future, row_id)
        self.on_commit()


def _row(keys: Keyring, item: _Item, content: Any) -> dict[str, Any]:
    return {
        "uid": secrets.token_hex(8), "received_at": utcnow(), "attempts": 0, "shunted": False,
        "envelope": keys.seal(item.envelope.to_json(), "inbound.envelope"), "content": content,
    }


def _succeed(future: asyncio.Future[int], value: int) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[int], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
