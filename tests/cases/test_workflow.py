"""The case workflow by mail, end to end over real SMTP (SPEC 3-7): six members who end up
cleared, conflicted, silent, recused and excluded, a reporter, a forger and a late joiner."""

from __future__ import annotations

import csv
import io
import subprocess
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from tests.helpers import ALIAS, Daemon, Mail, make_report, reads, send_as, to, wait_for

REPORT_MARKER = "REPORT-MARKER-51f0"
REPORTER = "rita.reporter.77@example.com"
POST_1 = "THREAD-MARKER-one-9a1"
POST_2 = "THREAD-MARKER-two-4c2"
LATER = "REPORTER-MARKER-later-3d3"
FOLLOWUP = "FOLLOWUP-TEXT-e5e"
NOTE = "NOTE-TEXT-7b7"

MEMBERS: list[dict[str, Any]] = [
    {"name": "Ada Example", "email": "ada@example.net", "roles": ["operator"]},
    {"name": "Gus Cleared", "email": "gus@example.net"},
    {"name": "Bea Conflicted", "email": "bea@example.net"},
    {"name": "Cy Silent", "email": "cy@example.net"},
    {"name": "Dee Recused", "email": "dee@example.net"},
    {"name": "Eve Excluded", "email": "eve@example.net"},
]


@pytest.fixture
def d(tmp_path: Path, sqlite_url: str) -> Any:
    daemon = Daemon(tmp_path, sqlite_url, members=[dict(m) for m in MEMBERS], extra={
        "intake": {"conflict_check_hours": 8 / 3600},
        "cases": {"check_interval_seconds": 0.5},
    })
    daemon.start()
    yield daemon
    daemon.stop()


def test_a_whole_case_by_mail(d: Daemon) -> None:
    mail = Mail(d)
    # 1. A report that asks to keep Eve out. Five members get it, Eve nothing; an ack.
    report = make_report(sender=f"Rita <{REPORTER}>", to="conduct+without.eve@example.org",
                         subject="At the social", body=f"{REPORT_MARKER}\nIt happened.\n",
                         cte="base64")  # every marker travels encoded: checks must decode
    d.send(report, sender=REPORTER, to=["conduct+without.eve@example.org"])
    intake = mail.next(6)
    assert {c.to for c in intake} == {"ada@example.net", "gus@example.net", "bea@example.net",
                                      "cy@example.net", "dee@example.net", REPORTER}
    code = str(to(intake, "ada")["Subject"]).split("]")[0].strip("[")
    case_address = {c.to.split("@")[0]: c["Reply-To"].addresses[0].addr_spec
                    for c in intake if c.to != REPORTER}
    reporter_address = to(intake, REPORTER)["Reply-To"].addresses[0].addr_spec

    # 2. A post before the reported person is named is refused with the way forward.
    send_as(d, "ada", case_address["ada"], "Let us talk about this.")
    (answer,) = mail.next(1)
    assert answer.to == "ada@example.net" and "/involves NAME" in answer.text

    # 3. Ada names the person: the conflict check goes to the four others, nothing else.
    send_as(d, "ada", case_address["ada"], "/involves Jordan Roe\n")
    check = mail.next(5)
    assert "conflict check went to 4 member(s)" in to(check, "ada").text
    for who in ("gus", "bea", "cy", "dee"):
        c = to(check, who)
        assert "We have a report that involves Jordan Roe" in c.text
        assert code in str(c["Subject"])
        assert not reads(c.raw, REPORTER) and not reads(c.raw, REPORT_MARKER)
        assert c["Reply-To"].addresses[0].addr_spec == case_address[who]

    # 4. Answers: Gus and Dee have no conflict (Gus in plain words), Bea has one; Cy is silent.
    send_as(d, "gus", case_address["gus"], "no conflict\n\nOn Tuesday Ada wrote:\n> hi\n")
    assert "cleared" in mail.next(1)[0].text
    send_as(d, "bea", case_address["bea"], "/conflict")
    assert "nothing more about this case" in mail.next(1)[0].text
    send_as(d, "dee", case_address["dee"], "/noconflict")
    mail.next(1)
    # The halfway reminder reaches Cy only; at the deadline Cy is silent (not added).
    reminder = mail.next(1, timeout=15)[0]
    assert reminder.to == "cy@example.net" and "answer the conflict check" in reminder.text
    wait_for(lambda: "no answer to the conflict check" in d.cli("audit", code).stdout, 20,
             "Cy marked silent")
    send_as(d, "cy", case_address["cy"], "/noconflict")
    assert "deadline has passed" in mail.next(1)[0].text

    # 5. The thread: Ada's post reaches Gus and Dee, each with their own Reply-To.
    send_as(d, "ada", case_address["ada"], f"{POST_1}\nWhat do we know?\n", subject="Thoughts",
            cte="quoted-printable")
    relayed = mail.next(2)
    assert {c.to for c in relayed} == {"gus@example.net", "dee@example.net"}
    for c in relayed:
        who = c.to.split("@")[0]
        assert POST_1 in c.text
        assert str(c["From"]) == f'"Ada Example via {code}" <{ALIAS}>' or (
            c["From"].addresses[0].display_name == f"Ada Example via {code}")
        assert c["Reply-To"].addresses[0].addr_spec == case_address[who]
        assert case_address["ada"] not in c.raw.decode()
        assert "ada@example.net" not in c.raw.decode()

    # 6. Dee recuses; the next post reaches Gus alone. Cy and Bea are refused with a reason.
    send_as(d, "dee", case_address["dee"], "/recuse")
    assert "recused" in mail.next(1)[0].text
    send_as(d, "ada", case_address["ada"], "see the HTML",
            html=f"<p>{POST_2[:6]}&#45;{POST_2[7:]}</p>")
    assert [c.to for c in mail.next(1)] == ["gus@example.net"]
    send_as(d, "cy", case_address["cy"], "May I join?")
    assert "did not answer the conflict check" in mail.next(1)[0].text
    send_as(d, "bea", case_address["bea"], "Hello?")
    assert "declared a conflict" in mail.next(1)[0].text
    send_as(d, "bea", case_address["bea"], "/doc")
    assert "not part of this case" in mail.next(1)[0].text

    # 7. A forger who knows nothing gets 550; one using Ada's case address gets nothing done.
    with d.smtp() as s:
        s.ehlo()
        s.mail("mallory@example.com")
        assert s.rcpt(case_address["ada"].replace(case_address["ada"][-30:-12], "a" * 18))[0] \
            == 550
    forged = make_report(sender="Mallory <mallory@example.com>", to=case_address["ada"],
                         body="/discard")
    d.send(forged, sender="mallory@example.com", to=[case_address["ada"]])
    (notice,) = mail.next(1)  # the real Ada is told; the forger gets nothing
    assert notice.to == "ada@example.net" and "was ignored" in notice.text
    assert "discard" not in notice.text

    # 8. The reporter writes again: to the cleared members only, and into the document.
    d.send(make_report(sender=f"Rita <{REPORTER}>", to=reporter_address, body=f"{LATER}\n",
                       cte="base64"), sender=REPORTER, to=[reporter_address])
    later = mail.next(2)
    assert {c.to for c in later} == {"ada@example.net", "gus@example.net"}

    # 9. Follow-up and preview, a dated note, the status sheet fields.
    send_as(d, "ada", case_address["ada"], f"/followup followup\n{FOLLOWUP}\n-- \nAda\n")
    sent = mail.next(2)
    assert FOLLOWUP in to(sent, REPORTER).text and "Ada\n" not in to(sent, REPORTER).text
    assert to(sent, REPORTER)["Reply-To"].addresses[0].addr_spec == reporter_address
    assert "Sent to the reporter" in to(sent, "ada").text
    send_as(d, "ada", case_address["ada"], "/preview resolution\nA verbal warning.\n")
    (preview,) = mail.next(1)
    assert preview.to == "ada@example.net" and "Preview (not sent)" in preview.text
    send_as(d, "gus", case_address["gus"], f"/note summary 2026-11-20\n{NOTE}\n",
            cte="quoted-printable")
    assert "Added to Summary" in mail.next(1)[0].text
    send_as(d, "gus", case_address["gus"], "/note nowhere\ntext")
    assert "Usage: /note SECTION" in mail.next(1)[0].text
    send_as(d, "ada", case_address["ada"],
            '/status safety=no repeat=maybe actions="He is watched by the team"')
    status_reply = mail.next(1)[0].text
    assert "| No | Maybe | Ongoing |" in status_reply
    assert "gendered words" in status_reply
    send_as(d, "ada", case_address["ada"], "/status safety=perhaps")
    assert "safety must be yes, no or maybe" in mail.next(1)[0].text
    send_as(d, "ada", case_address["ada"], "/frobnicate")
    assert "There is no command /frobnicate" in mail.next(1)[0].text

    # 10. /doc: the whole document, to the asking cleared member only.
    send_as(d, "gus", case_address["gus"], "/doc")
    (doc,) = mail.next(1)
    assert doc.to == "gus@example.net"
    for needle in (REPORT_MARKER, REPORTER, NOTE, "2026-11-20", FOLLOWUP, LATER, "Jordan Roe"):
        assert needle in doc.text, needle
    assert POST_1 not in doc.text, "thread posts are never kept"

    # 11. Resolve; the CLI status sheet, case show and the audit chain.
    send_as(d, "ada", case_address["ada"], '/resolve "Verbal warning"')
    assert "is resolved" in mail.next(1)[0].text
    rows = list(csv.reader(io.StringIO(d.cli("status", "--format", "csv").stdout)))
    assert rows[0] == ["Safety risk?", "Risk of repeating?", "Status", "Code Name",
                       "Date & Time", "Actions needed", "Resolution"]
    assert rows[1][:4] == ["No", "Maybe", "Resolved", code]
    assert rows[1][6] == "Verbal warning"
    result = d.cli("status", "--format", "md")
    assert "gendered words" in result.stderr and "Jordan" not in result.stdout
    d.cli("status", "--format", "xlsx", "--output", str(d.root / "sheet.xlsx"))
    ws = load_workbook(d.root / "sheet.xlsx").active
    assert ws is not None and [c.value for c in ws[2]][2:4] == ["Resolved", code]
    shown = d.cli("case", "show", code, "--as", "gus@example.net")
    assert REPORT_MARKER in shown.stdout
    refused = d.cli("case", "show", code, "--as", "bea@example.net", check=False)
    assert refused.returncode == 3 and REPORT_MARKER not in refused.stdout
    trail = d.cli("audit", code)
    assert "chain verified" in trail.stderr
    assert "conflict check started" in trail.stdout and "Ongoing -> Resolved" in trail.stdout
    assert REPORTER not in trail.stdout and "Jordan" not in trail.stdout

    # 12. A second report, then a new member: onboarding names the reported only; after
    #     /conflicts none Hal joins the open case and gets its report.
    d.send(make_report(sender="Other <other@example.com>", body="second report\n"),
           sender="other@example.com")
    second = mail.next(7)  # six members (Eve included) and the ack
    d.members.append({"name": "Hal Newcomer", "email": "hal@example.net"})
    d.write()
    d.cli("reload")
    (onboarding,) = mail.next(1)
    assert onboarding.to == "hal@example.net" and "Jordan Roe" in onboarding.text
    assert not reads(onboarding.raw, REPORTER) and not reads(onboarding.raw, REPORT_MARKER)
    member_address = onboarding["Reply-To"].addresses[0].addr_spec
    send_as(d, "hal", member_address, "/conflicts none")
    joined = mail.next(2)
    assert "part of 1 open case" in next(c for c in joined if "Thank you" in c.text).text
    assert any(b"second report" in c.raw for c in joined)
    del second

    # 13. Who saw what (SPEC 1, the table, cell by cell), reading every delivered message
    #     decoded (parts, transfer encodings, HTML entities): the markers all went encoded.
    everything = mail.all
    case_one = [c for c in everything if f"[{code}]" in str(c["Subject"]) or c.to == REPORTER]
    kinds = {"report": (REPORT_MARKER, REPORTER, LATER), "reported": ("Jordan Roe",),
             "posts": (POST_1, POST_2), "document": (NOTE,)}
    # Who may read what of case one, and from which message on they get nothing more.
    may = {
        "ada": {"report", "reported", "posts", "document"},
        "gus": {"report", "reported", "posts", "document"},
        "bea": {"report", "reported"}, "cy": {"report", "reported"},
        "dee": {"report", "reported", "posts"},
        "eve": set(), "hal": {"reported"}, REPORTER.split("@")[0]: set(),
    }
    left = {"bea": "declared a conflict", "cy": "deadline has passed", "dee": "recused"}
    for who, allowed in may.items():
        theirs = [c for c in everything if c.to.split("@")[0] == who]
        assert theirs or who == "eve", who
        gone = next((i for i, c in enumerate(theirs) if who in left
                     and left[who] in c.text), len(theirs))
        for i, c in enumerate(theirs):
            for kind, markers in kinds.items():
                for marker in markers:
                    if kind in allowed and i <= gone:
                        continue
                    if who == REPORTER.split("@")[0] and marker in (REPORT_MARKER, REPORTER,
                                                                     LATER):
                        continue  # the reporter's own mail
                    assert not reads(c.raw, marker), (who, kind, marker, str(c["Subject"]))
    # Positive controls: the reader does find each encoded marker where it must be.
    for marker in (REPORT_MARKER, POST_1, POST_2, LATER, NOTE):
        assert any(reads(c.raw, marker) for c in case_one if c.to == "gus@example.net"), marker
    # (a raw-bytes check would not see it where it travels encoded: the attached original;
    # shown inline, it is plain text)
    originals = [c.original() for c in intake if c.to != REPORTER]
    assert originals and not any(REPORT_MARKER.encode() in o for o in originals)
    assert all(REPORT_MARKER in " ".join(c.text.split()) for c in intake if c.to != REPORTER)
    assert reads(to(sent, REPORTER).raw, FOLLOWUP)

    # 14. Nothing of a thread post is left on disk.
    d.stop()
    for path in d.var.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for marker in (POST_1, POST_2, REPORT_MARKER, REPORTER, LATER, NOTE):
                assert marker.encode() not in data, (marker, path)
    assert subprocess is not None
