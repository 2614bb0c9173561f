"""Member commands: the slash-command grammar, parsed from the first line of a member's mail."""

from __future__ import annotations

import re
from dataclasses import dataclass

from coc_mail.mail import quotes

# name -> (usage, one-line help). The order is the order of /help.
COMMANDS: dict[str, tuple[str, str]] = {
    "involves": ("/involves NAME", "name the reported person; starts the conflict check"),
    "noconflict": ("/noconflict", "answer the conflict check: you can take part"),
    "conflict": ("/conflict", "answer the conflict check: you cannot take part"),
    "recuse": ("/recuse", "leave the case now; you get nothing more about it"),
    "followup": ("/followup TEMPLATE  (free text on the lines below)",
                 "send a templated follow-up to the reporter; kept in the document"),
    "preview": ("/preview TEMPLATE  (free text on the lines below)",
                "send yourself the rendering of a follow-up"),
    "note": ("/note SECTION [YYYY-MM-DD]  (the text on the lines below)",
             "add a dated entry; SECTION: summary, scope, plan, consequences, organizers, "
             "reported"),
    "status": ('/status safety=yes|no|maybe repeat=yes|no|maybe actions="..." resolution="..."',
               "set status-sheet fields"),
    "resolve": ('/resolve "RESOLUTION"', "resolve the case"),
    "reopen": ("/reopen", "reopen a resolved case"),
    "doc": ("/doc", "mail the case document to yourself"),
    "discard": ("/discard", "not a report (spam, misdirected): delete the case and its document"),
    "statusreport": ("/statusreport", "mail yourself the status sheet of all cases"),
    "conflicts": ("/conflicts none | /conflicts NAME, NAME",
                  "after onboarding: declare your conflicts of interest"),
    "help": ("/help", "this list"),
}
CASE_ONLY = {
    "involves", "noconflict", "conflict", "recuse", "followup", "preview", "note", "status",
    "resolve", "reopen", "doc", "discard",
}
PLAIN_ANSWERS = {"no conflict": "noconflict", "noconflict": "noconflict", "conflict": "conflict"}


@dataclass(frozen=True)
class Command:
    """A parsed command: its name, the rest of its line, and the text on the lines below."""

    name: str
    args: str
    body: str


class UnknownCommand(ValueError):
    """A line that starts with '/' but names no command."""


def parse(text: str | list[str], stop: int | None = None) -> Command | None:
    """The command in a member's message, or None when it is a post for the thread.

    ``text`` is what a mail client shows of the message (see :func:`coc_mail.mail.readable.body`),
    as a string or as its lines; ``stop`` is where quoted mail or a signature begins (found
    by :func:`coc_mail.mail.quotes.first_quote` when not given). The first non-empty line before
    it decides: ``/name args`` is a command (unknown names raise :class:`UnknownCommand`); a
    first line of just "no conflict" or "conflict" answers the conflict check. The command's
    body is the lines below it, up to ``stop``.
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
    if plain in PLAIN_ANSWERS:
        return Command(PLAIN_ANSWERS[plain], "", body)
    if not first.startswith("/"):
        return None
    name, _, args = first[1:].partition(" ")
    name = name.strip().lower()
    if name not in COMMANDS:
        raise UnknownCommand(name)
    return Command(name, args.strip(), body)


def usage(name: str) -> str:
    return f"Usage: {COMMANDS[name][0]}"


def help_text(*, case: bool) -> str:
    lines = ["Commands (the first line of your message; one command per message):", ""]
    for name, (use, text) in COMMANDS.items():
        if case or name not in CASE_ONLY:
            lines.append(f"  {use}\n      {text}")
    lines += ["", "Anything else you send to a case address goes to the other cleared members",
              "of the case, and is not kept."]
    return "\n".join(lines) + "\n"
