"""Engines (SQLite in WAL mode or PostgreSQL), the incoming queue's file, migrations, key check."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

from coc_mail.errors import CocMailError, StorageKeyError, StoreUnavailable
from coc_mail.store import writelock
from coc_mail.store.tables import Meta

log = logging.getLogger(__name__)
CONNECT_SECONDS = 10  # one connection attempt to PostgreSQL (libpq's connect_timeout)
POOL_SIZE = 8  # connections kept open per process (a thread beyond them opens and drops one)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # a commit is on disk before we say 250
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL + synchronous=FULL, its directory is created,
    and its writers take turns through a lock file (:mod:`coc_mail.store.writelock`)."""
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        connect_args: dict[str, Any] = {"check_same_thread": False, "timeout": 10}
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            connect_args["factory"] = writelock.connection_class(path)  # writers take turns
        engine = sa.create_engine(
            url,
            connect_args=connect_args,
            pool_size=POOL_SIZE,
            hide_parameters=True,  # errors never quote values into logs
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    parsed = sa.engine.make_url(url)
    args = {} if "connect_timeout" in parsed.query else {"connect_timeout": CONNECT_SECONDS}
    return sa.create_engine(
        url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=8, hide_parameters=True,
        connect_args=args,
    )


# A server that answers but is not ready yet says so ("the database system is starting up",
# "... is shutting down", "... is in recovery mode", "... is not yet accepting connections");
# one that does not answer (refused, no route, its host name not yet in DNS) may come. Any
# other answer (a wrong password, no such database) is final: waiting does not help.
_NOT_YET = ("starting up", "shutting down", "in recovery mode", "not yet accepting")


def _final(reason: str) -> bool:
    return "FATAL:" in reason and not any(words in reason for words in _NOT_YET)


def wait_for_database(engine: Engine, seconds: float) -> None:
    """Start-up: connect, retrying for up to ``seconds`` while the server is not there yet,
    one log line per attempt; then raise :class:`StoreUnavailable` saying why. SQLite is
    never waited for (a file that cannot be opened will not appear by waiting)."""
    where = engine.url.render_as_string(hide_password=True)
    if engine.url.get_backend_name() == "sqlite":
        return
    deadline = time.monotonic() + seconds
    attempt = 0
    pause = 1.0
    while True:
        attempt += 1
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except sa.exc.DBAPIError as exc:
            reason = _reason(exc)
            left = deadline - time.monotonic()
            if _final(reason):
                raise StoreUnavailable(f"database {where}: {reason}") from None
            if left <= 0:
                raise StoreUnavailable(
                    f"database {where} not reachable after {attempt} attempt(s) in "
                    f"{seconds:g} s: {reason} (storage.connect_timeout_seconds sets how long "
                    "start-up waits)"
                ) from None
            log.warning("database %s not reachable yet (attempt %d: %s); retrying for %d s more",
                        where, attempt, reason, max(1, round(left)))
            time.sleep(min(pause, max(left, 0.1)))
            pause = min(pause * 1.5, 5.0)
            continue
        if attempt > 1:
            log.info("database %s reachable (attempt %d)", where, attempt)
        return


def _reason(exc: sa.exc.DBAPIError) -> str:
    """The driver's message on one line: its last meaningful line says what went wrong."""
    lines = [line.strip() for line in str(exc.orig).splitlines() if line.strip()]
    hints = ("Is the server running", "HINT:")
    kept = [line for line in lines if not line.startswith(hints)] or lines or [type(exc).__name__]
    return " ".join(kept[-1].removeprefix("connection failed: ").split())


def incoming_url(url: str) -> str | None:
    """Where the incoming queue lives: for a SQLite file ``x.db``, ``x.incoming.db`` beside
    it; None (the main database) for PostgreSQL and in-memory SQLite."""
    if not url.startswith("sqlite"):
        return None
    parsed = sa.engine.make_url(url)
    path = parsed.database
    if not path or path == ":memory:":
        return None
    p = Path(path)
    return parsed.set(database=str(p.with_name(f"{p.stem}.incoming{p.suffix or '.db'}"))
                      ).render_as_string(hide_password=False)


def make_incoming(url: str, main: Engine) -> Engine:
    """The incoming queue's engine (``main`` itself unless :func:`incoming_url` says
    otherwise); a separate SQLite file gets its one table created."""
    separate = incoming_url(url)
    if separate is None:
        return main
    engine = make_engine(separate)
    SQLModel.metadata.create_all(engine, tables=[SQLModel.metadata.tables["inbound"]])
    return engine


SCHEMA_HEAD = "0007"  # the newest migration; tests/store/test_migrations.py keeps them in step


def check_schema(engine: Engine) -> None:
    """For commands that do not migrate: refuse a database that is not at SCHEMA_HEAD."""
    try:
        with engine.connect() as conn:
            current = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except sa.exc.DBAPIError:
        current = None
    if current != SCHEMA_HEAD:
        raise CocMailError(
            f"the database schema is at {current or 'nothing'}, this coc-mail needs "
            f"{SCHEMA_HEAD}: start `coc-mail serve` once to create or upgrade it"
        )


def migrate(engine: Engine, keys: Any = None) -> None:
    """Bring the schema to the newest revision (Alembic); safe to run on every start. The
    keyring is given to migrations that seal values stored in clear by older releases."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        cfg.attributes["keys"] = keys
        command.upgrade(cfg, "head")


KEY_CHECK = b"coc-mail key check v1"


def check_key(engine: Engine, keys: Any, *, before_migrations: bool = False) -> None:
    """Refuse a storage key that is not the one this database was written with. Before
    migrations (which may seal old values with it) only an existing check value is read."""
    if before_migrations and not sa.inspect(engine).has_table("meta"):
        return
    with Session(engine) as session:
        row = session.get(Meta, "key_check")
        if row is None and before_migrations:
            return
        if row is None:
            session.add(Meta(key="key_check", value=keys.seal(KEY_CHECK, "meta.key_check")))
            session.commit()
            return
        try:
            ok = keys.open(row.value, "meta.key_check") == KEY_CHECK
        except StorageKeyError:
            ok = False
        if not ok:
            raise StorageKeyError(
                "the storage key does not open this database: restore the key file that was "
                "used when it was created (or set COC_MAIL_KEY to it)"
            )
