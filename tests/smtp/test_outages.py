"""Outages: a full disk gives 452 and a stopped database 451 — never 250 for what could not be
stored — and the daemon recovers by itself when they pass."""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Daemon, free_port, make_report, wait_for

PG_BIN = Path("/usr/lib/postgresql")


def try_send(d: Daemon, subject: str) -> int:
    try:
        d.send(make_report(subject=subject))
    except smtplib.SMTPDataError as exc:
        return exc.smtp_code
    return 250


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a tmpfs mount, which needs root")
    # 16 MiB: the daemon's two SQLite files and their WAL journals fit with room to spare
    # (at 4 MiB they could fill it before the test did, and the filler could not be created)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_gives_452_and_recovers(tmp_path: Path, small_disk: Path) -> None:
    d = Daemon(tmp_path, f"sqlite:///{small_disk}/coc-mail.db")
    d.start()
    try:
        assert try_send(d, "before") == 250
        d.wait_delivered(4)
        filler = small_disk / "filler"
        try:  # fill the disk
            with filler.open("wb") as fh:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
        except OSError:
            pass
        codes = [try_send(d, f"full {i}") for i in range(5)]
        assert 452 in codes, codes
        assert all(c in (250, 452) for c in codes), codes
        accepted_while_full = codes.count(250)
        filler.unlink()
        assert try_send(d, "after") == 250
        d.wait_delivered(4 * (2 + accepted_while_full), timeout=60)
        assert d.proc is not None and d.proc.poll() is None, "no crash"
    finally:
        d.stop()


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[tuple[str, Path, int]]:
    versions = sorted(PG_BIN.glob("*/bin/initdb")) if PG_BIN.exists() else []
    if not versions or os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs PostgreSQL's initdb and root (to run it as the postgres user)")
    bindir = versions[-1].parent
    home = Path(tempfile.mkdtemp(prefix="coc-pg-"))  # outside pytest's 0700 tree
    home.chmod(0o755)
    data = home / "data"
    data.mkdir()
    shutil.chown(data, "postgres", "postgres")
    port = free_port()
    subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "initdb"), "-D", str(data),
                    "--auth=trust", "-U", "postgres"], check=True, capture_output=True)

    def ctl(*args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "pg_ctl"), "-D",
                        str(data), "-w", *args], check=True, capture_output=True)

    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    ctl("-o", options, "-l", str(data / "log"), "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", data, port
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "pg_ctl"), "-D",
                        str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_database_down_gives_451_and_recovers(
    tmp_path: Path, private_postgres: tuple[str, Path, int]
) -> None:
    url, data, port = private_postgres
    bindir = sorted(PG_BIN.glob("*/bin/pg_ctl"))[-1].parent
    d = Daemon(tmp_path, url)
    d.start()

    def pg(*args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "pg_ctl"), "-D",
                        str(data), "-w", *args], check=True, capture_output=True)

    try:
        assert try_send(d, "before") == 250
        d.wait_delivered(4)
        pg("-m", "fast", "stop")
        codes = [try_send(d, f"down {i}") for i in range(3)]
        assert codes == [451, 451, 451], codes
        pg("-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "-l",
           str(data / "log"), "start")
        wait_for(lambda: try_send(d, "after") == 250, 30, "intake back without a restart")
        d.wait_delivered(8, timeout=60)
        assert d.proc is not None and d.proc.poll() is None
    finally:
        d.stop()
