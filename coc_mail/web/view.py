"""What a case page shows, read from the sealed case: the document's fields and entries, the
report as plain text, and the report's attachments (downloaded, never shown inline)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from email.message import EmailMessage, Message

from sqlmodel import Session, col, select

from coc_mail.app import App
from coc_mail.cases import document
from coc_mail.mail import readable
from coc_mail.store import Case, DocEntry

MAX_SHOWN = 512 << 10  # characters of report text on the page; the rest is in the .eml


@dataclass
class Entry:
    date: dt.date
    author: str
    body: str


@dataclass
class Section:
    key: str
    title: str
    entries: list[Entry]


@dataclass
class Attachment:
    index: int
    filename: str
    size: int


@dataclass
class CaseView:
    case: Case
    reporter: str
    reported: list[str]
    sheet: dict[str, str]
    report_text: str
    attachments: list[Attachment]
    sections: list[Section]
    purged: bool


def _attachment_parts(msg: EmailMessage) -> list[Message]:
    return [p for p in msg.walk() if not p.is_multipart()
            and (p.get_filename() or p.get_content_disposition() == "attachment")]


def case_view(app: App, session: Session, case: Case) -> CaseView:
    keys = app.keys
    purged = case.purged_at is not None
    reporter = keys.open_text(case.reporter, "cases.reporter") if case.reporter else ""
    report = keys.open(case.report, "cases.report") if case.report and not purged else b""
    text, attachments = "", []
    if report:
        text = readable.text_of(report)[:MAX_SHOWN]
        try:
            parts = _attachment_parts(readable.parse(report))
        except Exception:  # noqa: BLE001 - broken MIME: the original is still downloadable
            parts = []
        for i, part in enumerate(parts, 1):
            payload = part.get_payload(decode=True)
            attachments.append(Attachment(i, str(part.get_filename() or f"attachment-{i}"),
                                          len(payload) if isinstance(payload, bytes) else 0))
    entries = session.exec(select(DocEntry).where(DocEntry.case_id == case.id).order_by(
        col(DocEntry.entry_date), col(DocEntry.id))).all()
    by_section: dict[str, list[Entry]] = {key: [] for key in document.TITLES}
    for e in entries:
        section = keys.open_text(e.section, "doc_entries.section")
        by_section.setdefault(section, []).append(Entry(
            e.entry_date, keys.open_text(e.author, "doc_entries.author"),
            keys.open_text(e.body, "doc_entries.body")))
    sections = [Section(k, document.TITLES.get(k, k), v) for k, v in by_section.items()]
    return CaseView(case, reporter, document.reported_people(keys, case),
                    document.sheet_of(keys, case), text, attachments, sections, purged)


def attachment(app: App, case: Case, index: int) -> tuple[str, bytes] | None:
    """Attachment ``index`` (1-based) of the report, or with 0 the whole original message."""
    if not case.report or case.purged_at is not None:
        return None
    report = app.keys.open(case.report, "cases.report")
    if index == 0:
        return f"{case.code_name.replace(' ', '-')}.eml", report
    try:
        parts = _attachment_parts(readable.parse(report))
    except Exception:  # noqa: BLE001
        return None
    if not 0 < index <= len(parts):
        return None
    part = parts[index - 1]
    payload = part.get_payload(decode=True)
    return str(part.get_filename() or f"attachment-{index}"), (
        payload if isinstance(payload, bytes) else b"")
