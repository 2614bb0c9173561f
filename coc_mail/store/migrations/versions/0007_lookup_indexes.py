"""Indexes for what the web view asks on every page: a member's own standing rows, and the
newest cases first (without them both were whole-table scans, and the newest-first one read
every case's row past its sealed report).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 19:00:00
"""

from __future__ import annotations

from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_case_members_member_tag', 'case_members', ['member_tag'])
    op.create_index('ix_cases_opened_at', 'cases', ['opened_at'])


def downgrade() -> None:
    op.drop_index('ix_cases_opened_at', table_name='cases')
    op.drop_index('ix_case_members_member_tag', table_name='case_members')
