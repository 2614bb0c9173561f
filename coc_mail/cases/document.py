"""The case document (the procedure's "Report Documentation"): dated entries, and its text."""

from __future__ import annotations

import datetime as dt
import json

from sqlmodel import Session, col, select

from coc_mail.config import Settings
from coc_mail.mail.readable import text_of
from coc_mail.store import Case, DocEntry
from coc_mail.store.crypto import Keyring

# Sections members write with /note, in the order the procedure lists them.
SECTIONS = {
    "summary": "Summary of committee discussions",
    "scope": "Is the report in scope?",
    "plan": "Proposed behavioural modification plan",
    "consequences": "Proposed consequences",
    "organizers": "Discussions with moderators, administrators and organizers",
    "reported": "Discussions with the reported person",
}
# Sections the daemon writes itself.
CORRESPONDENCE = "correspondence"
FOLLOWUP = "followup"
TITLES = {**SECTIONS, CORRESPONDENCE: "Correspondence from the reporter",
          FOLLOWUP: "Follow-ups sent to the reporter"}
MAX_TEXT = 200_000


def add(
    keys: Keyring,
    session: Session,
    case: Case,
    *,
    section: str,
    author: str,
    body: str,
    date: dt.date | None = None,
) -> DocEntry:
    """Append one dated, authored entry to the case document (sealed)."""
    assert case.id is not None
    entry = DocEntry(
        case_id=case.id,
        section=keys.seal_text(section, "doc_entries.section"),
        entry_date=date or dt.datetime.now(dt.UTC).date(),
        author=keys.seal_text(author, "doc_entries.author"),
        body=keys.seal_text(body[:MAX_TEXT], "doc_entries.body"),
    )
    session.add(entry)
    return entry


def notice_mode(settings: Settings) -> bool:
    """``intake.deliver = "notice"``: members' mail about a report carries its code name and
    a link to the web view, never the report's text or the reporter's address."""
    return settings.intake.deliver == "notice"


def web_link(settings: Settings, case: Case) -> str:
    """The case's page in the web view."""
    return f"{settings.web.url}/cases/{case.code_name.replace(' ', '-')}"


def link_lines(settings: Settings, case: Case) -> str:
    """The lines a notice carries instead of the report."""
    return ("Read it in the web view (sign in with your committee address):\n"
            f"  {web_link(settings, case)}\n")


def sheet_of(keys: Keyring, case: Case) -> dict[str, str]:
    """The case's status-sheet fields (safety, repeat, actions, resolution)."""
    if not case.sheet:
        return {}
    data = json.loads(keys.open(case.sheet, "cases.sheet"))
    return {str(k): str(v) for k, v in data.items()}


def set_sheet(keys: Keyring, case: Case, fields: dict[str, str]) -> None:
    merged = {**sheet_of(keys, case), **fields}
    case.sheet = keys.seal(json.dumps(merged).encode(), "cases.sheet")


def reported_people(keys: Keyring, case: Case) -> list[str]:
    """The people the case involves, as members named them (``/involves``), in order."""
    if not case.reported:
        return []
    return [p for p in keys.open_text(case.reported, "cases.reported").split("\n") if p]


def reported_of(keys: Keyring, case: Case) -> str:
    """The people the case involves, for a line of text."""
    return "; ".join(reported_people(keys, case))


def render(keys: Keyring, session: Session, case: Case) -> str:
    """The whole document as plain text, for the cleared member who asks (/doc)."""
    sheet = sheet_of(keys, case)
    out = [
        f"Case document: {case.code_name}",
        "=" * (15 + len(case.code_name)),
        "",
        f"Status:            {case.status}",
        f"Opened:            {case.opened_at:%Y-%m-%d %H:%M} UTC",
        f"Reported person:   {reported_of(keys, case) or '(not named yet)'}",
        # (in this order: "No" before "Risk of ..." reads as "No Risk" to spam filters)
        f"Risk of repeating? {sheet.get('repeat', '')}",
        f"Safety risk?       {sheet.get('safety', '')}",
        f"Actions needed:    {sheet.get('actions', '')}",
        f"Resolution:        {sheet.get('resolution', '')}",
        "",
    ]
    if case.purged_at is not None:
        out += [f"The document was purged on {case.purged_at:%Y-%m-%d} (retention).", ""]
        return "\n".join(out)
    reporter = keys.open_text(case.reporter, "cases.reporter") if case.reporter else "(none)"
    report = text_of(keys.open(case.report, "cases.report")) if case.report else ""
    out += ["Report", "------", f"From: {reporter}", "", report.rstrip(), ""]
    entries = session.exec(
        select(DocEntry).where(DocEntry.case_id == case.id).order_by(
            col(DocEntry.entry_date), col(DocEntry.id))
    ).all()
    sections = [keys.open_text(e.section, "doc_entries.section") for e in entries]
    for section, title in TITLES.items():
        chosen = [e for e, s in zip(entries, sections, strict=True) if s == section]
        out += [title, "-" * len(title)]
        if not chosen:
            out += ["(nothing yet)", ""]
        for e in chosen:
            author = keys.open_text(e.author, "doc_entries.author")
            body = keys.open_text(e.body, "doc_entries.body").rstrip()
            out += [f"{e.entry_date:%Y-%m-%d}, {author}:", body, ""]
    return "\n".join(out) + "\n"
