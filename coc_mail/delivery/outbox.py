"""Queueing outbound copies: build and seal them first, then add them to the caller's
transaction in one short write, so a copy exists exactly when the change that caused it is
committed. Copies are DKIM-signed when they are sent (:mod:`coc_mail.delivery.worker`);
copies of one report share one stored body (:meth:`Outbox.share`).

Every copy about a case is threaded (SPEC 8.1, one conversation per person per case): the
first message to a person about a case gets that person's thread id for the case as its
Message-ID (a keyed tag of the code name and the person, so it is known without a lookup
table), and every later one names it in ``References:``, with ``In-Reply-To:`` the message
it answers. Any mail client then shows a case as one conversation per person."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy import insert, select
from sqlmodel import Session, SQLModel

from coc_mail.app import App
from coc_mail.config import Member
from coc_mail.mail.addresses import Addresses
from coc_mail.mail.compose import Ids, mailbox, new_message_id, text_message
from coc_mail.store import Case, deferred_blob, fill_blob, utcnow

log = logging.getLogger(__name__)


@functools.cache
def _insert(table: sa.Table) -> sa.Insert:
    return sa.insert(table)  # built once per table: building cost more than running it


BODIES, SENT_COPIES, OUTBOUND = (
    SQLModel.metadata.tables[name] for name in ("bodies", "sent_copies", "outbound")
)


@dataclass
class Pending:
    """A signed copy waiting for its transaction."""

    uid: str
    message_id: str
    case: Case | None
    role: str
    recipient: str
    sealed: bytes  # the message (or its header block), sealed at once
    body: int | None  # index into Outbox.bodies when the copy's body is shared


@dataclass
class Outbox:
    """The copies one unit of work will queue; :meth:`write` adds them to the session."""

    app: App
    session: Session | None = None  # the caller's transaction: which threads have begun
    pending: list[Pending] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)  # sealed shared bodies
    begun: set[str] = field(default_factory=set)  # thread ids known to have a first message
    fresh: set[str] = field(default_factory=set)  # code names of cases opened by this unit
    rows: dict[sa.Table, list[dict[str, Any]]] = field(default_factory=dict)  # see later()

    def later(self, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        """Rows of the cases this batch opens that nothing reads before the batch ends (its
        code name, standings and first audit entry), added with the copies: one insert per
        table for the batch instead of one per case. Whatever could read them (mail about
        an existing case: :func:`coc_mail.cases.route.handle`) has :meth:`write_rows` run
        first; no mail can be about a case of this batch, since none of its mail is out."""
        self.rows.setdefault(table, []).extend(rows)

    def write_rows(self, session: Session) -> None:
        """Insert the rows :meth:`later` holds, in the order their tables were first given."""
        if not self.rows:
            return
        conn = session.connection()
        for table, rows in self.rows.items():
            if rows:
                conn.execute(_insert(table), rows)
        self.rows.clear()

    def thread_id(self, code_name: str, role: str) -> str:
        """The Message-ID of the first message to ``role`` about a case: the root every
        later message to them about it names in ``References:``."""
        # the shape of every Message-ID of ours (24 hex digits), so it is found as one of ours
        return f"<{self.app.keys.tag('thread', code_name, role)[:24]}@{self.app.domain}>"

    def ids(self, case: Case | None, role: str, in_reply_to: str | None) -> Ids:
        """The Message-ID and threading headers of the next copy for ``role``."""
        if case is None:
            return Ids(new_message_id(self.app.domain), in_reply_to, in_reply_to)
        root = self.thread_id(case.code_name, role)
        if root not in self.begun and not self._sent(case, root):
            self.begun.add(root)
            return Ids(root, in_reply_to, in_reply_to)
        # Oldest first: the reporter's conversation begins with their report (a follow-up
        # answers it); a member's with our first message (an answer follows the command).
        order = (in_reply_to, root) if role == "reporter" else (root, in_reply_to)
        refs = " ".join(dict.fromkeys(r for r in order if r))
        return Ids(new_message_id(self.app.domain), in_reply_to, refs)

    def _sent(self, case: Case, root: str) -> bool:
        """Has the thread ``root`` begun (its first message queued in an earlier unit)?"""
        if case.code_name in self.fresh:
            return False
        if self.session is None:  # another connection would not see this transaction's rows
            raise ValueError("case mail is queued through an Outbox given the caller's session")
        query = select(SENT_COPIES.c.uid).where(SENT_COPIES.c.message_id == root).limit(1)
        return self.session.connection().execute(query).first() is not None

    def share(self, parts: Sequence[bytes]) -> int:
        """Seal a body (given as its parts) several copies will share; pass the result as
        ``queue(body=...)``."""
        self.bodies.append(self.app.keys.seal_parts(parts, "bodies.content"))
        return len(self.bodies) - 1

    def queue(
        self,
        *,
        case: Case | None,
        role: str,
        recipient: str,
        build: Callable[[Ids], bytes],
        body: int | None = None,
        in_reply_to: str | None = None,
        answer: bool = False,
    ) -> str:
        """Build one copy (given its Message-ID and threading headers, see :meth:`ids`) and
        seal it now; return its Message-ID.

        ``build`` returns the whole message, or with ``body`` (from :meth:`share`) the header
        block only, blank line included. ``in_reply_to`` is the message it answers (``answer``:
        automatically, so it says ``Auto-Submitted: auto-replied``). ``role``
        says who the copy is for (a member handle, ``reporter`` or ``operator``); it is
        stored sealed next to the Message-ID so replies and bounces find their case.
        """
        ids = replace(self.ids(case, role, in_reply_to), answer=answer and bool(in_reply_to))
        message_id = ids.message_id
        sealed = self.app.keys.seal(build(ids), "outbound.content")
        self.pending.append(
            Pending(Addresses.new_copy_uid(), message_id, case, role, recipient, sealed, body)
        )
        return message_id

    def write(self, session: Session) -> int:
        """Add every pending copy to ``session`` (flushing first so new cases have ids), and
        the rows :meth:`later` holds."""
        self.write_rows(session)
        if not self.pending:
            return 0
        session.flush()
        keys = self.app.keys
        now = utcnow()
        conn = session.connection()  # Core from here: no ORM bookkeeping for queue rows
        values = [deferred_blob(session, sealed) for sealed in self.bodies]
        whole = [i for i, v in enumerate(values) if isinstance(v, bytes | bytearray)]
        body_ids = [0] * len(values)
        if whole:  # one statement for all the bodies bound whole, ids in order
            inserted = conn.execute(
                insert(BODIES).returning(BODIES.c.id, sort_by_parameter_order=True),
                [{"content": values[i], "created_at": now} for i in whole],
            ).scalars().all()
            for i, body_id in zip(whole, inserted, strict=True):
                body_ids[i] = body_id
        for i, sealed in enumerate(self.bodies):
            if not body_ids[i]:  # a big body: a zero blob, then filled in pieces
                body_ids[i] = conn.execute(
                    insert(BODIES).values(content=values[i], created_at=now)
                    .returning(BODIES.c.id)
                ).scalar_one()
                fill_blob(session, "bodies", "content", body_ids[i], sealed)
        copies, queued = [], []
        for p in self.pending:
            case_id = p.case.id if p.case is not None else None
            copies.append({
                "uid": p.uid, "case_id": case_id, "message_id": p.message_id,
                "role": keys.seal_text(p.role, "sent_copies.role"), "created_at": now,
            })
            queued.append({
                "uid": p.uid, "case_id": case_id, "created_at": now, "next_attempt_at": now,
                "attempts": 0, "envelope_from": self.app.addresses.bounce(p.uid),
                "recipient": keys.seal_text(p.recipient, "outbound.recipient"),
                "content": p.sealed,
                "body_id": body_ids[p.body] if p.body is not None else None,
            })
        # Core executemany: one statement per table, not one ORM object per row.
        conn.execute(insert(SENT_COPIES), copies)
        conn.execute(insert(OUTBOUND), queued)
        count = len(self.pending)
        self.pending.clear()
        self.bodies.clear()
        return count

    def to_member(
        self,
        member: Member,
        case: Case | None,
        subject: str,
        body: str,
        *,
        role: str | None = None,
        in_reply_to: str | None = None,
    ) -> str:
        """Queue a plain-text mail from the committee to one member, ``Reply-To:`` their own
        address for ``case`` (their member address when there is no case)."""
        app = self.app
        reply_to = (
            app.addresses.case(case.code_name, member.handle)
            if case is not None
            else app.addresses.member(member.handle)
        )
        return self.queue(
            case=case,
            role=role or member.handle,
            recipient=member.email,
            in_reply_to=in_reply_to,
            answer=True,
            build=lambda ids: text_message(
                from_name=app.settings.committee.name,
                from_addr=app.alias,
                to=mailbox(member.name, member.email, "To"),
                reply_to=reply_to,
                subject=subject,
                body=body,
                ids=ids,
                loop=app.alias,
            ),
        )

    def notify_operators(self, subject: str, body: str) -> int:
        """Queue a notice (no message content, no reporter address) to every operator."""
        operators = self.app.settings.operators
        if not operators:
            log.warning("operator notice not sent: no member has the 'operator' role")
            return 0
        for member in operators:
            self.to_member(member, None, f"[coc-mail] {subject}", body, role="operator")
        return len(operators)


def notify_operators(app: App, session: Session, subject: str, body: str) -> int:
    """Queue an operator notice in ``session`` right away (for callers outside a unit)."""
    outbox = Outbox(app)
    count = outbox.notify_operators(subject, body)
    outbox.write(session)
    return count
