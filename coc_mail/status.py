"""The status spreadsheet (the procedure's "Status Spreadsheet"): rows, formats and warnings."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence

from sqlmodel import Session, col, select

from . import document
from .app import App
from .store import Case

COLUMNS = (
    "Safety risk?",
    "Risk of repeating?",
    "Status",
    "Code Name",
    "Date & Time",
    "Actions needed",
    "Resolution",
)
FORMATS = ("csv", "xlsx", "md")
_ADDRESS = re.compile(r"[^\s@<>]+@[^\s@<>]+\.[^\s@<>]+")
_GENDERED = re.compile(
    r"\b(he|she|him|her|his|hers|himself|herself|mr|mrs|ms|miss|man|woman|guy|girl|boy|lady"
    r"|gentleman|sir|madam)\b",
    re.IGNORECASE,
)


def row_of(app: App, case: Case) -> list[str]:
    sheet = document.sheet_of(app.keys, case)
    return [
        sheet.get("safety", ""),
        sheet.get("repeat", ""),
        case.status,
        case.code_name,
        f"{case.opened_at:%Y-%m-%d %H:%M} UTC",
        sheet.get("actions", ""),
        sheet.get("resolution", ""),
    ]


def cases(session: Session) -> Sequence[Case]:
    return session.exec(select(Case).order_by(col(Case.opened_at), col(Case.id))).all()


def rows(app: App, session: Session) -> list[list[str]]:
    """One row per case, oldest first, with exactly the procedure's columns."""
    return [row_of(app, c) for c in cases(session)]


def warnings(app: App, session: Session, chosen: Iterable[Case]) -> list[str]:
    """Fields that name a reported person, hold an address or use gendered words."""
    names = [
        document.reported_of(app.keys, c)
        for c in session.exec(select(Case).where(col(Case.reported).is_not(None)))
    ]
    names = [n for n in names if n.strip()]
    found: list[str] = []
    for case in chosen:
        sheet = document.sheet_of(app.keys, case)
        for key, label in (("actions", "Actions needed"), ("resolution", "Resolution")):
            value = sheet.get(key, "")
            if not value:
                continue
            folded = value.casefold()
            if any(n.casefold() in folded for n in names) or any(
                part.casefold() in folded.split()
                for n in names for part in n.split() if len(part) > 2
            ):
                found.append(f"{case.code_name}: {label} names a reported person")
            if _ADDRESS.search(value):
                found.append(f"{case.code_name}: {label} contains an address")
            if _GENDERED.search(value):
                found.append(
                    f"{case.code_name}: {label} uses gendered words (use gender-neutral language)"
                )
    return found


def render(table: list[list[str]], fmt: str) -> bytes:
    """The sheet as CSV, Markdown or an Excel workbook."""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(table)
        return out.getvalue().encode()
    if fmt == "md":
        def cell(v: str) -> str:
            return v.replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in table]
        return ("\n".join(lines) + "\n").encode()
    if fmt == "xlsx":
        from openpyxl import Workbook

        wb = Workbook(write_only=True)
        ws = wb.create_sheet("Cases")
        ws.append(list(COLUMNS))
        for r in table:
            ws.append(r)
        buf = io.BytesIO()
        wb.save(buf)
        return buf.getvalue()
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def case_row_text(app: App, case: Case) -> str:
    return render([row_of(app, case)], "md").decode()


def warnings_text(app: App, session: Session, chosen: Iterable[Case]) -> str:
    found = warnings(app, session, chosen)
    if not found:
        return ""
    return "\nWarnings (the procedure asks for vague, gender-neutral entries):\n" + "".join(
        f"  - {w}\n" for w in found
    )


def report_text(app: App, session: Session) -> str:
    """The /statusreport mail: the sheet as a table, and its warnings."""
    all_cases = cases(session)
    table = render([row_of(app, c) for c in all_cases], "md").decode()
    return f"Status of all cases ({len(all_cases)}):\n\n{table}" + warnings_text(
        app, session, all_cases
    )
