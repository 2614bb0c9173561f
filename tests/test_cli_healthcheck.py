"""`coc-mail healthcheck` (the Docker image's HEALTHCHECK): exit 0 when the daemon greets
over SMTP and its database answers; 1 with a one-line reason otherwise."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from tests.helpers import Daemon, Relay, free_port


def test_a_running_daemon_is_healthy_and_a_stopped_one_is_not(sqlite_daemon: Daemon) -> None:
    d = sqlite_daemon
    ok = d.cli("healthcheck")
    assert ok.stdout == f"healthy: SMTP 127.0.0.1:{d.port} answers 220, database answers\n"
    assert "Traceback" not in d.log_text()
    d.stop()
    down = d.cli("healthcheck", check=False)
    assert down.returncode == 1
    assert down.stderr == f"unhealthy: SMTP 127.0.0.1:{d.port}: Connection refused\n"


def test_a_listener_without_its_database_is_unhealthy(tmp_path: Path) -> None:
    relay = Relay().start()  # something greets with 220 on server.listen; the database is gone
    dead = free_port()
    d = Daemon(tmp_path, f"postgresql+psycopg://coc@127.0.0.1:{dead}/coc", port=relay.port)
    try:
        result = d.cli("healthcheck", check=False)
    finally:
        relay.stop()
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"unhealthy: database postgresql+psycopg://coc@127.0.0.1:{dead}/coc: ")
    assert "Connection refused" in lines[0]
    assert relay.messages == []  # the probe sends no mail

    d.database = f"sqlite:///{tmp_path}/var/none.db"
    relay = Relay(d.port).start()
    d.write()
    try:
        missing = d.cli("healthcheck", check=False)
    finally:
        relay.stop()
    assert missing.returncode == 1 and missing.stderr.endswith("/var/none.db: the file does "
                                                               "not exist\n")
    assert not (tmp_path / "var" / "none.db").exists()  # the probe created nothing


def test_a_refusing_greeting_is_unhealthy(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def greet() -> None:
        conn, _ = server.accept()
        conn.sendall(b"421 mx.example.org too busy\r\n")
        conn.close()

    threading.Thread(target=greet, daemon=True).start()
    d = Daemon(tmp_path, f"sqlite:///{tmp_path}/var/coc-mail.db", port=port)
    result = d.cli("healthcheck", "--timeout", "3", check=False)
    server.close()
    assert result.returncode == 1
    assert result.stderr == f"unhealthy: SMTP 127.0.0.1:{port}: greeting 421, not 220\n"


def test_help_says_what_healthy_means(tmp_path: Path) -> None:
    d = Daemon(tmp_path, f"sqlite:///{tmp_path}/var/coc-mail.db")
    text = d.cli("healthcheck", "--help").stdout
    assert "220 greeting" in text and "database answers a query" in text
    assert "exit 1 with a one-line reason" in text and "--timeout SECONDS" in text
    listed = d.cli("--help").stdout
    assert "healthcheck" in listed
