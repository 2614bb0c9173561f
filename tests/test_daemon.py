"""`coc-mail serve` at start-up waits for a database that is not there yet, one log line per
try, and gives up after storage.connect_timeout_seconds with a clear error, never a traceback."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.helpers import Daemon, Forwarder, free_port, make_report

PASSWORD = "p@ss:w/rd%40#?"  # every character a URL gives a meaning to


@pytest.mark.postgres
def test_serve_waits_for_postgresql_then_takes_a_report(tmp_path: Path, pg_url: str) -> None:
    target = make_url(pg_url)
    forwarder = Forwarder((target.host or "127.0.0.1", target.port or 5432))
    # The daemon is pointed at the forwarder's port, where nothing listens until the daemon
    # has logged a refused try (however slow the machine is to start it), and a second more;
    # its password (trust authentication ignores it) must not break the URL.
    url = target.set(port=forwarder.port).render_as_string(hide_password=False)
    d = Daemon(tmp_path, url, extra={"storage": {"connect_timeout_seconds": 60}},
               environ={"COC_MAIL_DATABASE_PASSWORD": PASSWORD})
    d.write()
    cancelled = threading.Event()
    opened: list[float] = []

    def open_after_a_refusal() -> None:
        while not cancelled.wait(0.05):
            if "not reachable yet (attempt" in d.log_text():
                if not cancelled.wait(1.0):
                    opened.append(time.monotonic())
                    forwarder.start()
                return

    later = threading.Thread(target=open_after_a_refusal, daemon=True)
    later.start()
    try:
        d.start()
        assert opened  # it was ready only once the database could be reached
        log = d.log_text()
        tries = [line for line in log.splitlines() if "not reachable yet (attempt" in line]
        assert tries and "(attempt 1: " in tries[0] and "Connection refused" in tries[0]
        assert f"127.0.0.1:{forwarder.port}" in tries[0] and PASSWORD not in log
        assert "Traceback" not in log
        assert "database" in log and "reachable (attempt" in log
        d.send(make_report())
        d.wait_delivered(4)  # three members and the acknowledgment
        healthy = d.cli("healthcheck")
        assert healthy.stdout.startswith("healthy: SMTP ")
        forwarder.stop()  # the database goes away while the daemon runs
        sick = d.cli("healthcheck", check=False)
        assert sick.returncode == 1
        assert sick.stderr.startswith(f"unhealthy: database postgresql+psycopg://postgres:***@"
                                      f"127.0.0.1:{forwarder.port}/")
        assert len(sick.stderr.strip().splitlines()) == 1
    finally:
        cancelled.set()
        later.join(5)
        d.stop()
        forwarder.stop()


def test_serve_gives_up_when_the_database_never_comes(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there, and nothing will
    d = Daemon(tmp_path, f"postgresql+psycopg://coc@127.0.0.1:{port}/coc",
               extra={"storage": {"connect_timeout_seconds": 3}})
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "coc_mail", "--config", str(d.config), "serve"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, env=d.env())
    took = time.monotonic() - began
    assert proc.returncode == 1
    assert 3 <= took < 20
    assert "Traceback" not in proc.stderr
    tries = [line for line in proc.stderr.splitlines() if "not reachable yet (attempt" in line]
    assert len(tries) >= 2 and all(f"127.0.0.1:{port}" in line for line in tries)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"coc-mail: database postgresql+psycopg://coc@127.0.0.1:{port}/coc "
                           "not reachable after ")
    assert "in 3 s: " in last and "Connection refused" in last
    assert "storage.connect_timeout_seconds" in last
    assert not (tmp_path / "var" / "coc-mail.pid").exists()


@pytest.mark.postgres
def test_a_final_refusal_is_not_waited_for(tmp_path: Path, pg_url: str) -> None:
    missing = make_url(pg_url).set(database="coc_no_such_database")
    d = Daemon(tmp_path, missing.render_as_string(hide_password=False),
               extra={"storage": {"connect_timeout_seconds": 30}})
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "coc_mail", "--config", str(d.config), "serve"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, env=d.env())
    assert proc.returncode == 1 and time.monotonic() - began < 10
    assert "Traceback" not in proc.stderr
    assert 'database "coc_no_such_database" does not exist' in proc.stderr.splitlines()[-1]
