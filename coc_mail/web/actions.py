"""Case commands from the web: the member's form made into the command they would mail and
run through the command table (the mail commands' own code, audited alike); the answer a
mail command would send comes back to the page instead."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlmodel import Session, select

from coc_mail.app import App
from coc_mail.cases import commands
from coc_mail.cases.commands.table import Command
from coc_mail.cases.work import MAX_ARGS, Refusal, Work
from coc_mail.config import Member
from coc_mail.delivery.outbox import Outbox
from coc_mail.errors import TemplateProblem
from coc_mail.mail import readable
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


def command_args(name: str, fields: dict[str, str]) -> str:
    """The rest of the command's line, as the member would type it after ``/name``. Fields
    are one line each (``one_line``), quoted where the command splits its line."""
    if name == "note":
        words = [fields.get("section", "")]
        if fields.get("date"):
            words.append(fields["date"])
        return " ".join(one_line(w, 40) for w in words)
    if name == "status":
        pairs = [f"{key}={fields[key]}" for key in ("safety", "repeat", "actions", "resolution")
                 if fields.get(key, "").strip()]
        return " ".join(shlex.quote(one_line(p, MAX_ARGS)) for p in pairs)
    if name in ("preview", "followup"):
        return one_line(fields.get("template", ""), 64)
    if name == "resolve":
        return shlex.quote(one_line(fields.get("resolution", ""), MAX_ARGS))
    if name == "involves":
        return one_line(fields.get("name", ""), MAX_ARGS)
    return ""


def run(app: App, member: Member, code_name: str, name: str, fields: dict[str, str],
        on_queued: Callable[[], None]) -> Outcome:
    """Run web command ``name`` for ``member`` on case ``code_name``, in one transaction.

    The form is the command already: it runs through the command table (``commands.run``,
    the mail commands' own code and refusals, audited alike), never as a thread post, and
    its text is taken whole: no quote or signature rule cuts what was typed in a text box
    (the follow-up's own check for coc-mail addresses and thread senders still applies)."""
    if name not in WEB_COMMANDS:
        raise ValueError(name)
    text = fields.get("text", "").replace("\r\n", "\n").replace("\r", "\n")
    args = command_args(name, fields)
    address = app.addresses.case(code_name, member.handle)
    content = (
        f"From: {member.email}\r\nTo: {address}\r\nSubject: web\r\n"
        f"Message-ID: {new_message_id(app.domain)}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode() + f"/{name} {args}\n{text}".replace("\n", "\r\n").encode()
    msg = Incoming(Envelope(member.email, [address]), content)
    outcome = Outcome()
    with Session(app.engine) as session:
        case = session.exec(
            select(Case).where(Case.code_name == code_name).with_for_update()).first()
        if case is None:
            return outcome
        outbox = Outbox(app, session)
        work = WebWork(app, session, outbox, msg)
        lines = text.split("\n")
        work.body = readable.Body(lines, len(lines))  # all of it is what the member wrote
        try:
            commands.run(work, case, member, Command(name, args, text.strip("\n")))
        except Refusal as refusal:
            work.answers.append(str(refusal))
        except TemplateProblem as problem:
            work.answers.append(f"Nothing was sent: {problem}")
        outcome.queued = outbox.write(session)
        session.commit()
    outcome.answers = work.answers
    if outcome.queued:
        on_queued()
    return outcome
