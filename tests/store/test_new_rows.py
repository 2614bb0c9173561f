"""A case inserted by one Core statement (store.new_row, store.attach, insert_case) is the same
row and the same object as one the ORM inserted: on a SQLite file and on PostgreSQL."""

from __future__ import annotations

from sqlalchemy import text
from sqlmodel import Session

from coc_mail import store
from coc_mail.cases.report import insert_case

COLUMNS = ("code_name", "status", "reporter_key", "reporter", "report", "sheet", "reported",
           "resolved_at", "check_started_at", "check_deadline", "last_followup_at",
           "reminders", "purge_warned", "purged_at", "discard_by")


def test_a_case_from_one_insert_is_the_row_the_orm_would_have_written(database_url: str
                                                                       ) -> None:
    engine = store.make_engine(database_url)
    store.migrate(engine)
    with Session(engine) as session:
        by_orm = store.Case(code_name="orm way", reporter_key="k1", reporter=b"r")
        session.add(by_orm)
        session.flush()
        case = insert_case(session, {"code_name": "core way", "reporter_key": "k2",
                                     "reporter": b"r"}, b"the sealed report")
        assert case.id is not None and case.id != by_orm.id
        assert session.get(store.Case, case.id) is case  # in the identity map, persistent
        assert not session.dirty and not session.new
        session.commit()
        case_id, orm_id = case.id, by_orm.id
    with Session(engine) as session:
        core, orm = session.get(store.Case, case_id), session.get(store.Case, orm_id)
        assert core is not None and orm is not None
        differ = {c for c in COLUMNS if getattr(core, c) != getattr(orm, c)}
        assert differ == {"code_name", "reporter_key", "report"}
        assert core.report == b"the sealed report" and orm.report is None
    with Session(engine) as session:  # changed afterwards: an update, in the same session
        case = insert_case(session, {"code_name": "then changed", "reporter_key": "k3"},
                           b"report")
        assert case.report == b"report"  # not held on the object: read from its row
        case.status = "Ongoing"
        session.add(case)
        session.flush()
        status = session.connection().execute(
            text("SELECT status FROM cases WHERE id = :id"), {"id": case.id}).scalar_one()
        assert status == "Ongoing"
        session.rollback()
    with Session(engine) as session:  # the rollback took the insert with it
        count = session.connection().execute(
            text("SELECT count(*) FROM cases WHERE code_name = 'then changed'")).scalar_one()
        assert count == 0
    engine.dispose()
