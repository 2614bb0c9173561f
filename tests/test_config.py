"""Configuration: every error names the key and its line; the daemon refuses to start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from coc_mail import config
from coc_mail.errors import ConfigError

GOOD = """\
[committee]
name = "Committee"
address = "conduct@example.org"

[[members]]
name = "Ada Example"
email = "ada@example.net"

[[members]]
name = "Grace Sample"
email = "grace@example.net"
handle = "gs"
roles = ["triage"]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        config.parse(text, "test.toml")
    return err.value.problems


def test_the_example_config_is_valid() -> None:
    settings = config.load(Path(__file__).parent.parent / "config" / "coc-mail.toml")
    assert settings.committee.domain == "example.org"
    assert [m.handle for m in settings.members] == ["ada", "grace", "linus"]
    docker = config.load(Path(__file__).parent.parent / "config" / "docker.toml")
    assert docker.storage.database.startswith("postgresql")


def test_defaults() -> None:
    s = config.parse(GOOD)
    assert s.members[0].handle == "ada" and s.members[1].handle == "gs"
    assert s.server.listen == "127.0.0.1:8025"
    assert s.delivery.relay == "maildir:var/outbox"
    assert s.intake.forward == "all"


@pytest.mark.parametrize(("server", "delivery", "processes", "in_flight"), [
    ("", "", 3, 10),  # 2 cores: a processor and two deliverers, 20 relay connections in all
    ("workers = 9", "", 9, 4),  # 8 deliverers: at least 4 copies each
    ("workers = 1", "", 1, 20),  # one worker both processes and delivers: all 20
    ("workers = 3", "workers = 7", 3, 7),  # set: as set
])
def test_workers_and_copies_in_flight_follow_the_machine_unless_set(
        server: str, delivery: str, processes: int, in_flight: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    s = config.parse(GOOD + f"\n[server]\n{server}\n[delivery]\n{delivery}\n")
    assert (s.worker_count(), s.copies_in_flight()) == (processes, in_flight)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (('address = "conduct@example.org"', 'address = "conduct+x@example.org"'),
         "committee.address (line 3): the alias must not contain '+'"),
        (('email = "ada@example.net"', 'email = "ada"'),
         "members[0].email (line 7): 'ada' is not a plain address"),
        (('handle = "gs"', 'handle = "G S"'), "members[1] (line 9): handle 'G S' must be"),
        (('handle = "gs"', 'handle = "reporter"'), "members[1] (line 9): handle 'reporter' is "
         "reserved"),
        (('roles = ["triage"]', 'roles = ["boss"]'), "members[1].roles[0] (line 13)"),
        (('[[members]]\nname = "Grace', '[[members]]\ncolour = "red"\nname = "Grace'),
         "members[1].colour (line 10): unknown key"),
        (('name = "Committee"\n', ''), "committee.name (line 1): required key is missing"),
    ],
)
def test_errors_name_key_and_line(edit: tuple[str, str], expected: str) -> None:
    text = GOOD.replace(*edit)
    found = problems(text)
    assert any(p.startswith(expected) for p in found), found


def test_section_errors() -> None:
    found = problems(GOOD + '\n[server]\nlisten = "nowhere"\nmax_message_bytes = -1\n')
    assert any(p.startswith("server.listen (line 16)") for p in found)
    assert any(p.startswith("server.max_message_bytes (line 17)") for p in found)
    found = problems(GOOD + '\n[delivery]\nrelay = "ftp://x"\n')
    assert any("delivery.relay (line 16)" in p and "maildir:PATH" in p for p in found)
    found = problems(GOOD.replace('roles = ["triage"]', "") + '\n[intake]\nforward = "triage"\n')
    assert any("no member has roles" in p for p in found)


def test_duplicate_handles_and_emails() -> None:
    text = GOOD + '\n[[members]]\nname = "Ada Other"\nemail = "other@example.net"\n'
    assert any("share the handle 'ada'" in p for p in problems(text))
    text = GOOD + '\n[[members]]\nname = "Zed"\nemail = "ADA@example.net"\n'
    assert any("share ada@example.net" in p for p in problems(text))


def test_toml_syntax_error_has_line() -> None:
    found = problems(GOOD + "\n[server\n")
    assert found[0].startswith("TOML syntax:") and "line 15" in found[0]


def test_daemon_refuses_to_start_on_a_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(GOOD.replace('email = "ada@example.net"', 'email = "nope"'))
    result = subprocess.run(
        [sys.executable, "-m", "coc_mail", "--config", str(cfg), "serve"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "members[0].email (line 7)" in result.stderr
    assert not (tmp_path / "var").exists(), "nothing created on a bad config"
    missing = subprocess.run(
        [sys.executable, "-m", "coc_mail", "--config", str(tmp_path / "nope.toml"), "check"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert missing.returncode == 1 and "file not found" in missing.stderr


def test_the_database_password_comes_apart_from_the_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlalchemy.engine import make_url

    pg = GOOD + '\n[storage]\ndatabase = "postgresql+psycopg://coc@db:5432/coc"\n'
    monkeypatch.delenv(config.ENV_DATABASE, raising=False)
    monkeypatch.delenv(config.ENV_DATABASE_PASSWORD, raising=False)
    s = config.parse(pg)
    assert s.database_url == "postgresql+psycopg://coc@db:5432/coc"
    assert s.storage.connect_timeout_seconds == 60
    password = "p@ss:w/rd%40#?&= x"  # each of these means something in a URL
    monkeypatch.setenv(config.ENV_DATABASE_PASSWORD, password)
    url = make_url(config.parse(pg).database_url)
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "coc", password, "db", 5432, "coc")
    # $COC_MAIL_DATABASE still replaces the whole URL; the password is set into it too.
    monkeypatch.setenv(config.ENV_DATABASE, "postgresql+psycopg://other:old@pg.internal/x")
    url = make_url(config.parse(pg).database_url)
    assert (url.username, url.password, url.host, url.database) == (
        "other", password, "pg.internal", "x")
    monkeypatch.delenv(config.ENV_DATABASE_PASSWORD)
    assert config.parse(pg).database_url == "postgresql+psycopg://other:old@pg.internal/x"
    # SQLite has no password: the variable does not touch its URL.
    monkeypatch.delenv(config.ENV_DATABASE)
    monkeypatch.setenv(config.ENV_DATABASE_PASSWORD, password)
    assert config.parse(GOOD).database_url == "sqlite:///var/coc-mail.db"
    monkeypatch.setenv(config.ENV_DATABASE, "postgresql+psycopg://coc@db:notaport/coc")
    with pytest.raises(ConfigError) as err:
        config.parse(pg).database_url  # noqa: B018
    assert "is not a URL like postgresql+psycopg://user@host/db" in str(err.value)
    assert password not in str(err.value)


def test_connect_timeout_seconds_is_checked() -> None:
    found = problems(GOOD + "\n[storage]\nconnect_timeout_seconds = -1\n")
    assert any(p.startswith("storage.connect_timeout_seconds (line 16)") for p in found)
    assert config.parse(GOOD + "\n[storage]\nconnect_timeout_seconds = 0\n"
                        ).storage.connect_timeout_seconds == 0
