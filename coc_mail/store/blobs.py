"""Big values in and out of rows (SQLite in pieces), and shared bodies no copy uses any more."""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col

from coc_mail.store.crypto import BIG  # from this size on, SQLite gets a value in pieces
from coc_mail.store.tables import Body, Outbound


def deferred_blob(session: Session, value: bytes) -> Any:
    """What to insert for ``value``: the value itself, or for a big one on SQLite a zero blob
    of its size, filled by :func:`fill_blob` once the row exists. Bound whole, SQLite would
    copy a 34 MiB report twice more while writing it."""
    if len(value) < BIG or session.get_bind().dialect.name != "sqlite":
        return value
    return sa.func.zeroblob(len(value))


def fill_blob(session: Session, table: str, column: str, rowid: int, value: bytes) -> None:
    """Write ``value`` into the zero blob :func:`deferred_blob` inserted, a piece at a time
    (SQLite incremental blob I/O, in the caller's transaction); nothing to do otherwise."""
    if len(value) < BIG or session.get_bind().dialect.name != "sqlite":
        return
    dbapi: sqlite3.Connection = session.connection().connection.dbapi_connection  # type: ignore[assignment]
    view = memoryview(value)
    with dbapi.blobopen(table, column, rowid) as blob:
        for start in range(0, len(view), BIG):
            blob.write(view[start:start + BIG])


def drop_unused_bodies(session: Session, ids: set[int] | None = None,
                       older_than: dt.datetime | None = None) -> None:
    """Delete shared bodies no queued copy refers to any more: among ``ids`` (a delivery's
    copies just deleted), or all of them created before ``older_than`` (the hourly sweep
    for bodies two daemons let go of at the same moment)."""
    if ids is not None and not ids:
        return
    in_use = sa.select(col(Outbound.body_id)).where(col(Outbound.body_id).is_not(None))
    if ids is not None:
        in_use = in_use.where(col(Outbound.body_id).in_(ids))
    stmt = sa.delete(Body).where(col(Body.id).not_in(in_use))
    if ids is not None:
        stmt = stmt.where(col(Body.id).in_(ids))
    if older_than is not None:
        stmt = stmt.where(col(Body.created_at) < older_than)
    session.execute(stmt)
