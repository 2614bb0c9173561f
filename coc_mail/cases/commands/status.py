"""The case's status (SPEC 4.6): /status sets status-sheet fields, /resolve and /reopen."""

from __future__ import annotations

import shlex

from coc_mail.cases import document
from coc_mail.cases.commands.table import Command, case_command, usage
from coc_mail.cases.status import case_row_text, warnings_text
from coc_mail.cases.work import Refusal, Work
from coc_mail.config import Member
from coc_mail.store import Case, utcnow

MAX_FIELD = 500  # characters of one status-sheet field
ANSWERS = {"yes": "Yes", "no": "No", "maybe": "Maybe"}


@case_command("status",
              '/status safety=yes|no|maybe repeat=yes|no|maybe actions="..." resolution="..."',
              "set status-sheet fields")
def status(work: Work, case: Case, member: Member, cmd: Command) -> None:
    work.require_receiving(case, member)
    try:
        pairs = shlex.split(cmd.args)
    except ValueError as exc:
        raise Refusal(f"{exc}.\n{usage('status')}") from None
    fields: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        key = key.lower()
        if not eq or key not in ("safety", "repeat", "actions", "resolution"):
            raise Refusal(f"{pair!r} is not a field.\n{usage('status')}")
        if key in ("safety", "repeat"):
            if value.lower() not in ANSWERS:
                raise Refusal(f"{key} must be yes, no or maybe.\n{usage('status')}")
            value = ANSWERS[value.lower()]
        if len(value) > MAX_FIELD:
            raise Refusal(f"{key} is {len(value)} characters long; {MAX_FIELD} at most "
                          "(the sheet wants a few vague words). Nothing changed.")
        fields[key] = value.strip()
    if not fields:
        raise Refusal(usage("status"))
    document.set_sheet(work.app.keys, case, fields)
    work.audit(case, member.handle, "status sheet updated: " + ", ".join(sorted(fields)))
    work.reply(member, case, "Status sheet updated:\n\n" + case_row_text(work.app, case)
               + warnings_text(work.app, work.session, [case]))


@case_command("resolve", '/resolve "RESOLUTION"', "resolve the case")
def resolve(work: Work, case: Case, member: Member, cmd: Command) -> None:
    work.require_receiving(case, member)
    try:
        words = shlex.split(cmd.args)
    except ValueError as exc:
        raise Refusal(f"{exc}.\n{usage('resolve')}") from None
    resolution = " ".join(words).strip()
    if not resolution:
        raise Refusal(usage("resolve"))
    if case.status == "Resolved":
        raise Refusal("The case is already resolved; /reopen it first.")
    if case.status == "New":
        raise Refusal("Name the reported person first (/involves NAME), or /discard the "
                      "case if it is not a report.")
    case.status, case.resolved_at = "Resolved", utcnow()
    document.set_sheet(work.app.keys, case, {"resolution": resolution})
    work.audit(case, member.handle, "status Ongoing -> Resolved")
    work.reply(member, case, f'Case "{case.code_name}" is resolved: {resolution}\n'
               + warnings_text(work.app, work.session, [case]))


@case_command("reopen", "/reopen", "reopen a resolved case")
def reopen(work: Work, case: Case, member: Member, cmd: Command) -> None:
    work.require_receiving(case, member)
    if case.status != "Resolved":
        raise Refusal("Only a resolved case can be reopened; nothing changed.")
    if case.purged_at is not None:
        raise Refusal("The document of this case was purged; it cannot be reopened.")
    case.status, case.resolved_at, case.purge_warned = "Ongoing", None, False
    work.audit(case, member.handle, "status Resolved -> Ongoing")
    work.reply(member, case, f'Case "{case.code_name}" is open again.\n')
