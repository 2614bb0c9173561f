"""Alembic environment: runs migrations on the connection coc-mail hands it."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from coc_mail import store  # noqa: F401 - registers the tables on SQLModel.metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic` run by hand: use the URL given with -x url=...
    import sqlalchemy as sa

    url = context.get_x_argument(as_dictionary=True).get("url", "sqlite:///var/coc-mail.db")
    connection = sa.create_engine(url).connect()

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
