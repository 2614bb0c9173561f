"""The "Who sees what" table (SPEC 1) read off the web view: every page, download and export
each member can reach by following links, and every URL any member saw, fetched by every
member; what each gets is checked, decoded, against their row."""

from __future__ import annotations

import html
import io
import re
from collections import deque
from pathlib import Path
from typing import Any

import httpx
from openpyxl import load_workbook

from coc_mail.mail.readable import searchable
from tests.helpers import (
    Daemon,
    Mail,
    make_report,
    reads,
    send_as,
    sign_in,
    to,
    web_daemon,
)

REPORT_MARKER = "WEBREPORT-MARKER-8d1"
REPORTER = "rita.reporter.91@example.com"
LATER = "WEBLATER-MARKER-2a7"
NOTE = "WEBNOTE-MARKER-6f3"
KINDS = {"report": (REPORT_MARKER, REPORTER, LATER), "reported": ("Jordan Roe",),
         "document": (NOTE,)}
MEMBERS: list[dict[str, Any]] = [
    {"name": "Ada Example", "email": "ada@example.net", "roles": ["operator"]},
    {"name": "Gus Cleared", "email": "gus@example.net"},
    {"name": "Bea Conflicted", "email": "bea@example.net"},
    {"name": "Dee Recused", "email": "dee@example.net"},
    {"name": "Eve Excluded", "email": "eve@example.net"},
]


def shown(r: httpx.Response) -> str:
    """What a person gets from a response: a page as text, a download decoded."""
    kind = r.headers.get("content-type", "")
    if "spreadsheetml" in kind:
        sheet = load_workbook(io.BytesIO(r.content)).active
        assert sheet is not None
        return "\n".join(" ".join(str(v or "") for v in row) for row in sheet.iter_rows(
            values_only=True))
    if kind.startswith("application/octet-stream"):
        return r.content.decode("utf-8", "replace")
    return html.unescape(r.text)


def sees(r: httpx.Response, marker: str) -> bool:
    if r.headers.get("content-type", "").startswith("application/octet-stream") and reads(
            r.content, marker):
        return True  # a downloaded message, read as a mail client would
    return searchable(marker) in searchable(shown(r))


def crawl(client: httpx.Client) -> dict[str, httpx.Response]:
    """Every page reachable from / by links (GET only; never /logout)."""
    seen: dict[str, httpx.Response] = {}
    todo = deque(["/"])
    while todo and len(seen) < 200:
        path = todo.popleft()
        if path in seen:
            continue
        r = client.get(path)
        seen[path] = r
        if "text/html" in r.headers.get("content-type", ""):
            for href in re.findall(r'href="(/[^"]*)"', r.text):
                href = html.unescape(href)
                if href not in seen and not href.startswith(("/static/", "/logout")):
                    todo.append(href)
    return seen


def test_every_web_page_follows_the_table(tmp_path: Path, sqlite_url: str) -> None:
    d: Daemon = web_daemon(tmp_path, sqlite_url)
    d.members = [dict(m) for m in MEMBERS]
    d.write()
    d.start()
    try:
        mail = Mail(d)
        report = make_report(sender=f"Rita <{REPORTER}>", to="conduct+without.eve@example.org",
                             subject="At the social", body=f"{REPORT_MARKER}\nIt happened.\n",
                             cte="base64")
        d.send(report, sender=REPORTER, to=["conduct+without.eve@example.org"])
        intake = mail.next(5)  # four notices and the acknowledgment
        code = str(to(intake, "ada")["Subject"]).split("]")[0].strip("[")
        address = {c.to.split("@")[0]: c["Reply-To"].addresses[0].addr_spec
                   for c in intake if c.to != REPORTER}
        send_as(d, "ada", address["ada"], "/involves Jordan Roe\n")
        mail.next(4)  # Ada's answer, the check to Gus, Bea and Dee
        send_as(d, "gus", address["gus"], "/noconflict")
        send_as(d, "bea", address["bea"], "/conflict")
        send_as(d, "dee", address["dee"], "/noconflict")
        mail.next(3)
        send_as(d, "dee", address["dee"], "/recuse")
        mail.next(1)
        reporter_address = to(intake, REPORTER)["Reply-To"].addresses[0].addr_spec
        d.send(make_report(sender=f"Rita <{REPORTER}>", to=reporter_address,
                           body=f"{LATER}\n"), sender=REPORTER, to=[reporter_address])
        mail.next(2)  # to Ada and Gus
        clients = {who: sign_in(d, f"{who}@example.net") for who in
                   ("ada", "gus", "bea", "dee", "eve")}
        page = clients["ada"].get(f"/cases/{code.replace(' ', '-')}")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        clients["ada"].post(f"/cases/{code.replace(' ', '-')}/note",
                            data={"csrf": csrf, "section": "scope", "text": NOTE})

        may = {"ada": {"report", "reported", "document"}, "gus": {"report", "reported",
               "document"}, "bea": set(), "dee": set(), "eve": set()}
        reached = {who: crawl(c) for who, c in clients.items()}
        every_url = {path for pages in reached.values() for path in pages}
        assert f"/cases/{code.replace(' ', '-')}/files/0" in every_url
        assert "/status.xlsx" in every_url and "/status.csv" in every_url
        for who, client in clients.items():
            pages = dict(reached[who])
            for path in every_url - set(pages):  # URLs others saw, asked for directly
                pages[path] = client.get(path)
            for path, r in pages.items():
                for kind, markers in KINDS.items():
                    if kind in may[who]:
                        continue
                    for marker in markers:
                        assert not sees(r, marker), (who, path, kind, marker)
            if not may[who]:
                case_pages = [p for p in pages if p.startswith("/cases/")]
                assert case_pages and all(pages[p].status_code == 404 for p in case_pages), who
        for who in ("ada", "gus"):  # positive controls: the reader finds each marker
            for markers in KINDS.values():
                for marker in markers:
                    assert any(sees(r, marker) for r in reached[who].values()), (who, marker)
    finally:
        d.stop()
