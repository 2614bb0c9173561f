"""The command table: every command registered once, /help and the parser read it alike."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from coc_mail import config
from coc_mail.app import App, build
from coc_mail.cases import commands
from coc_mail.cases.commands.table import case_command, general_command
from coc_mail.cases.member import member_mail
from coc_mail.cases.work import Work
from coc_mail.config import Member
from coc_mail.delivery.outbox import Outbox
from coc_mail.mail.message import Envelope, Incoming
from coc_mail.store import Case
from tests.helpers import Daemon, make_report, wire

HELP_ORDER = [
    "involves", "noconflict", "conflict", "recuse", "followup", "preview", "note", "status",
    "resolve", "reopen", "doc", "discard", "statusreport", "conflicts", "help",
]


def test_the_table_holds_every_command_in_help_order() -> None:
    assert list(commands.TABLE) == HELP_ORDER
    for name, spec in commands.TABLE.items():
        assert spec.name == name
        assert spec.usage.startswith(f"/{name}") and spec.help.strip(), name
        assert commands.usage(name) == f"Usage: {spec.usage}"
    general = [n for n, s in commands.TABLE.items() if not s.needs_case]
    assert general == ["statusreport", "conflicts", "help"]
    touching = {n for n, s in commands.TABLE.items() if s.touches}
    assert touching == set(HELP_ORDER[:11])  # every case command but /discard


@pytest.mark.parametrize("case", [True, False])
def test_help_lists_exactly_the_table(case: bool) -> None:
    text = commands.help_text(case=case)
    listed = [line.strip() for line in text.splitlines() if line.startswith("  /")]
    want = [s for s in commands.TABLE.values() if case or not s.needs_case]
    assert listed == [s.usage for s in want]
    for spec in want:
        assert f"  {spec.usage}\n      {spec.help}\n" in text
    assert text.startswith("Commands (the first line of your message; one command per message)")


def test_parse_knows_every_name_and_plain_answer() -> None:
    for name in commands.TABLE:
        cmd = commands.parse(f"/{name.upper()}  some   args\nbody line\n")
        assert cmd == commands.Command(name, "some args", "body line")
    plain = {a: s.name for s in commands.TABLE.values() for a in s.plain}
    assert plain == {"no conflict": "noconflict", "noconflict": "noconflict",
                     "conflict": "conflict"}
    for answer, name in plain.items():
        assert commands.parse(f"{answer.title()}!\n") == commands.Command(name, "", "")
    with pytest.raises(commands.UnknownCommand):
        commands.parse("/nosuchcommand")
    assert commands.parse("just a post") is None


def test_a_command_is_registered_once() -> None:
    with pytest.raises(ValueError, match="twice"):
        general_command("help", "/help", "again")(lambda work, case, member, cmd: None)
    assert commands.TABLE["help"].help == "this list"


@pytest.fixture
def app(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> App:
    d = Daemon(tmp_path, sqlite_url)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").mkdir(exist_ok=True)
    return build(config.load(d.config), create_keys=True)


@pytest.fixture
def registered() -> Iterator[list[tuple[str, Case | None, str]]]:
    """Two commands registered for the test (``/echo`` anywhere, ``/poke`` about a case),
    taken out of the table afterwards."""
    calls: list[tuple[str, Case | None, str]] = []

    @general_command("echo", "/echo WORDS", "answer with the words")
    def echo(work: Work, case: Case | None, member: Member, cmd: commands.Command) -> None:
        calls.append(("echo", case, cmd.args))
        work.reply(member, case, f"echo: {cmd.args}\n")

    @case_command("poke", "/poke", "poke the case")
    def poke(work: Work, case: Case, member: Member, cmd: commands.Command) -> None:
        calls.append(("poke", case, cmd.args))

    try:
        yield calls
    finally:
        commands.TABLE.pop("echo", None)
        commands.TABLE.pop("poke", None)


def mail_from_member(app: App, body: str, case: Case | None = None) -> list[str]:
    """Hand ``body`` to the member-mail path as ada's mail to her member address (or her
    address for ``case``); the text of each answer it queued, read back from the outbox."""
    ada = next(m for m in app.settings.members if m.handle == "ada")
    to = app.addresses.case(case.code_name, "ada") if case else app.addresses.member("ada")
    raw = wire(make_report(sender=f"Ada <{ada.email}>", to=to, subject="cmd", body=body))
    with Session(app.engine) as session:
        outbox = Outbox(app, session)
        member_mail(Work(app, session, outbox, Incoming(Envelope(ada.email, [to]), raw)),
                    case, ada)
    answers = []
    for pending in outbox.pending:
        assert pending.recipient == ada.email and pending.body is None
        sent = message_from_bytes(app.keys.open(pending.sealed, "outbound.content"),
                                  policy=default)
        part = sent.get_body(("plain",))
        assert part is not None
        answers.append(part.get_content().replace("\r\n", "\n"))
    return answers


def test_a_new_command_is_in_help_and_dispatched(
    app: App, registered: list[tuple[str, Any, str]]
) -> None:
    assert list(commands.TABLE)[-2:] == ["echo", "poke"]
    assert "  /echo WORDS\n      answer with the words\n" in commands.help_text(case=False)
    assert "/poke" not in commands.help_text(case=False)
    assert "  /poke\n      poke the case\n" in commands.help_text(case=True)
    assert commands.parse("/echo hi there") == commands.Command("echo", "hi there", "")

    assert mail_from_member(app, "/echo hi there\n") == ["echo: hi there\n"]
    assert registered == [("echo", None, "hi there")]
    replies = mail_from_member(app, "/help\n")
    assert replies == [commands.help_text(case=False)] and "/echo WORDS" in replies[0]
    replies = mail_from_member(app, "/poke\n")
    assert replies[0].startswith("/poke concerns one case: send it as a reply")
    assert registered == [("echo", None, "hi there")]


def test_a_new_case_command_runs_on_its_case_and_marks_it_active(
    app: App, registered: list[tuple[str, Any, str]]
) -> None:
    then = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    case = Case(code_name="home shelf", reporter_key="k", updated_at=then)
    assert mail_from_member(app, "/poke now\n", case) == []
    assert registered == [("poke", case, "now")] and case.updated_at > then
    case.updated_at = then
    assert mail_from_member(app, "/echo x\n", case) == ["echo: x\n"]
    assert registered[-1] == ("echo", case, "x") and case.updated_at == then


def test_registered_commands_are_gone_afterwards() -> None:
    assert list(commands.TABLE) == HELP_ORDER
    with pytest.raises(commands.UnknownCommand):
        commands.parse("/echo hi")


def test_a_command_line_is_never_read_as_a_quote_attribution() -> None:
    """"/note summary" joined with "The reporter wrote:" below it reads like an "X wrote:"
    line; the command stays a command (its text then ends where the quote begins)."""
    from coc_mail.cases import commands
    from coc_mail.mail import readable

    raw = (b"From: ada@example.net\r\nSubject: x\r\n\r\n/note summary\r\n"
           b"The reporter wrote:\r\n> it happened\r\n")
    body = readable.body(raw)
    command = commands.parse(body.lines, body.stop)
    assert command is not None and command.name == "note" and command.args == "summary"
