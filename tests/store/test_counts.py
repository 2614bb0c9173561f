"""Counts kept under keyed tags (acknowledgments a day, reports an hour, notices an hour):
one upsert each, on a SQLite file and on PostgreSQL; and shared bodies dropped once unused."""

from __future__ import annotations

import datetime as dt
import threading

from sqlmodel import Session, select

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


def test_only_bodies_no_queued_copy_uses_are_dropped(database_url: str) -> None:
    """The deletion after a delivery (among the bodies its copies used) and the hourly sweep
    (bodies older than an hour): a body a queued copy still points at always stays."""
    engine = store.make_engine(database_url)
    store.migrate(engine)
    old = store.utcnow() - dt.timedelta(hours=2)
    with Session(engine) as session:
        bodies = [store.Body(content=b"b", created_at=old if i < 3 else store.utcnow())
                  for i in range(6)]
        session.add_all(bodies)
        session.flush()
        ids = [int(b.id or 0) for b in bodies]
        for n, used in enumerate((ids[1], ids[4])):  # bodies 1 and 4 are in use
            session.add(store.Outbound(uid=f"u{n}", envelope_from="x", recipient=b"r",
                                       content=b"c", body_id=used))
        session.commit()

    def left() -> list[int]:
        with Session(engine) as session:
            return sorted(int(b.id or 0) for b in session.exec(select(store.Body)))

    with Session(engine) as session:  # a delivery that used bodies 0, 1 and 3
        store.drop_unused_bodies(session, {ids[0], ids[1], ids[3]})
        session.commit()
    assert left() == [ids[1], ids[2], ids[4], ids[5]]
    with Session(engine) as session:
        store.drop_unused_bodies(session, set())  # nothing delivered: nothing to drop
        store.drop_unused_bodies(session, older_than=store.utcnow() - dt.timedelta(hours=1))
        session.commit()
    assert left() == [ids[1], ids[4], ids[5]]  # body 2 was old and unused
    with Session(engine) as session:
        store.drop_unused_bodies(session)  # every unused one, however new
        session.commit()
    assert left() == [ids[1], ids[4]]
    engine.dispose()
