"""Durable delivery: relay outages, crashes after 250, and no plaintext left behind."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers import ALIAS, Daemon, Relay, free_port, make_report, wait_for


def test_relay_down_then_back(tmp_path: Path, database_url: str) -> None:
    relay = Relay(free_port())  # nothing listens there yet
    d = Daemon(tmp_path, database_url, relay=relay.url)
    d.start()
    try:
        d.send(make_report())
        wait_for(lambda: "deferred" in d.log_text(), 20, "a deferral")
        queue = d.cli("queue")
        assert "4 copies waiting" in queue.stderr
        relay.start()
        d.cli("queue", "--flush")
        wait_for(lambda: len(relay.messages) == 4, 30, "delivery after the relay came back")
        assert sorted(relay.recipients()) == [
            "ada@example.net", "grace@example.net", "linus@example.net", "reporter@example.com"]
        for mail_from, _, _ in relay.messages:
            assert mail_from.startswith("conduct+b.") and mail_from.endswith("@example.org")
        wait_for(lambda: "0 copies waiting" in d.cli("queue").stderr, 10, "an empty queue")
    finally:
        d.stop()
        relay.stop()


def test_permanent_refusal_tells_the_operator(tmp_path: Path, sqlite_url: str) -> None:
    relay = Relay().start()
    relay.refuse["linus@example.net"] = "550 5.1.1 No such user"
    d = Daemon(tmp_path, sqlite_url, relay=relay.url)
    d.start()
    try:
        d.send(make_report())
        wait_for(lambda: len(relay.messages) == 4, 20, "3 copies + the operator notice")
        notice = [m for m in relay.messages if b"could not be delivered" in m[2]]
        assert len(notice) == 1 and notice[0][1] == ["ada@example.net"]
        assert b"Report body" not in notice[0][2]
    finally:
        d.stop()
        relay.stop()


def subject_of(data: bytes) -> bytes:
    line = next(x for x in data.split(b"\r\n") if x.startswith(b"Subject:"))
    return line.split(b"] ", 1)[-1]


def test_killed_after_250_every_copy_delivered_once(tmp_path: Path, database_url: str) -> None:
    """SIGKILL right after the last 250, with nothing in flight: exactly once, no loss."""
    relay = Relay(free_port())  # down while the reports come in
    d = Daemon(tmp_path, database_url, relay=relay.url)
    d.start()
    try:
        reports = 12
        for i in range(reports):
            d.send(make_report(subject=f"report {i}", sender=f"R{i} <r{i}@example.com>"),
                   sender=f"r{i}@example.com")
        d.kill()
        relay.start()
        d.start()
        expected = reports * 4
        wait_for(lambda: len(relay.messages) >= expected, 60, f"{expected} copies")
        time.sleep(1)
        counts = Counter((rcpts[0], subject_of(data)) for _, rcpts, data in relay.messages)
        assert len(relay.messages) == expected, "no duplicates"
        assert all(n == 1 for n in counts.values())
        for i in range(reports):
            assert counts[("ada@example.net", f"report {i}".encode())] == 1
        assert len(d.cli("cases").stdout.splitlines()) == reports + 1
    finally:
        d.stop()
        relay.stop()


def test_killed_during_a_burst_loses_nothing_that_got_250(
    tmp_path: Path, sqlite_url: str
) -> None:
    """SIGKILL while reports arrive and copies are being delivered. Every report that got
    250 reaches every member; a duplicate is possible only for a copy that was in flight
    (the relay said 250, the daemon died before recording it): at most two per worker
    (one being sent, one awaiting its batched deletion)."""
    relay = Relay().start()
    d = Daemon(tmp_path, sqlite_url, relay=relay.url)
    d.start()
    accepted: list[int] = []

    def sender() -> None:
        for i in range(40):
            try:
                d.send(make_report(subject=f"burst {i}", sender=f"B{i} <b{i}@example.com>"),
                       sender=f"b{i}@example.com")
                accepted.append(i)
            except OSError:  # refused or cut off: the client keeps it, not our problem
                time.sleep(0.05)

    t = threading.Thread(target=sender)
    t.start()
    try:
        wait_for(lambda: len(accepted) >= 10, 30, "ten accepted reports")
        d.kill()
        d.start()
        t.join(60)
        members = ("ada@example.net", "grace@example.net", "linus@example.net")

        def member_copies() -> Counter[tuple[str, bytes]]:
            return Counter((r[0], subject_of(data)) for _, r, data in relay.messages
                           if r[0] in members)

        wait_for(lambda: all(member_copies()[(m, f"burst {i}".encode())] >= 1
                             for i in accepted for m in members), 60, "every report delivered")
        time.sleep(1)
        copies = member_copies()
        duplicates = sum(n - 1 for n in copies.values())
        # In flight (4 workers) plus delivered and awaiting their batched deletion (up to 4).
        assert duplicates <= 8, f"{duplicates} duplicates: more than the copies in flight"
        cases = len(d.cli("cases").stdout.splitlines()) - 1
        assert len(accepted) <= cases <= 40
    finally:
        t.join(60)
        d.stop()
        relay.stop()


def test_no_plaintext_left_on_disk_or_in_logs(tmp_path: Path, sqlite_url: str) -> None:
    marker = "MARKER-7f3a9c-SECRET-REPORT-TEXT"
    reporter = "unique.reporter.4821@example.com"
    d = Daemon(tmp_path, sqlite_url)
    d.start()
    try:
        d.send(make_report(sender=f"Reporter <{reporter}>", subject=f"About {marker}",
                           body=f"{marker}\n" * 50), sender=reporter)
        d.wait_delivered(4)
        wait_for(lambda: "0 copies waiting" in d.cli("queue").stderr, 10, "an empty queue")
    finally:
        d.stop()
    needles = [marker.encode(), reporter.encode(), marker.encode("utf-16-le")]
    scanned = 0
    for path in d.var.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            scanned += 1
            for needle in needles:
                assert needle not in data, f"{needle!r} found in {path}"
    assert scanned >= 3  # database, WAL or its checkpointed pages, keys
    log = d.log.read_bytes()
    for needle in needles:
        assert needle not in log
    # and the copies really carried it (the test would be void otherwise)
    assert any(marker.encode() in p.read_bytes() for p in (d.outbox / "new").iterdir())
    assert ALIAS


def test_relay_with_starttls_and_auth(tmp_path: Path, sqlite_url: str) -> None:
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    from tests.helpers import self_signed

    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        assert isinstance(auth_data, LoginPassword)
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret")

    relay = Relay()
    controller = Controller(relay, hostname="localhost", port=relay.port,
                            server_hostname="mx.example.org", tls_context=context,
                            require_starttls=True, authenticator=authenticator,
                            auth_required=True)
    controller.start()
    d = Daemon(tmp_path, sqlite_url, relay=f"smtp://localhost:{relay.port}",
               extra={"delivery": {"username": "coc", "password_env": "RELAY_PW",
                                   "require_tls": True, "tls_ca_file": str(cert)}})
    try:
        env_pw = {"RELAY_PW": "s3cret"}
        original_env = d.env
        d.env = lambda: {**original_env(), **env_pw}  # type: ignore[method-assign]
        d.start()
        d.send(make_report())
        wait_for(lambda: len(relay.messages) == 4, 30, "4 copies through the TLS relay")
        assert logins and all(login == b"coc" for login, _ in logins)
    finally:
        d.stop()
        controller.stop()


def test_copies_that_stay_undeliverable_expire_and_the_operator_is_told(
    tmp_path: Path, sqlite_url: str
) -> None:
    relay = Relay(free_port())
    d = Daemon(tmp_path, sqlite_url, relay=relay.url,
               extra={"delivery": {"max_queue_days": 2 / 86400, "retry_seconds": 0.2}})
    d.start()
    try:
        d.send(make_report())
        wait_for(lambda: d.log_text().count("dropped: expired") >= 4, 30, "expiry")
        relay.start()
        d.cli("queue", "--flush")
        wait_for(lambda: len(relay.messages) >= 1, 30, "operator notices")
        time.sleep(1)
        assert all(rcpts == ["ada@example.net"] for _, rcpts, _ in relay.messages)
        assert all(b"could not be delivered" in data for _, _, data in relay.messages)
    finally:
        d.stop()
        relay.stop()


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelined"])
def test_relay_4xx_then_5xx_per_recipient(
    tmp_path: Path, sqlite_url: str, pipelining: bool
) -> None:
    """A refused RCPT defers (4xx) or drops (5xx) that copy alone, whether the commands went
    one at a time or as one group (RFC 2920: the DATA that follows a refused RCPT in the
    group is refused too, and the session stays in step)."""
    relay = Relay(pipelining=pipelining).start()
    relay.refuse["linus@example.net"] = "450 4.2.0 Mailbox busy"
    d = Daemon(tmp_path, sqlite_url, relay=relay.url)
    d.start()
    try:
        d.send(make_report())
        wait_for(lambda: len(relay.messages) == 3, 20, "the other copies")
        wait_for(lambda: "deferred" in d.log_text(), 20, "Linus's copy deferred")
        assert "1 copies waiting" in d.cli("queue").stderr
        relay.refuse["linus@example.net"] = "550 5.1.1 No such user"
        d.cli("queue", "--flush")
        wait_for(lambda: any(b"could not be delivered" in m[2] for m in relay.messages), 20,
                 "the operator told")
        assert "0 copies waiting" in d.cli("queue").stderr
        assert "linus@example.net" not in relay.recipients()
    finally:
        d.stop()
        relay.stop()


def test_pooled_connections_the_relay_closed_are_replaced(
    tmp_path: Path, sqlite_url: str
) -> None:
    """Connections are kept open between copies; when the relay restarts (closing them), the
    next copies go out on new connections at once, not after a deferral."""
    relay = Relay(pipelining=True).start()
    d = Daemon(tmp_path, sqlite_url, relay=relay.url)
    d.start()
    try:
        d.send(make_report())
        wait_for(lambda: len(relay.messages) == 4, 20, "the first report's copies")
        relay.stop()
        relay.start()  # same port: the pooled connections are closed
        d.send(make_report(subject="Second"))
        wait_for(lambda: len(relay.messages) == 8, 20, "the second report's copies")
        assert "deferred" not in d.log_text()
    finally:
        d.stop()
        relay.stop()


class _SlowRelay(Relay):
    """A relay that takes ``delay`` seconds (one by default) over each message."""

    delay = 1.0
    busy = 0  # messages it is taking right now

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.busy += 1
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.busy -= 1
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.postgres
def test_the_leases_are_handed_back_before_the_copies_in_flight_are_done(
        tmp_path: Path, pg_url: str) -> None:
    """A relay slower than the stop: the copies waiting for a sending slot are handed back as
    the stop begins, not once the copies being sent are done (which can be after the stop's
    30 seconds, when nothing would be handed back)."""
    slow = _SlowRelay(free_port())
    slow.delay = 8.0
    slow.start()
    d = Daemon(tmp_path, pg_url, relay=slow.url, extra={"delivery": {"workers": 1}})
    d.start()
    engine = sa.create_engine(pg_url)
    try:
        for i in range(3):
            d.send(make_report(subject=f"report {i}"))
        wait_for(lambda: slow.busy >= 1, 30, "a copy at the relay")
        time.sleep(0.5)  # every delivery worker has claimed its share
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(2)
        with engine.connect() as c:
            left, leased = c.execute(sa.text(
                "SELECT count(*), count(claimed_until) FROM outbound")).one()
        busy = slow.busy
        assert busy >= 1, "the relay finished before the check: make it slower"
        assert left > busy and leased <= busy, (left, leased, busy)
    finally:
        d.stop()
        slow.stop()
        engine.dispose()


@pytest.mark.postgres
def test_a_stopped_worker_hands_back_the_copies_it_had_not_begun(tmp_path: Path,
                                                                  pg_url: str) -> None:
    """SIGTERM with claimed copies not begun yet: they are not begun, their leases end at
    once (another daemon, or the next start, takes them now, not 30 s later), and every
    copy arrives exactly once."""
    slow = _SlowRelay(free_port()).start()
    d = Daemon(tmp_path, pg_url, relay=slow.url, extra={"delivery": {"workers": 1}})
    d.start()
    try:
        for i in range(3):
            d.send(make_report(subject=f"report {i}"))
        wait_for(lambda: len(slow.messages) >= 1, 30, "a first copy")
    finally:
        d.stop()  # one copy in flight, the rest claimed and waiting
        slow.stop()
    engine = sa.create_engine(pg_url)
    with engine.connect() as c:
        left, leased = c.execute(sa.text(
            "SELECT count(*), count(claimed_until) FROM outbound")).one()
    engine.dispose()
    assert left > 0 and leased == 0, (left, leased)
    fast = Relay(slow.port).start()
    d.start()
    try:
        wait_for(lambda: len(slow.messages) + len(fast.messages) >= 12, 15, "12 copies")
        time.sleep(1)
        sent = [(r[0], subject_of(data)) for _, r, data in slow.messages + fast.messages]
        assert len(sent) == 12 and len(set(sent)) == 12
    finally:
        d.stop()
        fast.stop()
