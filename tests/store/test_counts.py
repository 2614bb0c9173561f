"""Counts kept under keyed tags (acknowledgments a day, reports an hour, notices an hour):
one upsert each, on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading

from sqlmodel import Session

from coc_mail import store

DAY = dt.date(2026, 12, 1)


def test_a_count_goes_up_within_its_day_and_starts_again_the_next(database_url: str) -> None:
    engine = store.make_engine(database_url)
    store.migrate(engine)
    with Session(engine) as session:
        assert [store.count_up(session, "ack:a", DAY) for _ in range(3)] == [1, 2, 3]
        assert store.count_up(session, "ack:b", DAY) == 1  # another tag: its own count
        session.commit()
    with Session(engine) as session:
        assert store.count_up(session, "ack:a", DAY) == 4  # committed: kept
        assert store.count_up(session, "ack:a", DAY + dt.timedelta(days=1)) == 1  # a new day
        assert store.count_up(session, "ack:a", DAY + dt.timedelta(days=1)) == 2
        session.rollback()
    with Session(engine) as session:  # rolled back with the transaction it was part of
        assert store.count_up(session, "ack:a", DAY) == 4  # the 4 above was not kept
        session.commit()
    engine.dispose()


def test_counts_from_two_connections_at_once_are_all_kept(database_url: str) -> None:
    """Two daemons counting one sender (PostgreSQL) or two of a daemon's processes: no
    count is lost to a race between reading and writing (one statement does both)."""
    engine = store.make_engine(database_url)
    store.migrate(engine)
    seen: list[int] = []

    def count(times: int) -> None:
        for _ in range(times):
            with Session(engine) as session:
                seen.append(store.count_up(session, "flood:x", DAY))
                session.commit()

    threads = [threading.Thread(target=count, args=(25,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == list(range(1, 51))
    engine.dispose()
