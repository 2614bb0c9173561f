"""Fixtures: real daemons on loopback, SQLite files, and PostgreSQL when it is there."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Daemon, web_daemon

PG_ENV = "COC_MAIL_TEST_PG"
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _pg_admin_url() -> tuple[str | None, str]:
    url = os.environ.get(PG_ENV)
    if not url:
        return None, f"${PG_ENV} is not set (e.g. {PG_DEFAULT}); .ci/run sets it"
    try:
        import psycopg

        plain = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(plain, connect_timeout=3):
            pass
    except Exception as exc:  # noqa: BLE001
        return None, f"PostgreSQL at {url} is not reachable: {exc}"
    return url, ""


@pytest.fixture(scope="session")
def pg_admin() -> str | None:
    return _pg_admin_url()[0]


def _fresh_pg_database(admin_url: str) -> tuple[str, str]:
    import psycopg

    name = "coc_test_" + secrets.token_hex(6)
    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    return f"{base}/{name}", name


def _drop_pg_database(admin_url: str, name: str) -> None:
    import psycopg

    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that asks for it runs twice: on a SQLite file and on a fresh PostgreSQL db."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/var/coc-mail.db"
        return
    admin, reason = _pg_admin_url()
    if admin is None:
        pytest.skip(reason)
    url, name = _fresh_pg_database(admin)
    try:
        yield url
    finally:
        _drop_pg_database(admin, name)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database (dropped afterwards); skips where PostgreSQL is absent."""
    admin, reason = _pg_admin_url()
    if admin is None:
        pytest.skip(reason)
    url, name = _fresh_pg_database(admin)
    try:
        yield url
    finally:
        _drop_pg_database(admin, name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/var/coc-mail.db"


@pytest.fixture
def daemon(tmp_path: Path, database_url: str) -> Iterator[Daemon]:
    """A started daemon delivering into a Maildir, on SQLite and on PostgreSQL."""
    d = Daemon(tmp_path, database_url)
    d.start()
    yield d
    d.stop()


@pytest.fixture
def sqlite_daemon(tmp_path: Path, sqlite_url: str) -> Iterator[Daemon]:
    """A started daemon on SQLite only (for behaviour that does not depend on the engine)."""
    d = Daemon(tmp_path, sqlite_url)
    d.start()
    yield d
    d.stop()


@pytest.fixture
def web(tmp_path: Path, sqlite_url: str) -> Iterator[Daemon]:
    """A started daemon with the web view, in notice mode, on SQLite."""
    d = web_daemon(tmp_path, sqlite_url)
    d.start()
    yield d
    d.stop()
