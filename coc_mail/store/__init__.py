"""The database: tables, engines (SQLite WAL or PostgreSQL), migrations and at-rest encryption.

Sensitive values are stored sealed (see :mod:`coc_mail.store.crypto`); what stays readable
without the key is code names, dates, statuses, counters and opaque tags. Callers import
what they need from here; the modules behind it are ``tables``, ``blobs``, ``engine``,
``crypto`` and ``writelock``.

May import: ``config`` and ``errors`` only. Every other part stands on this one.
"""

from coc_mail.store.blobs import deferred_blob, drop_unused_bodies, fill_blob
from coc_mail.store.engine import (
    KEY_CHECK,
    SCHEMA_HEAD,
    check_key,
    check_schema,
    incoming_url,
    make_engine,
    make_incoming,
    migrate,
    wait_for_database,
)
from coc_mail.store.tables import (
    AckBudget,
    AuditEntry,
    Body,
    Case,
    CaseMember,
    CodeName,
    DocEntry,
    Inbound,
    MemberRecord,
    Meta,
    Outbound,
    ProcessedInbound,
    SentCopy,
    WebLink,
    WebPasskey,
    WebSession,
    attach,
    count_up,
    new_row,
    utcnow,
)

__all__ = [
    "KEY_CHECK", "SCHEMA_HEAD", "AckBudget", "AuditEntry", "Body", "Case", "CaseMember",
    "CodeName", "DocEntry", "Inbound", "MemberRecord", "Meta", "Outbound", "ProcessedInbound",
    "SentCopy", "WebLink", "WebPasskey", "WebSession", "attach", "check_key", "check_schema",
    "count_up", "deferred_blob", "drop_unused_bodies", "fill_blob", "incoming_url",
    "make_engine", "make_incoming", "migrate", "new_row", "utcnow", "wait_for_database",
]
