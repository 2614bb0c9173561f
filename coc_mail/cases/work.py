"""One member's message being handled: what every command and post needs, and the dispatch."""

from __future__ import annotations

from sqlmodel import Session

from coc_mail.app import App
from coc_mail.cases import audit, document
from coc_mail.cases.standing import Standing, receiving_members, standings
from coc_mail.config import Member
from coc_mail.delivery.outbox import Outbox
from coc_mail.mail import quotes, readable
from coc_mail.mail.compose import ForwardBody, forward_head, mailbox
from coc_mail.mail.message import Incoming, without_client_fields
from coc_mail.mail.redact import Redactor
from coc_mail.store import Case

MAX_ARGS = 2000  # characters on a command's line


class Refusal(Exception):
    """A command or post that cannot be carried out; its text goes back to the member."""


class Work:
    """One member's message, handled: a command for a case or for no case, or a thread post.

    Each command is a function in :mod:`coc_mail.cases.commands`, registered in its table;
    this class holds what they all use. It works inside one processing unit; every command
    answers its sender and is never relayed."""

    def __init__(self, app: App, session: Session, outbox: Outbox, msg: Incoming) -> None:
        self.app = app
        self.session = session
        self.outbox = outbox
        self.msg = msg
        self.body = readable.Body([], 0)

    def redactor(self, case: Case | None) -> Redactor:
        """Removes our addresses and every token a member could quote into mail about
        ``case``: each member's member token and case token, and the reporter's."""
        a = self.app.addresses
        secrets = [a.member_token(m.handle) for m in self.app.settings.members]
        if case is not None:
            secrets += [a.case_token(case.code_name, m.handle) for m in self.app.settings.members]
            secrets.append(a.reporter_token(case.code_name))
        return Redactor(self.app.alias, secrets)

    def quoted_mail_marks(self, case: Case | None) -> list[quotes.Guard]:
        """Lines that can only come from quoting our own mail (see quotes.our_mail)."""
        return quotes.our_mail(self.app.alias, case.code_name if case else None,
                               self.redactor(case).found_in)

    # -- the entry point ----------------------------------------------------------------------
    # -- helpers ------------------------------------------------------------------------------
    def standing(self, case: Case, member: Member) -> Standing | None:
        return standings(self.app, self.session, case).get(member.handle)

    def receiving(self, case: Case) -> list[Member]:
        handles = set(receiving_members(self.app, self.session, case))
        return [m for m in self.app.settings.members if m.handle in handles]

    def require_receiving(self, case: Case, member: Member) -> None:
        if member not in self.receiving(case):
            raise Refusal(self.why_not(case, member))

    def why_not(self, case: Case, member: Member) -> str:
        st = self.standing(case, member)
        if st is Standing.ASKED:
            return (f'Answer the conflict check of case "{case.code_name}" first: reply '
                    "/noconflict or /conflict. Nothing was relayed or changed.")
        reason = {
            Standing.CONFLICTED: "you declared a conflict of interest",
            Standing.RECUSED: "you recused yourself",
            Standing.SILENT: "you did not answer the conflict check before its deadline",
        }.get(st) if st else None
        text = "You are not part of this case"
        return f"{text}{' (' + reason + ')' if reason else ''}. Nothing was relayed or changed."

    def reply(self, member: Member, case: Case | None, body: str, subject: str = "") -> None:
        """Answer the member who wrote (and nobody else)."""
        msg = self.msg
        subj = subject or msg.subject or "coc-mail"
        if not subject and not subj.lower().startswith("re:"):
            subj = f"Re: {subj}"
        if case is not None and f"[{case.code_name}]" not in subj:
            subj = f"[{case.code_name}] {subj}"
        self.outbox.to_member(member, case, subj, body, in_reply_to=msg.message_id or None)

    def audit(self, case: Case, actor: str, action: str) -> None:
        audit.record(self.app.keys, self.session, case.code_name, actor, action)

    def brief(self, case: Case, member: Member, why: str) -> None:
        """Send a newly cleared member the report, attached as received."""
        if case.report is None:
            return
        app = self.app
        reported = document.reported_of(app.keys, case)
        if document.notice_mode(app.settings):
            self.outbox.to_member(
                member, case, f"[{case.code_name}] The report",
                f'{why}\nCase "{case.code_name}", opened {case.opened_at:%Y-%m-%d %H:%M} UTC'
                + (f", involves {reported}" if reported else "")
                + ".\nThe report and the case document are in the web view. /help lists the "
                "commands.\n\n" + document.link_lines(app.settings, case))
            return
        report = app.keys.open(case.report, "cases.report")
        intro = (
            f'{why}\nCase "{case.code_name}", opened {case.opened_at:%Y-%m-%d %H:%M} UTC'
            + (f", involves {reported}" if reported else "")
            + ".\nThe report follows, and is attached. /doc sends you the case document; /help "
            "lists the commands.\n"
        )
        if app.settings.intake.strip_client_headers:
            report = without_client_fields(report)
        body = ForwardBody.build(intro, report)
        self.outbox.queue(
            case=case, role=member.handle, recipient=member.email,
            body=self.outbox.share(body.parts),
            build=lambda ids: forward_head(
                from_name=app.settings.committee.name, from_addr=app.alias,
                to=mailbox(member.name, member.email, "To"),
                reply_to=app.addresses.case(case.code_name, member.handle),
                subject=f"[{case.code_name}] The report", body=body,
                ids=ids, loop=app.alias, auth_results=None,
            ),
        )
