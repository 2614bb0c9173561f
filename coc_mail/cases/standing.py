"""The case and member-in-case state machines: named states, named transitions, one place
that applies a transition."""

from __future__ import annotations

import datetime as dt
import functools
import logging
from enum import StrEnum
from typing import Any

from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from coc_mail.app import App
from coc_mail.cases.codenames import new_code_name
from coc_mail.store import Case, CaseMember, CodeName, utcnow
from coc_mail.store.crypto import Keyring

log = logging.getLogger(__name__)


class Status(StrEnum):
    """A case's status, as the status sheet shows it."""

    NEW = "New"  # reported person not named yet
    ONGOING = "Ongoing"
    RESOLVED = "Resolved"


class Standing(StrEnum):
    """A member's standing in one case."""

    NOTIFIED = "notified"  # received the report at intake
    EXCLUDED = "excluded"  # known conflict, `without.`, or the reported person: never told
    ASKED = "asked"  # conflict check sent, no answer yet
    CLEARED = "cleared"
    CONFLICTED = "conflicted"
    SILENT = "silent"  # did not answer the conflict check in time
    RECUSED = "recused"


# Who receives case mail in each status.
RECEIVING = {Standing.NOTIFIED, Standing.CLEARED}

STATE = "case_members.state"  # the sealed column's context
CODE_NAME_TRIES = 20
CODE_NAME_BATCH = 32  # candidates checked at once: the processor's batch size
FREE_NAMES = "coc_mail.free_code_names"  # session.info key: names checked free, not used yet
TAKEN_NAMES = "coc_mail.taken_code_names"  # and names taken, maybe not in code_names yet
CODE_NAMES = CodeName.__table__  # type: ignore[attr-defined]
CASE_MEMBERS = CaseMember.__table__  # type: ignore[attr-defined]


def unused_code_name(session: Session) -> str:
    """A fresh code name not used by any case so far (the unique constraint backs this up).

    Candidates are checked a batch at a time, in one query, and kept for the rest of the
    session's transaction, as are the names taken in it: the caller records the one it
    takes in code_names (with the batch's other new rows: :meth:`Outbox.later`).
    """
    free: list[str] = session.info.setdefault(FREE_NAMES, [])
    taken_here: set[str] = session.info.setdefault(TAKEN_NAMES, set())
    conn = session.connection()
    for _ in range(CODE_NAME_TRIES):
        if not free:
            drawn = {new_code_name() for _ in range(CODE_NAME_BATCH)} - taken_here
            taken = set(conn.execute(  # every case's name is in code_names
                select(CODE_NAMES.c.name).where(CODE_NAMES.c.name.in_(drawn))
            ).scalars())
            if taken:
                log.info("code name collision, drawing another")
            free.extend(sorted(drawn - taken))
        if free:
            code_name = free.pop()
            taken_here.add(code_name)
            return code_name
    raise RuntimeError("could not draw an unused code name")


def member_tag(app: App, handle: str) -> str:
    return _member_tag(app.keys, handle)


@functools.lru_cache(maxsize=4096)
def _member_tag(keys: Keyring, handle: str) -> str:  # asked for every member, often
    return keys.tag("member", handle)


def set_standing(app: App, session: Session, case: Case, handle: str, standing: Standing) -> None:
    """Apply a member-in-case transition (creating the row on first sight)."""
    assert case.id is not None
    tag = member_tag(app, handle)
    row = next(
        (o for o in session.new
         if isinstance(o, CaseMember) and o.case_id == case.id and o.member_tag == tag),
        None,
    ) or session.get(CaseMember, (case.id, tag))
    sealed = app.keys.seal_text(standing, STATE)
    if row is None:
        session.add(CaseMember(case_id=case.id, member_tag=tag, state=sealed))
    else:
        row.state = sealed  # updated_at stays: one member's changes must not stand out by time
        session.add(row)


def first_standings(app: App, case: Case, of: dict[str, Standing]) -> list[dict[str, Any]]:
    """The case_members rows of a case just opened (for :meth:`Outbox.later`: one insert for
    the batch's new cases)."""
    assert case.id is not None
    now = utcnow()
    return [
        {"case_id": case.id, "member_tag": member_tag(app, handle),
         "state": app.keys.seal_text(standing, STATE),
         "updated_at": now, "reminded": False}
        for handle, standing in of.items()
    ]


def standings(app: App, session: Session, case: Case) -> dict[str, Standing]:
    """Each configured member's standing in ``case`` (members never seen are absent)."""
    rows = {
        r.member_tag: r.state
        for r in session.exec(select(CaseMember).where(CaseMember.case_id == case.id))
    }
    for o in session.new:  # changes of this unit not yet flushed
        if isinstance(o, CaseMember) and o.case_id == case.id:
            rows[o.member_tag] = o.state
    opened = {tag: app.keys.open_text(state, STATE) for tag, state in rows.items()}
    result: dict[str, Standing] = {}
    for member in app.settings.members:
        state = opened.get(member_tag(app, member.handle))
        if state is not None:
            result[member.handle] = Standing(state)
    return result


def receiving(status: str) -> set[Standing]:
    """The standings that receive a case in ``status``: while it is New, those who got the
    report at intake; from the conflict check on, the cleared members only."""
    return RECEIVING if status == Status.NEW else {Standing.CLEARED}


def receiving_members(app: App, session: Session, case: Case) -> list[str]:
    """Handles of the members who receive case mail now (see :func:`receiving`)."""
    wanted = receiving(case.status)
    return [h for h, s in standings(app, session, case).items() if s in wanted]


def receives(app: App, session: Session, case: Case, handle: str) -> bool:
    """Whether member ``handle`` receives ``case`` now: :func:`receiving_members` for one
    member, read from their one row (what the web view asks on every request)."""
    state = session.exec(select(CaseMember.state).where(
        CaseMember.case_id == case.id, CaseMember.member_tag == member_tag(app, handle))).first()
    return state is not None and Standing(app.keys.open_text(state, STATE)) in receiving(
        case.status)


def received_cases(app: App, session: Session, handle: str, limit: int | None = None
                   ) -> list[tuple[str, str, dt.datetime, dt.datetime]]:
    """The cases member ``handle`` receives now, newest first, as (code name, status,
    opened, last activity): one query over their own rows, no report read; at most
    ``limit`` of them (rows are opened only until that many are found)."""
    found: list[tuple[str, str, dt.datetime, dt.datetime]] = []
    rows = session.execute(
        sa_select(col(Case.code_name), col(Case.status), col(Case.opened_at),
                  col(Case.updated_at), col(CaseMember.state))
        .join(CaseMember, col(CaseMember.case_id) == col(Case.id))
        .where(col(CaseMember.member_tag) == member_tag(app, handle))
        .order_by(col(Case.opened_at).desc(), col(Case.id).desc())
    )
    for code, status, opened, updated, state in rows:
        if Standing(app.keys.open_text(state, STATE)) in receiving(status):
            found.append((code, status, opened, updated))
            if limit is not None and len(found) >= limit:
                break
    rows.close()
    return found
