"""/doc: the case document, mailed to the asking member only (SPEC 4.6)."""

from __future__ import annotations

from coc_mail.cases import document
from coc_mail.cases.commands.table import Command, case_command
from coc_mail.cases.work import Work
from coc_mail.config import Member
from coc_mail.store import Case


@case_command("doc", "/doc", "mail the case document to yourself")
def doc(work: Work, case: Case, member: Member, cmd: Command) -> None:
    work.require_receiving(case, member)
    if document.notice_mode(work.app.settings):  # the document stays out of mailboxes
        work.reply(member, case, "The case document is in the web view.\n\n"
                   + document.link_lines(work.app.settings, case),
                   subject=f"[{case.code_name}] Case document")
        return
    work.reply(member, case, document.render(work.app.keys, work.session, case),
               subject=f"[{case.code_name}] Case document")
