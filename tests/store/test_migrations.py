"""The upgrade path: databases made by earlier releases open, keep their cases, and are sealed
where SPEC 9 asks (on SQLite, and on PostgreSQL with COC_MAIL_TEST_PG)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import text
from sqlmodel import Session

from coc_mail import store
from coc_mail.cases import audit, document
from coc_mail.cases.standing import STATE
from coc_mail.store.crypto import Keyring


def test_schema_upgrade_keeps_cases(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    from coc_mail import store

    url = f"sqlite:///{tmp_path}/old.db"
    engine = store.make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(store.__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.exec_driver_sql(
            "INSERT INTO cases (code_name, status, opened_at, updated_at, reporter_key) "
            "VALUES ('home shelf', 'New', '2026-01-01 10:00:00', '2026-01-01 10:00:00', 'x')"
        )
    store.migrate(engine)
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(cfg).get_current_head() == store.SCHEMA_HEAD
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT code_name, reminders FROM cases").all() == [
            ("home shelf", "")]
        assert conn.exec_driver_sql("SELECT name FROM code_names").all() == [("home shelf",)]


def test_an_old_database_is_sealed_on_upgrade(database_url: str, tmp_path: Path) -> None:
    """A database made by the release before (schema 0004: standings, audit actions and
    section names in clear) opens, and afterwards holds them sealed."""
    from alembic import command
    from alembic.config import Config

    keys = Keyring(b"k" * 32)
    engine = store.make_engine(database_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(store.__file__).parent / "migrations"))
    at = dt.datetime(2026, 11, 30, 10, 0, tzinfo=dt.UTC)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
        conn.execute(text("INSERT INTO cases (id, code_name, status, opened_at, updated_at, "
                          "reporter_key, reminders, purge_warned) VALUES (1, 'home shelf', "
                          "'Ongoing', :at, :at, 'x', '', false)"), {"at": at})
        conn.execute(text("INSERT INTO case_members (case_id, member_tag, state, updated_at, "
                          "reminded) VALUES (1, 'tag-ada', 'cleared', :at, false)"), {"at": at})
        prev = audit.GENESIS
        for n, action in enumerate(("case opened (New)", "member cleared (no conflict)")):
            digest = audit._digest(prev, "home shelf", at.isoformat(), "ada", action)
            conn.execute(text("INSERT INTO audit_log (id, code_name, at, actor, action, "
                              "prev_hash, hash) VALUES (:id, 'home shelf', :at, :actor, "
                              ":action, :prev, :hash)"),
                         {"id": n + 1, "at": at, "actor": keys.seal_text("ada", "audit_log.actor"),
                          "action": action, "prev": prev, "hash": digest})
            prev = digest
        conn.execute(text("INSERT INTO doc_entries (id, case_id, section, entry_date, created_at, "
                          "author, body) VALUES (1, 1, 'organizers', :day, :at, :author, :body)"),
                     {"day": at.date(), "at": at,
                      "author": keys.seal_text("Ada", "doc_entries.author"),
                      "body": keys.seal_text("Spoke to them.", "doc_entries.body")})
    store.migrate(engine, keys)
    with engine.connect() as conn:
        for table, column in (("case_members", "state"), ("audit_log", "action"),
                              ("doc_entries", "section")):
            values = conn.execute(text(f"SELECT {column} FROM {table}")).scalars().all()
            assert values and all(bytes(v)[:1] == b"\x02" for v in values), table  # padded
        assert keys.open_text(bytes(conn.execute(text(
            "SELECT state FROM case_members")).scalar_one()), STATE) == "cleared"
    with Session(engine) as session:
        lines, intact = audit.verify(keys, session, "home shelf")
        assert intact and [x.action for x in lines][1] == "member cleared (no conflict)"
        case = session.get(store.Case, 1)
        assert case is not None
        assert "Spoke to them." in document.render(keys, session, case)
    with engine.begin() as conn:  # and back: the release before reads its database again
        cfg.attributes["connection"], cfg.attributes["keys"] = conn, keys
        command.downgrade(cfg, "0004")
        assert conn.execute(text("SELECT state FROM case_members")).scalar_one() == "cleared"
        first_actor = conn.execute(text("SELECT actor FROM audit_log")).scalars().first()
        assert first_actor is not None
        actor = bytes(first_actor)
        assert actor[:1] == b"\x01" and keys.open_text(actor, "audit_log.actor") == "ada"
    store.migrate(engine, keys)
    engine.dispose()


def test_the_migrations_make_the_schema_the_models_describe(database_url: str) -> None:
    """Upgraded to head, the database has every table, column and index of
    :mod:`coc_mail.store.tables` and nothing else (alembic's own comparison, as
    ``alembic check`` makes it): a model changed without its migration fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    engine = store.make_engine(database_url)
    store.migrate(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []
