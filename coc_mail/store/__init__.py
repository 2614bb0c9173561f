"""The database: SQLModel tables, engine set-up (SQLite WAL or PostgreSQL) and migrations.

Sensitive values are stored sealed (see :mod:`coc_mail.store.crypto`); what stays readable without
the key is code names, dates, statuses, counters and opaque tags.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, col

from coc_mail.errors import CocMailError, StorageKeyError
from coc_mail.store import writelock
from coc_mail.store.crypto import BIG  # from this size on, SQLite gets a value in pieces


def utcnow() -> dt.datetime:
    """Aware UTC, the one time representation in the database."""
    return dt.datetime.now(dt.UTC)


class Meta(SQLModel, table=True):
    """Key/value facts about the database itself (the key check value)."""

    __tablename__ = "meta"
    key: str = Field(primary_key=True, max_length=64)
    value: bytes


class Inbound(SQLModel, table=True):
    """The incoming queue: one row per accepted SMTP transaction, sealed, until processed.

    With SQLite it lives in a database file of its own (:func:`incoming_url`), so the SMTP
    intake's commits never wait for processing or delivery to release the main file's write
    lock; ``uid`` then lets the processor recognise a message it has already applied
    (:class:`ProcessedInbound`). With PostgreSQL it is a table of the main database.
    """

    __tablename__ = "inbound"
    # The id is the queue id in "250 ... queued as N" and in the logs: never reused, also
    # when the queue runs empty (SQLite would otherwise hand out 1 again).
    __table_args__ = {"sqlite_autoincrement": True}
    id: int | None = Field(default=None, primary_key=True)
    uid: str | None = Field(default=None, max_length=32, index=True)
    received_at: dt.datetime = Field(default_factory=utcnow, index=True)
    envelope: bytes  # sealed JSON: mail_from, rcpt_tos, peer, smtputf8
    content: bytes  # sealed raw message as received
    attempts: int = 0
    claimed_until: dt.datetime | None = None
    shunted: bool = Field(default=False, index=True)
    error: str | None = Field(default=None, max_length=200)  # exception class only, no content


class ProcessedInbound(SQLModel, table=True):
    """Incoming messages (by uid) whose processing is committed in the main database, kept
    until their row in the separate incoming database is surely gone (a day)."""

    __tablename__ = "processed_inbound"
    uid: str = Field(primary_key=True, max_length=32)
    at: dt.datetime = Field(default_factory=utcnow, index=True)


class Case(SQLModel, table=True):
    """One report: its code name, status, dates and the sealed report."""

    __tablename__ = "cases"
    id: int | None = Field(default=None, primary_key=True)
    code_name: str = Field(unique=True, max_length=64)
    status: str = Field(default="New", max_length=16, index=True)
    opened_at: dt.datetime = Field(default_factory=utcnow)
    updated_at: dt.datetime = Field(default_factory=utcnow)
    resolved_at: dt.datetime | None = None
    reporter_key: str = Field(index=True, max_length=32)  # tag of the reporter address token
    reporter: bytes | None = None  # sealed reporter address
    report: bytes | None = None  # sealed original message
    sheet: bytes | None = None  # sealed JSON of status-sheet fields
    reported: bytes | None = None  # sealed name of the reported person (/involves)
    check_started_at: dt.datetime | None = None
    check_deadline: dt.datetime | None = None
    last_followup_at: dt.datetime | None = None
    reminders: str = Field(default="", max_length=400)  # keys of reminders already sent
    purge_warned: bool = False
    purged_at: dt.datetime | None = None  # document purged; the status-sheet row stays
    discard_by: str | None = Field(default=None, max_length=32)  # tag of the member who asked


class CodeName(SQLModel, table=True):
    """Every code name ever used, so none comes back after a case is discarded."""

    __tablename__ = "code_names"
    name: str = Field(primary_key=True, max_length=64)


class CaseMember(SQLModel, table=True):
    """A member's standing in one case; the member is named by a keyed tag, the standing
    sealed (without the key nobody can tell who was cleared, conflicted or excluded)."""

    __tablename__ = "case_members"
    case_id: int = Field(foreign_key="cases.id", primary_key=True, ondelete="CASCADE")
    member_tag: str = Field(primary_key=True, max_length=32)
    state: bytes  # sealed Standing value
    updated_at: dt.datetime = Field(default_factory=utcnow)
    reminded: bool = False  # the halfway conflict-check reminder went out


class DocEntry(SQLModel, table=True):
    """One dated, authored entry of a case document (SPEC 4.6), sealed."""

    __tablename__ = "doc_entries"
    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="cases.id", index=True, ondelete="CASCADE")
    section: bytes  # sealed: summary, scope, plan, ..., correspondence, followup
    entry_date: dt.date
    created_at: dt.datetime = Field(default_factory=utcnow)
    author: bytes  # sealed: member name, "reporter" or "coc-mail"
    body: bytes  # sealed text


class MemberRecord(SQLModel, table=True):
    """What the daemon learned about a member by mail: onboarding state and declared conflicts."""

    __tablename__ = "member_records"
    member_tag: str = Field(primary_key=True, max_length=32)
    state: str = Field(max_length=16)  # pending (onboarding sent, no answer) | active
    joined_at: dt.datetime = Field(default_factory=utcnow)
    answered_at: dt.datetime | None = None
    conflicts: bytes | None = None  # sealed JSON list of names/addresses
    email_tag: str | None = Field(default=None, max_length=32)  # tag of the member's address


class AuditEntry(SQLModel, table=True):
    """The append-only, hash-chained log of case changes: who, what, when; never content."""

    __tablename__ = "audit_log"
    __table_args__ = (sa.UniqueConstraint("code_name", "prev_hash", name="uq_audit_link"),)
    id: int | None = Field(default=None, primary_key=True)
    code_name: str = Field(index=True, max_length=64)
    at: dt.datetime = Field(default_factory=utcnow)
    actor: bytes  # sealed: member handle, "reporter" or "coc-mail"
    action: bytes  # sealed, e.g. "status New -> Ongoing"; no names, no text
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class SentCopy(SQLModel, table=True):
    """A message we sent: routes replies (Message-ID) and DSNs (uid) back to their case."""

    __tablename__ = "sent_copies"
    uid: str = Field(primary_key=True, max_length=16)
    case_id: int | None = Field(
        default=None, index=True, foreign_key="cases.id", ondelete="CASCADE"
    )
    message_id: str = Field(index=True, max_length=255)
    role: bytes  # sealed: member handle, "reporter" or "operator"
    created_at: dt.datetime = Field(default_factory=utcnow)
    bounced_at: dt.datetime | None = None  # the operators were told it bounced (once)


class Body(SQLModel, table=True):
    """A message body several queued copies share (a report forwarded to every member), stored
    once, sealed; deleted with the last copy that uses it."""

    __tablename__ = "bodies"
    id: int | None = Field(default=None, primary_key=True)
    created_at: dt.datetime = Field(default_factory=utcnow, index=True)
    content: bytes  # sealed body (everything after the header block's blank line)


class Outbound(SQLModel, table=True):
    """The delivery queue: one sealed copy per recipient, deleted once delivered. It is DKIM-
    signed when it is sent; with ``body_id`` set, ``content`` is the header block only and the
    body is the shared :class:`Body`."""

    __tablename__ = "outbound"
    id: int | None = Field(default=None, primary_key=True)
    uid: str = Field(unique=True, max_length=16)
    case_id: int | None = Field(default=None, index=True)
    created_at: dt.datetime = Field(default_factory=utcnow)
    next_attempt_at: dt.datetime = Field(default_factory=utcnow, index=True)
    attempts: int = 0
    claimed_until: dt.datetime | None = None
    envelope_from: str = Field(max_length=255)
    recipient: bytes  # sealed recipient address
    content: bytes  # sealed message, or its header block when body_id is set
    body_id: int | None = Field(default=None, index=True)
    last_error: bytes | None = None  # sealed: a relay's reply may quote the address


class AckBudget(SQLModel, table=True):
    """Acknowledgments sent per sender per day (keyed tag), to cap auto-replies to floods."""

    __tablename__ = "ack_budget"
    tag: str = Field(primary_key=True, max_length=32)
    day: dt.date = Field(index=True)
    count: int = 0




def counter(session: Session, tag: str, day: dt.date) -> AckBudget:
    """The :class:`AckBudget` row for ``tag``: one added earlier in this unit of work (not yet
    flushed, so ``get`` cannot see it), the stored one, or a new one at 0. Two counts of the
    same tag in one message (a message to two addresses of one member) must share a row."""
    for pending in session.new:
        if isinstance(pending, AckBudget) and pending.tag == tag:
            return pending
    return session.get(AckBudget, tag) or AckBudget(tag=tag, day=day, count=0)


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


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # a commit is on disk before we say 250
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL + synchronous=FULL, its directory is created,
    and its writers take turns through a lock file (:mod:`coc_mail.store.writelock`)."""
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        connect_args: dict[str, Any] = {"check_same_thread": False, "timeout": 10}
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            connect_args["factory"] = writelock.connection_class(path)  # writers take turns
        engine = sa.create_engine(
            url,
            connect_args=connect_args,
            pool_size=8,
            hide_parameters=True,  # errors never quote values into logs
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(
        url, pool_pre_ping=True, pool_size=8, max_overflow=8, hide_parameters=True
    )


def incoming_url(url: str) -> str | None:
    """Where the incoming queue lives: for a SQLite file ``x.db``, ``x.incoming.db`` beside
    it; None (the main database) for PostgreSQL and in-memory SQLite."""
    if not url.startswith("sqlite"):
        return None
    parsed = sa.engine.make_url(url)
    path = parsed.database
    if not path or path == ":memory:":
        return None
    p = Path(path)
    return parsed.set(database=str(p.with_name(f"{p.stem}.incoming{p.suffix or '.db'}"))
                      ).render_as_string(hide_password=False)


def make_incoming(url: str, main: Engine) -> Engine:
    """The incoming queue's engine (``main`` itself unless :func:`incoming_url` says
    otherwise); a separate SQLite file gets its one table created."""
    separate = incoming_url(url)
    if separate is None:
        return main
    engine = make_engine(separate)
    SQLModel.metadata.create_all(engine, tables=[SQLModel.metadata.tables["inbound"]])
    return engine


SCHEMA_HEAD = "0005"  # the newest migration; tests/test_workflow_more.py keeps them in step


def check_schema(engine: Engine) -> None:
    """For commands that do not migrate: refuse a database that is not at SCHEMA_HEAD."""
    try:
        with engine.connect() as conn:
            current = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except sa.exc.DBAPIError:
        current = None
    if current != SCHEMA_HEAD:
        raise CocMailError(
            f"the database schema is at {current or 'nothing'}, this coc-mail needs "
            f"{SCHEMA_HEAD}: start `coc-mail serve` once to create or upgrade it"
        )


def migrate(engine: Engine, keys: Any = None) -> None:
    """Bring the schema to the newest revision (Alembic); safe to run on every start. The
    keyring is given to migrations that seal values stored in clear by older releases."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        cfg.attributes["keys"] = keys
        command.upgrade(cfg, "head")


KEY_CHECK = b"coc-mail key check v1"


def check_key(engine: Engine, keys: Any, *, before_migrations: bool = False) -> None:
    """Refuse a storage key that is not the one this database was written with. Before
    migrations (which may seal old values with it) only an existing check value is read."""
    if before_migrations and not sa.inspect(engine).has_table("meta"):
        return
    with Session(engine) as session:
        row = session.get(Meta, "key_check")
        if row is None and before_migrations:
            return
        if row is None:
            session.add(Meta(key="key_check", value=keys.seal(KEY_CHECK, "meta.key_check")))
            session.commit()
            return
        try:
            ok = keys.open(row.value, "meta.key_check") == KEY_CHECK
        except StorageKeyError:
            ok = False
        if not ok:
            raise StorageKeyError(
                "the storage key does not open this database: restore the key file that was "
                "used when it was created (or set COC_MAIL_KEY to it)"
            )
