"""/note: a dated, authored entry in one section of the case document (SPEC 4.6)."""

from __future__ import annotations

import datetime as dt

from coc_mail.cases import document
from coc_mail.cases.commands.table import Command, case_command, usage
from coc_mail.cases.work import Refusal, Work
from coc_mail.config import Member
from coc_mail.store import Case


@case_command("note", "/note SECTION [YYYY-MM-DD]  (the text on the lines below)",
              "add a dated entry; SECTION: summary, scope, plan, consequences, organizers, "
              "reported")
def note(work: Work, case: Case, member: Member, cmd: Command) -> None:
    work.require_receiving(case, member)
    parts = cmd.args.split()
    if not parts or parts[0].lower() not in document.SECTIONS or len(parts) > 2:
        raise Refusal(usage("note") + "\nSections: " + ", ".join(document.SECTIONS))
    section = parts[0].lower()
    date = None
    if len(parts) == 2:
        try:
            date = dt.date.fromisoformat(parts[1])
        except ValueError:
            raise Refusal(f"{parts[1]!r} is not a date like 2026-11-25.\n"
                          + usage("note")) from None
    if not cmd.body.strip():
        raise Refusal("The note is empty: write it on the lines below the command.\n"
                      + usage("note"))
    entry = document.add(work.app.keys, work.session, case, section=section,
                         author=member.name, body=work.redactor(case).text(cmd.body),
                         date=date)
    work.audit(case, member.handle, f"note added ({section})")
    work.reply(member, case, f"Added to {document.SECTIONS[section]} "
                             f"({entry.entry_date:%Y-%m-%d}).\n")
