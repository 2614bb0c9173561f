"""Scale-out on PostgreSQL: several daemons share one database; one is killed mid-load and
the survivors deliver every copy (a copy in flight at the kill may arrive twice: counted)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import Daemon, Relay, make_report, wait_for

MEMBERS = ("ada@example.net", "grace@example.net", "linus@example.net")


@pytest.mark.postgres
def test_two_daemons_one_killed_mid_load(tmp_path: Path, pg_admin: str | None) -> None:
    if pg_admin is None:
        pytest.skip("PostgreSQL not configured ($COC_MAIL_TEST_PG)")
    from tests.conftest import _drop_pg_database, _fresh_pg_database

    url, name = _fresh_pg_database(pg_admin)
    relay = Relay().start()
    shared = {"storage": {"key_file": str(tmp_path / "secret.key")},
              "dkim": {"private_key": str(tmp_path / "dkim.key")}}
    daemons = []
    try:
        for label in ("a", "b"):
            (tmp_path / label).mkdir()
            d = Daemon(tmp_path / label, url, relay=relay.url, extra=shared)
            d.start()
            daemons.append(d)
        a, b = daemons
        reports = 30
        for i in range(reports):
            target = a if i % 2 == 0 or i >= 15 else b
            if i == 15:
                a.kill()  # mid-load: a has copies queued and in flight
                target = b
            if i >= 15:
                target = b
            target.send(make_report(subject=f"load {i}", sender=f"R{i} <r{i}@example.com>"),
                        sender=f"r{i}@example.com")

        def member_copies() -> Counter[tuple[str, bytes]]:
            out: Counter[tuple[str, bytes]] = Counter()
            for _, rcpts, data in relay.messages:
                if rcpts[0] in MEMBERS:
                    subject = next(x for x in data.split(b"\r\n") if x.startswith(b"Subject:"))
                    out[(rcpts[0], subject.split(b"] ", 1)[1])] += 1
            return out

        wait_for(lambda: all(member_copies()[(m, f"load {i}".encode())] >= 1
                             for i in range(reports) for m in MEMBERS), 90, "every copy")
        time.sleep(1)
        copies = member_copies()
        duplicates = sum(n - 1 for n in copies.values())
        print(f"scale-out: {len(relay.messages)} copies, {duplicates} duplicates")
        assert duplicates <= 4 * 4, f"{duplicates} duplicates"  # at most a's claimed batch
        cases = b.cli("cases").stdout.splitlines()[1:]
        assert len(cases) == reports, "one case per report, none twice"
    finally:
        for d in daemons:
            d.stop()
        relay.stop()
        _drop_pg_database(pg_admin, name)
