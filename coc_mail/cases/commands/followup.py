"""Follow-ups (SPEC 4.5): /followup renders a template for the reporter, /preview for yourself."""

from __future__ import annotations

import re
from email import message_from_bytes
from email.policy import compat32

from coc_mail.cases import document
from coc_mail.cases.commands.table import Command, case_command, usage
from coc_mail.cases.work import Refusal, Work
from coc_mail.config import Member
from coc_mail.mail import readable
from coc_mail.mail.compose import one_line, text_message
from coc_mail.mail.message import header_block
from coc_mail.store import Case, utcnow

INTERNAL_TEMPLATES = {"conflict-check", "onboarding", "reminder"}


@case_command("followup", "/followup TEMPLATE  (free text on the lines below)",
              "send a templated follow-up to the reporter; kept in the document")
def followup(work: Work, case: Case, member: Member, cmd: Command) -> None:
    work.require_receiving(case, member)
    if case.reporter is None:
        raise Refusal("This case has no reporter address to write to; nothing was sent.")
    subject, body = render_followup(work, case, cmd)
    app = work.app
    reporter = app.keys.open_text(case.reporter, "cases.reporter")
    work.outbox.queue(
        case=case, role="reporter", recipient=reporter,
        in_reply_to=report_message_id(work, case),  # threads with the report they sent
        build=lambda ids: text_message(
            from_name=app.settings.committee.name, from_addr=app.alias, to=reporter,
            reply_to=app.addresses.reporter(case.code_name), subject=subject, body=body,
            ids=ids, loop=app.alias,
        ),
    )
    document.add(app.keys, work.session, case, section=document.FOLLOWUP,
                 author=member.name, body=f"Subject: {subject}\n\n{body}")
    case.last_followup_at = utcnow()
    work.audit(case, member.handle, f"follow-up sent ({cmd.args.split()[0]})")
    work.reply(member, case, f"Sent to the reporter and kept in the document:\n\n"
                             f"Subject: {subject}\n\n{body}" + left_out(work))


def report_message_id(work: Work, case: Case) -> str | None:
    """The Message-ID of the report, as the reporter's client knows it (None without one)."""
    if case.report is None:
        return None
    report = work.app.keys.open(case.report, "cases.report")
    head = message_from_bytes(header_block(report), policy=compat32)
    mid = one_line(str(head.get("Message-ID", "") or ""), 250)
    return mid if re.fullmatch(r"<[^<>\s]+>", mid) else None


@case_command("preview", "/preview TEMPLATE  (free text on the lines below)",
              "send yourself the rendering of a follow-up")
def preview(work: Work, case: Case, member: Member, cmd: Command) -> None:
    work.require_receiving(case, member)
    subject, body = render_followup(work, case, cmd)
    work.reply(member, case, f"Preview (not sent):\n\nSubject: {subject}\n\n{body}"
               + left_out(work))


def render_followup(work: Work, case: Case, cmd: Command) -> tuple[str, str]:
    """The follow-up's subject and text: the template rendered with what the member wrote
    (up to the first quoted mail, signature or line naming our own mail). Refused when
    the result would still show a coc-mail address or the thread's "via <code name>":
    those only come from quoted mail."""
    template = cmd.args.split()[0] if cmd.args.split() else ""
    if not template:
        raise Refusal(usage(cmd.name) + "\nTemplates: "
                      + ", ".join(n for n in work.app.templates.names()
                                  if n not in INTERNAL_TEMPLATES))
    if template in INTERNAL_TEMPLATES:
        raise Refusal(f"{template} is not a template for the reporter.")
    if template not in work.app.templates.names():
        raise Refusal(f"No template named {template}. Templates: " + ", ".join(
            n for n in work.app.templates.names() if n not in INTERNAL_TEMPLATES))
    if not cmd.body.strip() and left_out(work):
        raise Refusal("Nothing was sent: everything below the command looks like quoted "
                      "mail, a signature or a line naming our own mail (a coc-mail "
                      "address, a thread sender). Write your text on the lines right "
                      "below the command, above any quote.")
    rendered = work.app.templates.render(
        template, committee=work.app.settings.committee, case=case, text=cmd.body,
    )
    subject = rendered.subject or f"About your report ({case.code_name})"
    # What the member wrote ends before any line naming our own mail (work.body); the
    # whole rendering is checked again, so no template or unforeseen quote form can send
    # a coc-mail address or a thread sender's name to the reporter.
    redactor = work.redactor(case)
    via = re.compile(r"(?i)\bvia\s+" + r"\s+".join(map(re.escape, case.code_name.split())))
    members = [m.email for m in work.app.settings.members]
    for number, line in enumerate([subject, *rendered.body.split("\n")]):
        folded = readable.searchable(line)
        where = "the subject" if number == 0 else f"line {number} of the follow-up"
        if redactor.found_in(line) or via.search(folded):
            raise Refusal(
                f"Nothing was sent: {where} names our own mail (a coc-mail address or a "
                f'"via {case.code_name}" sender), which quoted mail brings in. Write the '
                "text above any quoted mail, check it with /preview, and send it again."
            )
        if any(address in folded for address in members):
            raise Refusal(
                f"Nothing was sent: {where} holds a committee member's address (a "
                "signature?). Follow-ups go out in the committee's name, and the reporter "
                "answers the committee: remove it and send it again."
            )
    return subject, rendered.body


def left_out(work: Work) -> str:
    """A note for the member when lines below their text were not used (a quote)."""
    rest = [line for line in work.body.lines[work.body.stop:] if line.strip()]
    if not rest:
        return ""
    return (f"\n({len(rest)} line(s) below your text were left out: quoted mail or a "
            "signature.)\n")
