"""The audit log: every change to a case (who, what, when; never content), hash-chained per case."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session, col, select

from coc_mail.store import AuditEntry, utcnow
from coc_mail.store.crypto import Keyring

GENESIS = "0" * 64
AUDIT_LOG = AuditEntry.__table__  # type: ignore[attr-defined]
_FIRST_ENTRY = insert(AUDIT_LOG)  # built once: every new case has one


def _digest(prev: str, code_name: str, at: str, actor: str, action: str) -> str:
    text = "\x1f".join((prev, code_name, at, actor, action))
    return hashlib.sha256(text.encode()).hexdigest()


def record(
    keys: Keyring, session: Session, code_name: str, actor: str, action: str,
    *, first: bool = False,
) -> None:
    """Append one entry to the case's chain (in the caller's transaction); ``first`` for
    the entry that opens a new case's chain."""
    last = None if first else session.exec(
        select(AuditEntry.hash)
        .where(AuditEntry.code_name == code_name)
        .order_by(col(AuditEntry.id).desc())
        .limit(1)
    ).first()
    prev = last or GENESIS
    at = utcnow().replace(microsecond=0)
    entry: dict[str, Any] = {
        "code_name": code_name,
        "at": at,
        "actor": keys.seal_text(actor, "audit_log.actor"),
        "action": keys.seal_text(action[:200], "audit_log.action"),
        "prev_hash": prev,
        "hash": _digest(prev, code_name, at.isoformat(), actor, action[:200]),
    }
    if first:  # a new case's first entry: a Core insert, no ORM object to flush
        session.connection().execute(_FIRST_ENTRY, entry)
        return
    session.add(AuditEntry(**entry))
    session.flush()  # the next entry of this transaction reads this one


@dataclass(frozen=True)
class Line:
    """One verified entry as printed by ``coc-mail audit``."""

    at: str
    actor: str
    action: str
    ok: bool


def verify(keys: Keyring, session: Session, code_name: str) -> tuple[list[Line], bool]:
    """Read a case's chain and check every link; returns the lines and whether all hold."""
    prev = GENESIS
    lines: list[Line] = []
    intact = True
    for entry in session.exec(
        select(AuditEntry).where(AuditEntry.code_name == code_name).order_by(col(AuditEntry.id))
    ):
        actor = keys.open_text(entry.actor, "audit_log.actor")
        action = keys.open_text(entry.action, "audit_log.action")
        at = entry.at.replace(microsecond=0)
        expected = _digest(prev, code_name, at.isoformat(), actor, action)
        ok = entry.prev_hash == prev and entry.hash == expected
        intact = intact and ok
        lines.append(Line(f"{at:%Y-%m-%d %H:%M:%S}", actor, action, ok))
        prev = entry.hash
    return lines, intact
