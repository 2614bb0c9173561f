"""The command table: each member command registered once with its usage and help; parsing."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from coc_mail.cases.work import Refusal, Work
from coc_mail.config import Member
from coc_mail.mail import quotes
from coc_mail.store import Case, utcnow


@dataclass(frozen=True)
class Command:
    """A parsed command: its name, the rest of its line, and the text on the lines below."""

    name: str
    args: str
    body: str


class UnknownCommand(ValueError):
    """A line that starts with '/' but names no command."""


CaseHandler = Callable[[Work, Case, Member, Command], None]
"""A command about one case: it runs only from a case address."""
Handler = Callable[[Work, Case | None, Member, Command], None]
"""A command that works from a member address (no case) and from a case address."""


@dataclass(frozen=True)
class Spec:
    """One registered command: what /help says of it, and what runs it."""

    name: str
    usage: str  # the usage line, e.g. "/involves NAME"
    help: str  # one line for /help
    handler: Handler
    needs_case: bool  # only from a case address; /help at a member address leaves it out
    plain: tuple[str, ...] = ()  # first lines that are this command without a '/'
    touches: bool = False  # running it marks the case active (``case.updated_at``)


TABLE: dict[str, Spec] = {}
"""Every command by name, in the order of /help (the order the modules register them)."""


def _register(spec: Spec) -> None:
    if spec.name in TABLE:
        raise ValueError(f"command /{spec.name} is registered twice")
    for answer in spec.plain:
        if any(answer in other.plain for other in TABLE.values()):
            raise ValueError(f"the plain answer {answer!r} is registered twice")
    TABLE[spec.name] = spec


def case_command(name: str, usage: str, help: str, *, plain: tuple[str, ...] = (),
                 touches: bool = True) -> Callable[[CaseHandler], CaseHandler]:
    """Register a command about one case, ``fn(work, case, member, cmd)``. From a member
    address it is refused; by default it marks the case active."""

    def register(fn: CaseHandler) -> CaseHandler:
        @functools.wraps(fn)
        def on_case(work: Work, case: Case | None, member: Member, cmd: Command) -> None:
            if case is None:
                raise Refusal(f"/{cmd.name} concerns one case: send it as a reply to a message "
                              "of that case (its Reply-To: is your address for the case).")
            fn(work, case, member, cmd)

        _register(Spec(name, usage, help, on_case, needs_case=True, plain=plain,
                       touches=touches))
        return fn

    return register


def general_command(name: str, usage: str, help: str, *, plain: tuple[str, ...] = (),
                    touches: bool = False) -> Callable[[Handler], Handler]:
    """Register a command that works with or without a case, ``fn(work, case | None, member,
    cmd)``: sent to a case address, ``case`` is that case."""

    def register(fn: Handler) -> Handler:
        _register(Spec(name, usage, help, fn, needs_case=False, plain=plain, touches=touches))
        return fn

    return register


def run(work: Work, case: Case | None, member: Member, cmd: Command) -> None:
    """Carry out a parsed command. What it refuses raises :class:`Refusal`, and then the case
    is not marked active either."""
    spec = TABLE[cmd.name]
    spec.handler(work, case, member, cmd)
    if spec.touches and case is not None:
        case.updated_at = utcnow()
        work.session.add(case)


def parse(text: str | list[str], stop: int | None = None) -> Command | None:
    """The command in a member's message, or None when it is a post for the thread.

    ``text`` is what a mail client shows of the message (see :func:`coc_mail.mail.readable.body`),
    as a string or as its lines; ``stop`` is where quoted mail or a signature begins (found
    by :func:`coc_mail.mail.quotes.first_quote` when not given). The first non-empty line before
    it decides: ``/name args`` is a command (unknown names raise :class:`UnknownCommand`); a
    first line of just a plain answer ("no conflict", "conflict") is its command. The
    command's body is the lines below it, up to ``stop``.
    """
    lines = text.replace("\r\n", "\n").split("\n") if isinstance(text, str) else list(text)
    if stop is None:
        stop = quotes.first_quote(lines)
    written = lines[:stop]
    while written and not written[0].strip():
        written.pop(0)
    if not written:
        return None
    first = " ".join(written[0].split())
    body = "\n".join(line.rstrip() for line in written[1:]).strip("\n")
    plain = re.sub(r"[.!\s]+$", "", first).strip().lower()
    answers = {answer: spec.name for spec in TABLE.values() for answer in spec.plain}
    if plain in answers:
        return Command(answers[plain], "", body)
    if not first.startswith("/"):
        return None
    name, _, args = first[1:].partition(" ")
    name = name.strip().lower()
    if name not in TABLE:
        raise UnknownCommand(name)
    return Command(name, args.strip(), body)


def usage(name: str) -> str:
    """The usage line of a command, as refusals quote it."""
    return f"Usage: {TABLE[name].usage}"


def help_text(*, case: bool) -> str:
    """The answer to /help: every command (at a member address, those that need no case)."""
    lines = ["Commands (the first line of your message; one command per message):", ""]
    for spec in TABLE.values():
        if case or not spec.needs_case:
            lines.append(f"  {spec.usage}\n      {spec.help}")
    lines += ["", "Anything else you send to a case address goes to the other cleared members",
              "of the case, and is not kept."]
    return "\n".join(lines) + "\n"
