"""Member commands: the slash-command grammar, parsed from the first line of a member's mail."""

from __future__ import annotations

import re
from dataclasses import dataclass

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
_END_OF_BODY = re.compile(r"^(-- ?$|>|On .{4,200} wrote:\s*$|-{3,} ?Original Message)")


@dataclass(frozen=True)
class Command:
    """A parsed command: its name, the rest of its line, and the text on the lines below."""

    name: str
    args: str
    body: str


class UnknownCommand(ValueError):
    """A line that starts with '/' but names no command."""


def parse(text: str) -> Command | None:
    """The command in a member's message, or None when it is a post for the thread.

    The first non-empty line decides: ``/name args`` is a command (unknown names raise
    :class:`UnknownCommand`); a first line of just "no conflict" or "conflict" answers the
    conflict check. The body is what follows, up to a signature or quoted text.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        return None
    first = lines[0].strip()
    rest: list[str] = []
    for line in lines[1:]:
        if _END_OF_BODY.match(line):
            break
        rest.append(line)
    body = "\n".join(rest).strip("\n")
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
