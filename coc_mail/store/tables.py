"""The tables (SQLModel): what the database holds, sealed where SPEC 9 asks, and its clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any, TypeVar

import sqlalchemy as sa
import sqlalchemy.orm
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, Session, SQLModel

M = TypeVar("M", bound=SQLModel)


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
    opened_at: dt.datetime = Field(default_factory=utcnow, index=True)
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
    member_tag: str = Field(primary_key=True, max_length=32, index=True)
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


class WebLink(SQLModel, table=True):
    """A one-time sign-in link mailed to a member: only its hash is kept (a copy of the
    database signs nobody in), with the member's keyed tag, its deadline and its use."""

    __tablename__ = "web_links"
    token_hash: str = Field(primary_key=True, max_length=64)
    member_tag: str = Field(max_length=32, index=True)
    expires_at: dt.datetime = Field(index=True)
    used_at: dt.datetime | None = None


class WebSession(SQLModel, table=True):
    """A signed-in browser: the hash of its cookie, the member's keyed tag, its deadline."""

    __tablename__ = "web_sessions"
    token_hash: str = Field(primary_key=True, max_length=64)
    member_tag: str = Field(max_length=32, index=True)
    created_at: dt.datetime = Field(default_factory=utcnow)
    expires_at: dt.datetime = Field(index=True)
    verified: bool = True  # False until the member's passkey answered (second factor)
    challenge: str | None = Field(default=None, max_length=128)  # a pending WebAuthn one


class WebPasskey(SQLModel, table=True):
    """A member's passkey (WebAuthn credential): its id, sealed public key and counter."""

    __tablename__ = "web_passkeys"
    credential_id: str = Field(primary_key=True, max_length=1400)  # base64url
    member_tag: str = Field(max_length=32, index=True)
    public_key: bytes  # sealed COSE key
    sign_count: int = 0
    created_at: dt.datetime = Field(default_factory=utcnow)


def new_row(model: type[M], values: dict[str, Any], *, apart: Iterable[str] = ()
            ) -> tuple[dict[str, Any], M]:
    """The column values of a new row of ``model`` (``values``, the rest from the fields'
    defaults, as the constructor fills them; no primary key) and an instance holding them,
    made the way a query makes the instances it loads (no constructor run: SQLModel's
    ``__init__`` cost more than inserting the row). Columns ``apart`` are left out of the
    instance (read from the row if asked for). Insert the values, set the primary key on the
    instance, then :func:`attach` it."""
    row: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if name in values:
            row[name] = values[name]
        elif info.default_factory is not None:
            row[name] = info.default_factory()  # type: ignore[call-arg]
        elif not info.is_required():
            row[name] = info.default
        else:
            raise TypeError(f"{model.__name__}: no value for {name}")
    for key in sa.inspect(model).primary_key:
        if row.get(key.name) is None:
            row.pop(key.name, None)  # the database gives it
    instance = sa.inspect(model).class_manager.new_instance()
    skip = set(apart)
    sa.orm.attributes.instance_state(instance).dict.update(
        (k, v) for k, v in row.items() if k not in skip)
    return row, instance


def attach(session: Session, instance: SQLModel) -> None:
    """Make an instance from :func:`new_row`, its primary key set, the stored row it is:
    later changes are updates; an attribute it was not given is read from the row if asked
    for."""
    sa.orm.make_transient_to_detached(instance)
    session.add(instance)


def count_up(session: Session, tag: str, day: dt.date) -> int:
    """Add one to the :class:`AckBudget` count of ``tag`` and return it: a count from an
    earlier day starts again at 1. One statement (an upsert), in the caller's transaction:
    two counts of one tag in one message (to two addresses of one member) see each other,
    and nothing is left for the unit of work to flush (it had cost more than the count)."""
    dialect = session.get_bind().dialect.name
    stmt = _COUNT_UP.get(dialect)
    if stmt is None:
        stmt = _COUNT_UP[dialect] = _count_up(dialect)
    return int(session.connection().execute(stmt, {"tag": tag, "day": day}).scalar_one())


_COUNT_UP: dict[str, sa.Executable] = {}


def _count_up(dialect: str) -> sa.Executable:
    table = AckBudget.__table__  # type: ignore[attr-defined]
    insert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(table).values(
        tag=sa.bindparam("tag"), day=sa.bindparam("day"), count=1)
    return insert.on_conflict_do_update(
        index_elements=[table.c.tag],
        set_={"count": sa.case((table.c.day == insert.excluded.day, table.c.count + 1),
                               else_=1),
              "day": insert.excluded.day},
    ).returning(table.c.count)
