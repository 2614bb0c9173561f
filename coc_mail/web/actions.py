"""Case commands from the web: the member's form made into the message they would mail, run
through the mail commands' own dispatch (:func:`coc_mail.cases.member.member_mail`), audited
alike; the answer a mail command would send comes back to the page instead."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlmodel import Session, select

from coc_mail.app import App
from coc_mail.cases.member import member_mail
from coc_mail.cases.work import Work
from coc_mail.config import Member
from coc_mail.delivery.outbox import Outbox
from coc_mail.mail.compose import new_message_id, one_line
from coc_mail.mail.message import Envelope, Incoming
from coc_mail.store import Case

# What the case page offers; anything else is refused before it runs.
WEB_COMMANDS = ("note", "status", "preview", "followup", "resolve", "reopen", "recuse",
                "involves", "discard")


class WebWork(Work):
    """A :class:`Work` whose answers are shown on the page rather than mailed."""

    def __init__(self, app: App, session: Session, outbox: Outbox, msg: Incoming) -> None:
        super().__init__(app, session, outbox, msg)
        self.answers: list[str] = []

    def reply(self, member: Member, case: Case | None, body: str, subject: str = "") -> None:
        self.answers.append(body)


@dataclass
class Outcome:
    """What running a command from the page did."""

    answers: list[str] = field(default_factory=list)
    queued: int = 0  # copies queued (the delivery workers are woken when there are any)


def command_line(name: str, fields: dict[str, str]) -> str:
    """The first line of the message a member would mail for this form."""
    if name == "note":
        words = [fields.get("section", "")]
        if fields.get("date"):
            words.append(fields["date"])
        return "/note " + " ".join(one_line(w, 40) for w in words)
    if name == "status":
        pairs = [f"{key}={fields[key]}" for key in ("safety", "repeat", "actions", "resolution")
                 if fields.get(key, "").strip()]
        return "/status " + " ".join(shlex.quote(one_line(p, 400)) for p in pairs)
    if name in ("preview", "followup"):
        return f"/{name} {one_line(fields.get('template', ''), 64)}"
    if name == "resolve":
        return "/resolve " + shlex.quote(one_line(fields.get("resolution", ""), 400))
    if name == "involves":
        return "/involves " + one_line(fields.get("name", ""), 400)
    return f"/{name}"


def run(app: App, member: Member, code_name: str, name: str, fields: dict[str, str],
        on_queued: Callable[[], None]) -> Outcome:
    """Run web command ``name`` for ``member`` on case ``code_name``, in one transaction."""
    if name not in WEB_COMMANDS:
        raise ValueError(name)
    text = command_line(name, fields) + "\n" + fields.get("text", "").replace("\r\n", "\n")
    address = app.addresses.case(code_name, member.handle)
    content = (
        f"From: {member.email}\r\nTo: {address}\r\nSubject: web\r\n"
        f"Message-ID: {new_message_id(app.domain)}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode() + text.replace("\n", "\r\n").encode()
    msg = Incoming(Envelope(member.email, [address]), content)
    outcome = Outcome()
    with Session(app.engine) as session:
        case = session.exec(
            select(Case).where(Case.code_name == code_name).with_for_update()).first()
        if case is None:
            return outcome
        outbox = Outbox(app, session)
        work = WebWork(app, session, outbox, msg)
        member_mail(work, case, member)
        outcome.queued = outbox.write(session)
        session.commit()
    outcome.answers = work.answers
    if outcome.queued:
        on_queued()
    return outcome
