"""One accepted message's unit of work: its session and outbox, and what every kind does with it."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlmodel import Session

from coc_mail.app import App
from coc_mail.cases import document
from coc_mail.config import Member
from coc_mail.delivery.outbox import Outbox
from coc_mail.mail import dkim
from coc_mail.mail.compose import ForwardBody, forward_head, mailbox, text_message
from coc_mail.mail.message import Incoming, client_fields, without_client_fields
from coc_mail.store import Case, count_up, utcnow

NOTICES_PER_HOUR = 3


@dataclass
class Unit:
    """One message being handled: the session it reads and writes, the copies it queues, and
    the cases it has reached already (each target is handled once per message)."""

    app: App
    session: Session
    msg: Incoming
    outbox: Outbox
    row_id: int = 0
    done_cases: set[int] = field(default_factory=set)
    _verdict: dkim.Verdict | None = None
    _verified: bool = False
    bodies: dict[str, tuple[ForwardBody, int]] = field(default_factory=dict)  # per intro text

    def verdict(self) -> dkim.Verdict | None:
        """The inbound DKIM verdict, computed once (a DNS lookup; no write lock is held)."""
        if not self._verified:
            self._verified = True
            if self.app.settings.dkim.verify_inbound:
                self._verdict = dkim.verify(
                    self.msg.content, self.app.dnsfunc, self.app.settings.dkim.dns_timeout,
                    self.app.settings.processing.max_dkim_signed_headers,
                )
        return self._verdict

    def dkim_warning(self) -> list[str]:
        """Lines that warn the members when the sender's DKIM signature failed."""
        verdict = self.verdict()
        if verdict is None or verdict.result not in ("fail", "permerror"):
            return []
        return [
            f"WARNING: the sender's DKIM signature did not verify (dkim={verdict.result}).",
            "The sender address may be forged; be careful before replying to it.",
            "",
        ]

    def forward(self, case: Case, member: Member, intro: str,
                original: bytes | None = None, notice: str = "New in the case") -> None:
        """Queue a copy of the message, attached unaltered (or ``original``: the message with
        our addresses taken out), for one member; copies with one intro share one body. In
        notice mode (``intake.deliver``) the intro and a link go instead, under the subject
        ``[code name] <notice>``."""
        app, msg = self.app, self.msg
        committee = app.settings.committee
        if document.notice_mode(app.settings):  # the intro and a link, nothing of the message
            self.outbox.queue(
                case=case, role=member.handle, recipient=member.email,
                build=lambda ids: text_message(
                    from_name=committee.name, from_addr=app.alias,
                    to=mailbox(member.name, member.email, "To"),
                    reply_to=app.addresses.case(case.code_name, member.handle),
                    subject=f"[{case.code_name}] {notice}",  # the message's own may name people
                    body=intro.rstrip("\n") + "\n\n" + document.link_lines(app.settings, case),
                    ids=ids, loop=app.alias,
                ),
            )
            return
        verdict = self.verdict()
        auth = verdict.header_value(app.settings.server.hostname) if verdict else None
        shared = self.bodies.get(intro)
        if shared is None:
            content = msg.content if original is None else original
            if app.settings.intake.strip_client_headers:
                content = without_client_fields(content)
            built = ForwardBody.build(intro, content)
            shared = self.bodies[intro] = (built, self.outbox.share(built.parts))
        body, stored = shared
        self.outbox.queue(
            case=case,
            role=member.handle,
            recipient=member.email,
            body=stored,
            build=lambda ids: forward_head(
                from_name=committee.name,
                from_addr=app.alias,
                to=mailbox(member.name, member.email, "To"),
                reply_to=app.addresses.case(case.code_name, member.handle),
                subject=msg.cleaned_subject(case.code_name),
                body=body,
                ids=ids,
                loop=app.alias,
                auth_results=auth,
            ),
        )

    def client_note(self) -> list[str]:
        """Lines for a copy's intro: which fields of the message show where it was sent from,
        and whether they were taken out of the attached copy."""
        found = client_fields(self.msg.content)
        if not found or document.notice_mode(self.app.settings):  # nothing is attached
            return []
        names = ", ".join(f"{n} {name}" if n > 1 else name for name, n in found.items())
        if self.app.settings.intake.strip_client_headers:
            return [f"The message carried {names}, which show where it was sent from (its",
                    "network address, client or provider): they are not in the attached copy",
                    "(intake.strip_client_headers); the case document keeps the message whole.",
                    ""]
        return [f"The attached message carries {names}, which show where it was sent from",
                "(its network address, client or provider).", ""]

    def notice_allowed(self, member: Member) -> bool:
        """At most NOTICES_PER_HOUR "ignored" notices to one member in an hour (the From: of
        what caused them may be forged: a forger cannot flood the member)."""
        now = utcnow()
        tag = self.app.keys.tag("ignored-notice", member.handle, f"{now:%Y%m%d%H}")
        return count_up(self.session, tag, now.date()) <= NOTICES_PER_HOUR

    def reply_to_member(self, case: Case | None, member: Member, body: str) -> None:
        """Answer a member about this message (and nobody else)."""
        msg = self.msg
        subject = f"Re: {msg.subject}" if msg.subject else "coc-mail"
        self.outbox.to_member(member, case, subject, body, in_reply_to=msg.message_id or None)
