"""Worker processes: supervised by the main process, gone with it, and the incoming queue's
own SQLite file never applies a message twice."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path

import sqlalchemy as sa

from coc_mail.mail.message import Envelope
from coc_mail.store.crypto import load_keyring
from tests.helpers import ALIAS, Daemon, make_report, wait_for, wire


def workers_of(d: Daemon) -> list[int]:
    """The worker processes: the main process's children that say they are (the forker is
    a child too)."""
    assert d.proc is not None
    pid = d.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"worker" in cmdline(int(c))]


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""


def forker_of(d: Daemon) -> int:
    assert d.proc is not None
    pid = d.proc.pid
    found = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
             if cmdline(int(c)).startswith(b"coc-mail: forker")]
    assert len(found) == 1, "one forker beside the workers"
    return found[0]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def expected(d: Daemon) -> int:
    counts = re.findall(r"\((\d+) worker processes\)", d.log_text())
    assert counts, "the ready line names the worker count"
    return int(counts[-1])  # of the latest start


def started(d: Daemon) -> list[int]:
    n = expected(d)
    pids: list[int] = wait_for(lambda: len(workers_of(d)) == n and workers_of(d), 10,
                               f"{n} workers")
    return pids


def cases(d: Daemon) -> list[str]:
    return d.cli("cases").stdout.splitlines()[1:]


def test_a_worker_that_dies_is_restarted_and_mail_keeps_flowing(sqlite_daemon: Daemon) -> None:
    d = sqlite_daemon
    d.stop()
    d.extra = {"server": {"workers": 0}}  # the default: a processor and one deliverer per core
    d.write()
    d.start()
    first = started(d)
    assert len(first) >= 2, "a processor and at least one delivery worker"
    for pid in first:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: d.log_text().count("restarting it") >= len(first), 10, "restarts logged")
    wait_for(lambda: len(workers_of(d)) == len(first) and set(workers_of(d)).isdisjoint(first),
             10, "new workers")
    d.send(make_report())
    d.wait_delivered(4)


def test_workers_are_forked_and_started_as_programs_once_the_forker_is_gone(
    sqlite_daemon: Daemon,
) -> None:
    d = sqlite_daemon
    first = started(d)
    assert [cmdline(p).rstrip(b"\0") for p in first] == [b"coc-mail: worker 0 (processing)",
                                                          b"coc-mail: worker 1 (delivery)"]
    forker = forker_of(d)
    os.kill(forker, signal.SIGKILL)
    os.kill(first[1], signal.SIGKILL)  # the delivery worker
    wait_for(lambda: "workers are started as programs from now on" in d.log_text(), 10,
             "the forker's absence noticed")
    again = started(d)
    assert again[0] == first[0] and again[1] != first[1]
    assert b"\0worker\x001\x00--wake-fd" in cmdline(again[1]), "started as a program"
    wait_for(lambda: not Path(f"/proc/{forker}").exists(), 5, "the dead forker reaped")
    d.send(make_report())
    d.wait_delivered(4)
    d.stop()
    assert not any(alive(p) for p in again)
    assert "Traceback" not in d.log_text()


def fd_targets(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            found.add(os.readlink(fd))
    return found


def test_forked_processes_hold_nothing_the_invoker_left_open(sqlite_daemon: Daemon) -> None:
    """A descriptor the daemon inherits (a supervisor's pipe) stays in the main process: the
    forker and the workers forked from it close it, as a worker started as a program never
    had it."""
    d = sqlite_daemon
    d.stop()
    r, w = os.pipe()
    try:
        d.pass_fds = (r,)
        d.start()
        workers = started(d)
        pipe = os.readlink(f"/proc/self/fd/{r}")
        assert d.proc is not None and pipe in fd_targets(d.proc.pid)
        for pid in [forker_of(d), *workers]:
            assert pipe not in fd_targets(pid), cmdline(pid)
        d.send(make_report())
        d.wait_delivered(4)
    finally:
        os.close(r)
        os.close(w)


def test_workers_go_with_a_killed_main_process_and_the_next_start_works(
    sqlite_daemon: Daemon,
) -> None:
    d = sqlite_daemon
    pids = [*started(d), forker_of(d)]
    d.kill()
    wait_for(lambda: not any(alive(p) for p in pids), 10, "orphaned workers and forker to exit")
    d.start()  # takes the SQLite lock the workers held
    d.send(make_report())
    d.wait_delivered(4)


def _queue_by_hand(d: Daemon, uid: str, *, applied: bool) -> None:
    """Put a sealed message in the incoming file as the intake would, with ``applied`` marking
    it processed in the main file (as after a crash between the two commits)."""
    keys, _ = load_keyring(str(d.var / "secret.key"))
    envelope = Envelope("reporter@example.com", [ALIAS], "127.0.0.1").to_json()
    content = wire(make_report(subject=f"by hand {uid}"))
    incoming = sa.create_engine(f"sqlite:///{d.var}/coc-mail.incoming.db")
    with incoming.begin() as c:
        c.execute(sa.text(
            "INSERT INTO inbound (uid, received_at, envelope, content, attempts, shunted) "
            "VALUES (:uid, CURRENT_TIMESTAMP, :e, :c, 0, 0)"),
            {"uid": uid, "e": keys.seal(envelope, "inbound.envelope"),
             "c": keys.seal(content, "inbound.content")})
    if applied:
        main = sa.create_engine(f"sqlite:///{d.var}/coc-mail.db")
        with main.begin() as c:
            c.execute(sa.text("INSERT INTO processed_inbound (uid, at) "
                              "VALUES (:uid, CURRENT_TIMESTAMP)"), {"uid": uid})


def _incoming_rows(d: Daemon) -> int:
    incoming = sa.create_engine(f"sqlite:///{d.var}/coc-mail.incoming.db")
    with incoming.connect() as c:
        return int(c.execute(sa.text("SELECT count(*) FROM inbound")).scalar() or 0)


def test_a_message_applied_before_a_crash_is_not_applied_again(sqlite_daemon: Daemon) -> None:
    d = sqlite_daemon
    d.stop()
    _queue_by_hand(d, "applied-already", applied=True)
    _queue_by_hand(d, "not-yet", applied=False)
    d.start()
    wait_for(lambda: _incoming_rows(d) == 0, 20, "the incoming file emptied")
    d.wait_delivered(4)  # the one not applied yet: 3 members + acknowledgment
    time.sleep(0.5)
    assert len(cases(d)) == 1
    assert "1 message(s) already applied" in d.log_text()


def test_messages_left_in_the_main_file_by_an_older_version_are_moved_and_processed(
    sqlite_daemon: Daemon,
) -> None:
    d = sqlite_daemon
    d.stop()
    keys, _ = load_keyring(str(d.var / "secret.key"))
    envelope = Envelope("reporter@example.com", [ALIAS], "127.0.0.1").to_json()
    main = sa.create_engine(f"sqlite:///{d.var}/coc-mail.db")
    with main.begin() as c:
        c.execute(sa.text(
            "INSERT INTO inbound (received_at, envelope, content, attempts, shunted) "
            "VALUES (CURRENT_TIMESTAMP, :e, :c, 0, 0)"),
            {"e": keys.seal(envelope, "inbound.envelope"),
             "c": keys.seal(wire(make_report()), "inbound.content")})
    d.start()
    d.wait_delivered(4)
    assert "1 incoming message(s) moved" in d.log_text()
    with main.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM inbound")).scalar() == 0
    assert len(cases(d)) == 1
