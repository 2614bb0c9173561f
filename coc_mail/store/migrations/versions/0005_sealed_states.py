"""Seal what a copy of the database without the key must not show (SPEC 9): each member's
standing in each case, audit action texts and document section names; short sealed values
are padded (their lengths told who and what: coc_mail.store.crypto.PADDED); a case remembers who
asked to discard it (a second member must confirm), a sent copy whether its bounce was told,
a member record the tag of the member's address (a renamed member keeps their standings).

Existing values are sealed, or sealed again padded, with the storage key coc-mail hands the
migration.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

SEALED: tuple[tuple[str, str, tuple[str, ...], int], ...] = (  # table, column, key, old length
    ('case_members', 'state', ('case_id', 'member_tag'), 16),
    ('audit_log', 'action', ('id',), 200),
    ('doc_entries', 'section', ('id',), 16),
)
RESEALED: tuple[tuple[str, str, tuple[str, ...]], ...] = (  # sealed before, unpadded
    ('audit_log', 'actor', ('id',)),
    ('doc_entries', 'author', ('id',)),
    ('sent_copies', 'role', ('uid',)),
    ('cases', 'reported', ('id',)),
    ('cases', 'reporter', ('id',)),
    ('cases', 'sheet', ('id',)),
    ('member_records', 'conflicts', ('member_tag',)),
)


def _keys() -> Any:
    keys = context.config.attributes.get('keys')
    if keys is None:
        raise RuntimeError(
            'migration 0005 seals existing values: run it through `coc-mail serve`, '
            'which opens the storage key (not with the alembic command)'
        )
    return keys


def _convert(table: str, column: str, key: tuple[str, ...], change: Any,
             target: str = '') -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        f'SELECT {", ".join(key)}, {column} FROM {table} '  # noqa: S608 - our own names
        f'WHERE {column} IS NOT NULL'
    )).all()
    where = ' AND '.join(f'{k} = :k{i}' for i, k in enumerate(key))
    for row in rows:
        params = {f'k{i}': row[i] for i in range(len(key))}
        params['v'] = change(row[len(key)])
        conn.execute(sa.text(
            f'UPDATE {table} SET {target or column + "_new"} = :v WHERE {where}'  # noqa: S608
        ), params)


def _reseal(*, padded: bool) -> None:
    """Seal the RESEALED columns again, padded (upgrade) or not (downgrade)."""
    conn = op.get_bind()
    for table, column, key in RESEALED:
        if conn.execute(sa.text(
                f'SELECT count(*) FROM {table} WHERE {column} IS NOT NULL')).scalar():  # noqa: S608
            keys = _keys()
            _convert(table, column, key, lambda v, t=table, c=column: keys.seal(
                keys.open(bytes(v), f'{t}.{c}'), f'{t}.{c}', padded=padded), target=column)


def upgrade() -> None:
    conn = op.get_bind()
    for table, column, key, _length in SEALED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column(f'{column}_new', sa.LargeBinary(), nullable=True))
        if conn.execute(sa.text(f'SELECT count(*) FROM {table}')).scalar():  # noqa: S608
            keys = _keys()
            _convert(table, column, key,
                     lambda v, t=table, c=column: keys.seal_text(str(v), f'{t}.{c}'))
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column(column)
            batch_op.alter_column(f'{column}_new', new_column_name=column, nullable=False,
                                  existing_type=sa.LargeBinary())
    _reseal(padded=True)
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('discard_by', sa.String(length=32), nullable=True))
    with op.batch_alter_table('sent_copies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('bounced_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('member_records', schema=None) as batch_op:
        batch_op.add_column(sa.Column('email_tag', sa.String(length=32), nullable=True))


def downgrade() -> None:
    conn = op.get_bind()
    _reseal(padded=False)
    for table, column in (('member_records', 'email_tag'), ('sent_copies', 'bounced_at'),
                          ('cases', 'discard_by')):
        # Not a batch: on SQLite that copies the table, and dropping the old cases table
        # would delete every child row (ON DELETE CASCADE). SQLite drops a column itself.
        op.execute(f'ALTER TABLE {table} DROP COLUMN {column}')
    for table, column, key, length in SEALED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column(f'{column}_new', sa.String(length=length),
                                          nullable=True))
        if conn.execute(sa.text(f'SELECT count(*) FROM {table}')).scalar():  # noqa: S608
            keys = _keys()
            _convert(table, column, key,
                     lambda v, t=table, c=column: keys.open_text(bytes(v), f'{t}.{c}'))
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column(column)
            batch_op.alter_column(f'{column}_new', new_column_name=column, nullable=False,
                                  existing_type=sa.String(length=length))
