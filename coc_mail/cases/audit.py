"""The audit log: every change to a case (who, what, when; never content), hash-chained per case."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from coc_mail.store import AuditEntry, utcnow
from coc_mail.store.crypto import Keyring

GENESIS = "0" * 64
AUDIT_LOG = AuditEntry.__table__  # type: ignore[attr-defined]


def _digest(prev: str, code_name: str, at: str, actor: str, action: str) -> str:
    text = "\x1f".join((prev, code_name, at, actor, action))
    return hashlib.sha256(text.encode()).hexdigest()


def entry(keys: Keyring, code_name: str, actor: str, action: str, prev: str = GENESIS
          ) -> dict[str, Any]:
    """One audit_log row: ``prev`` the hash of the case's entry before it (none: a new
    case's first entry, for :meth:`Outbox.later`)."""
    at = utcnow().replace(microsecond=0)
    return {
        "code_name": code_name,
        "at": at,
        "actor": keys.seal_text(actor, "audit_log.actor"),
        "action": keys.seal_text(action[:200], "audit_log.action"),
        "prev_hash": prev,
        "hash": _digest(prev, code_name, at.isoformat(), actor, action[:200]),
    }


def record(keys: Keyring, session: Session, code_name: str, actor: str, action: str) -> None:
    """Append one entry to the case's chain (in the caller's transaction)."""
    last = session.exec(
        select(AuditEntry.hash)
        .where(AuditEntry.code_name == code_name)
        .order_by(col(AuditEntry.id).desc())
        .limit(1)
    ).first()
    session.add(AuditEntry(**entry(keys, code_name, actor, action, last or GENESIS)))
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
