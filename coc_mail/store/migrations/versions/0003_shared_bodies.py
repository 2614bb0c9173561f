"""Shared bodies: copies of one report share one stored body; copies are signed when sent.

Copies already queued keep their whole (already signed) content and no body.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 12:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'bodies',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('content', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('bodies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bodies_created_at'), ['created_at'], unique=False)
    with op.batch_alter_table('outbound', schema=None) as batch_op:
        batch_op.add_column(sa.Column('body_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_outbound_body_id'), ['body_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbound', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbound_body_id'))
        batch_op.drop_column('body_id')
    with op.batch_alter_table('bodies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bodies_created_at'))
    op.drop_table('bodies')
