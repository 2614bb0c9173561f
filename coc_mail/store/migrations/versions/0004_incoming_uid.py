"""Incoming messages get a uid, and processed ones are remembered for a day (a SQLite
incoming queue lives in its own file; see coc_mail.store.Inbound).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 12:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'processed_inbound',
        sa.Column('uid', sa.String(length=32), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('uid'),
    )
    with op.batch_alter_table('processed_inbound', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_processed_inbound_at'), ['at'], unique=False)
    with op.batch_alter_table('inbound', schema=None) as batch_op:
        batch_op.add_column(sa.Column('uid', sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f('ix_inbound_uid'), ['uid'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('inbound', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inbound_uid'))
        batch_op.drop_column('uid')
    with op.batch_alter_table('processed_inbound', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_processed_inbound_at'))
    op.drop_table('processed_inbound')
