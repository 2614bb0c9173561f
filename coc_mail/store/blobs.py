"""Big values in and out of rows (SQLite in pieces), and shared bodies no copy uses any more."""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

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


_BODIES, _OUTBOUND = Body.__table__, Outbound.__table__  # type: ignore[attr-defined]
# Built once (Core, with expanding IN lists): the statement is compiled once and its cache
# key not worked out again at each delivery's deletion. Run through the ORM, as before, a
# deletion of a few bodies cost more CPU than signing a copy.
_UNUSED_AMONG = _BODIES.delete().where(
    _BODIES.c.id.in_(sa.bindparam("ids", expanding=True)),
    _BODIES.c.id.not_in(sa.select(_OUTBOUND.c.body_id).where(
        _OUTBOUND.c.body_id.in_(sa.bindparam("ids_again", expanding=True)))),
)
_UNUSED = _BODIES.delete().where(_BODIES.c.id.not_in(
    sa.select(_OUTBOUND.c.body_id).where(_OUTBOUND.c.body_id.is_not(None))))
_UNUSED_BEFORE = _UNUSED.where(_BODIES.c.created_at < sa.bindparam("before"))


def drop_unused_bodies(session: Session, ids: set[int] | None = None,
                       older_than: dt.datetime | None = None) -> None:
    """Delete shared bodies no queued copy refers to any more: among ``ids`` (a delivery's
    copies just deleted), or all of them created before ``older_than`` (the hourly sweep
    for bodies two daemons let go of at the same moment). Core statements on the session's
    connection: no body is ever loaded as an object, so there is none to keep in step."""
    if ids is not None and older_than is not None:
        raise TypeError("drop_unused_bodies: ids or older_than, not both")
    if ids is not None:
        if ids:
            session.connection().execute(_UNUSED_AMONG, {"ids": sorted(ids),
                                                         "ids_again": sorted(ids)})
        return
    if older_than is None:
        session.connection().execute(_UNUSED)
    else:
        session.connection().execute(_UNUSED_BEFORE, {"before": older_than})
