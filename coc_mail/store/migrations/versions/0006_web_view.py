"""The members' web view: one-time sign-in links and sessions, kept as hashes; passkeys.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'web_links',
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('member_tag', sa.String(length=32), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('token_hash'),
    )
    op.create_index('ix_web_links_member_tag', 'web_links', ['member_tag'])
    op.create_index('ix_web_links_expires_at', 'web_links', ['expires_at'])
    op.create_table(
        'web_sessions',
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('member_tag', sa.String(length=32), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('verified', sa.Boolean(), nullable=False),
        sa.Column('challenge', sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint('token_hash'),
    )
    op.create_index('ix_web_sessions_member_tag', 'web_sessions', ['member_tag'])
    op.create_index('ix_web_sessions_expires_at', 'web_sessions', ['expires_at'])
    op.create_table(
        'web_passkeys',
        sa.Column('credential_id', sa.String(length=1400), nullable=False),
        sa.Column('member_tag', sa.String(length=32), nullable=False),
        sa.Column('public_key', sa.LargeBinary(), nullable=False),
        sa.Column('sign_count', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('credential_id'),
    )
    op.create_index('ix_web_passkeys_member_tag', 'web_passkeys', ['member_tag'])


def downgrade() -> None:
    op.drop_index('ix_web_passkeys_member_tag', table_name='web_passkeys')
    op.drop_table('web_passkeys')
    op.drop_index('ix_web_sessions_expires_at', table_name='web_sessions')
    op.drop_index('ix_web_sessions_member_tag', table_name='web_sessions')
    op.drop_table('web_sessions')
    op.drop_index('ix_web_links_expires_at', table_name='web_links')
    op.drop_index('ix_web_links_member_tag', table_name='web_links')
    op.drop_table('web_links')
