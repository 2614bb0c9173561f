"""The status spreadsheet (the procedure's "Status Spreadsheet"): rows, formats and warnings."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sqlmodel import Session, col, select

from coc_mail.app import App
from coc_mail.cases import document
from coc_mail.cases.conflicts import Person
from coc_mail.store import Case

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
_ADDRESS = re.compile(r"[^\s@<>]{1,64}@[^\s@<>.]{1,63}\.[^\s@<>]{1,63}")  # bounded: linear
_GENDERED = re.compile(
    r"\b(he|she|him|her|his|hers|himself|herself|mr|mrs|ms|miss|man|woman|guy|girl|boy|lady"
    r"|gentleman|sir|madam)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class SheetRow:
    """What the sheet shows of one case, its sealed fields opened once."""

    code_name: str
    status: str
    opened_at: dt.datetime
    fields: dict[str, str]


def sheet_row(app: App, case: Case) -> SheetRow:
    return SheetRow(case.code_name, case.status, case.opened_at,
                    document.sheet_of(app.keys, case))


def row_of(row: SheetRow) -> list[str]:
    sheet = row.fields
    return [
        sheet.get("safety", ""),
        sheet.get("repeat", ""),
        row.status,
        row.code_name,
        f"{row.opened_at:%Y-%m-%d %H:%M} UTC",
        sheet.get("actions", ""),
        sheet.get("resolution", ""),
    ]


def cases(app: App, session: Session, newest: int | None = None) -> list[SheetRow]:
    """Every case (or the ``newest`` ones), oldest first: only the columns the sheet needs
    (10,000 cases are read and opened in well under a second)."""
    keys = app.keys
    query = select(col(Case.code_name), col(Case.status), col(Case.opened_at), col(Case.sheet))
    if newest is None:
        found = session.execute(query.order_by(col(Case.opened_at), col(Case.id))).all()
    else:
        found = session.execute(query.order_by(col(Case.opened_at).desc(), col(Case.id).desc())
                                .limit(newest)).all()[::-1]
    return [
        SheetRow(code_name, status, opened_at,
                 {str(k): str(v) for k, v in json.loads(keys.open(sheet, "cases.sheet")).items()}
                 if sheet else {})
        for code_name, status, opened_at, sheet in found
    ]


def rows(app: App, session: Session) -> list[list[str]]:
    """One row per case, oldest first, with exactly the procedure's columns."""
    return [row_of(r) for r in cases(app, session)]


def warnings(app: App, session: Session, chosen: Iterable[SheetRow]) -> list[str]:
    """Fields that name a reported person, hold an address or use gendered words. The
    reported names (of every case: the sheet is read by members conflicted in some) are read
    only when a chosen row has a field to check."""
    chosen = list(chosen)
    if not any(c.fields.get("actions") or c.fields.get("resolution") for c in chosen):
        return []
    names = [  # only the sealed names are read (a full row would bring its report too)
        Person.named(p).name
        for sealed in session.exec(select(Case.reported).where(col(Case.reported).is_not(None)))
        if sealed
        for p in app.keys.open_text(sealed, "cases.reported").split("\n") if p
    ]
    names = [n for n in names if n.strip()]
    found: list[str] = []
    for case in chosen:
        sheet = case.fields
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


# A spreadsheet reads a cell that starts with one of these as a formula (OWASP's list: tab and
# carriage return too); exports make such cells text.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_MD_SPECIAL = re.compile(r"([\\|<>\[\]`])")  # what breaks a table, a link or into HTML


def as_text(value: str) -> str:
    """A CSV cell that no spreadsheet runs: a leading formula character gets an apostrophe."""
    stripped = value.lstrip(" ")
    return "'" + value if stripped.startswith(FORMULA_START) else value


def md_cell(value: str) -> str:
    """A Markdown table cell on one line: backslashes and pipes escaped (a ``\\|`` would
    otherwise end the cell), and the characters that open links, code or HTML."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(value.split()))


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # no spreadsheet takes these


def render(table: list[list[str]], fmt: str) -> bytes:
    """The sheet as CSV, Markdown or an Excel workbook; no cell is ever a formula."""
    table = [[_CONTROL.sub(" ", v) for v in r] for r in table]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows([as_text(v) for v in r] for r in table)
        return out.getvalue().encode()
    if fmt == "md":
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(md_cell(v) for v in r) + " |" for r in table]
        return ("\n".join(lines) + "\n").encode()
    if fmt == "xlsx":
        from openpyxl import Workbook
        from openpyxl.cell import WriteOnlyCell

        wb = Workbook(write_only=True)
        ws = wb.create_sheet("Cases")
        ws.append(list(COLUMNS))
        for r in table:
            cells = []
            for v in r:
                cell = WriteOnlyCell(ws, value=v)
                cell.data_type = "s"  # a string starting with "=" would be stored as a formula
                cells.append(cell)
            ws.append(cells)
        buf = io.BytesIO()
        wb.save(buf)
        return buf.getvalue()
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def case_row_text(app: App, case: Case) -> str:
    return render([row_of(sheet_row(app, case))], "md").decode()


def warnings_text(app: App, session: Session, chosen: Iterable[Case | SheetRow]) -> str:
    found = warnings(app, session, [
        c if isinstance(c, SheetRow) else sheet_row(app, c) for c in chosen
    ])
    if not found:
        return ""
    return "\nWarnings (the procedure asks for vague, gender-neutral entries):\n" + "".join(
        f"  - {w}\n" for w in found
    )


def report_text(app: App, session: Session) -> str:
    """The /statusreport mail: the sheet as a table, and its warnings."""
    all_cases = cases(app, session)
    table = render([row_of(c) for c in all_cases], "md").decode()
    return f"Status of all cases ({len(all_cases)}):\n\n{table}" + warnings_text(
        app, session, all_cases
    )
