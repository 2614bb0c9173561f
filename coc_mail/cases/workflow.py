"""The case workflow by mail (SPEC 4.2-4.7, 6): members' commands and posts, the conflict
check, follow-ups, the document, onboarding. Each function works inside one processing unit;
every command answers its sender and is never relayed."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shlex
from collections.abc import Iterable
from email.utils import formataddr

from sqlmodel import Session, col, select, update

from coc_mail.app import App
from coc_mail.cases import audit, commands, document, status
from coc_mail.cases.commands import Command, UnknownCommand
from coc_mail.cases.conflicts import Person, conflicts_with_person, has_known_conflict
from coc_mail.cases.standing import Standing, member_tag, receiving_members, set_standing, standings
from coc_mail.config import Member
from coc_mail.delivery.outbox import Outbox
from coc_mail.errors import TemplateProblem
from coc_mail.mail import quotes, readable
from coc_mail.mail.compose import ForwardBody, forward_head, relay_message, text_message
from coc_mail.mail.message import Incoming
from coc_mail.mail.redact import Redactor
from coc_mail.store import Case, CaseMember, MemberRecord, utcnow

log = logging.getLogger(__name__)

INTERNAL_TEMPLATES = {"conflict-check", "onboarding", "reminder"}
MAX_ARGS = 2000  # characters on a command's line
MAX_FIELD = 500  # characters of one status-sheet field
MAX_CONFLICTS = 200  # entries of one /conflicts, each at most MAX_ENTRY characters
MAX_ENTRY = 200
ANSWERS = {"yes": "Yes", "no": "No", "maybe": "Maybe"}
OPEN = ("New", "Ongoing")


class Refusal(Exception):
    """A command or post that cannot be carried out; its text goes back to the member."""


# -- member records (onboarding) ------------------------------------------------------------
def declared_conflicts(app: App, session: Session) -> dict[str, list[str]]:
    """Conflicts each member declared by mail (``/conflicts``), by handle."""
    records = {r.member_tag: r for r in session.exec(select(MemberRecord))}
    out: dict[str, list[str]] = {}
    for m in app.settings.members:
        r = records.get(member_tag(app, m.handle))
        if r is not None and r.conflicts:
            out[m.handle] = list(json.loads(app.keys.open(r.conflicts, "member_records.conflicts")))
    return out


def pending_members(app: App, session: Session) -> set[str]:
    """Handles of members who may not receive case mail yet: onboarding not answered, or no
    record at all (a member added to the file whose onboarding has not been sent)."""
    active = {
        r.member_tag
        for r in session.exec(select(MemberRecord).where(MemberRecord.state == "active"))
    }
    return {m.handle for m in app.settings.members if member_tag(app, m.handle) not in active}


def reported_names(app: App, session: Session) -> list[str]:
    """Everyone reported so far (the onboarding list), without duplicates."""
    names: dict[str, str] = {}
    for case in session.exec(select(Case).where(col(Case.reported).is_not(None))):
        for name in document.reported_people(app.keys, case):
            names.setdefault(" ".join(name.split()).casefold(), name)
    return sorted(names.values(), key=str.casefold)


def sync_members(app: App, outbox: Outbox, session: Session) -> list[str]:
    """Give every configured member a record; members new since the last start get the
    onboarding mail. On a database with no records (the first start), the configured members
    are the founding committee and need no onboarding. A member whose handle changed but whose
    address did not (renamed in the file, the handle taken from the name) is the same member:
    their record and standings move to the new handle, so no exclusion is lost. Returns the
    onboarded handles."""
    records = {r.member_tag: r for r in session.exec(select(MemberRecord))}
    founding = not records
    configured = {member_tag(app, m.handle) for m in app.settings.members}
    by_email = {r.email_tag: r for r in records.values()
                if r.email_tag and r.member_tag not in configured}
    onboarded: list[str] = []
    names: list[str] | None = None
    for member in app.settings.members:
        tag = member_tag(app, member.handle)
        email_tag = app.keys.tag("member-email", member.email)
        if tag in records:
            if records[tag].email_tag != email_tag:
                records[tag].email_tag = email_tag
                session.add(records[tag])
            continue
        old = by_email.pop(email_tag, None)
        if old is not None:
            _rekey(session, old.member_tag, tag)
            log.warning("a member's handle changed (same address): record and standings "
                        "carried over")
            continue
        if founding:
            session.add(MemberRecord(member_tag=tag, state="active", answered_at=utcnow(),
                                     email_tag=email_tag))
            continue
        session.add(MemberRecord(member_tag=tag, state="pending", email_tag=email_tag))
        if names is None:
            names = reported_names(app, session)
        rendered = app.templates.render(
            "onboarding", committee=app.settings.committee, member=member, reported_names=names
        )
        outbox.to_member(member, None, rendered.subject or "Welcome", rendered.body)
        onboarded.append(member.handle)
        log.info("member onboarding sent (%d names listed)", len(names))
    return onboarded


def _rekey(session: Session, old: str, new: str) -> None:
    session.execute(update(CaseMember).where(col(CaseMember.member_tag) == old)
                    .values(member_tag=new))
    session.execute(update(MemberRecord).where(col(MemberRecord.member_tag) == old)
                    .values(member_tag=new))


def discard(app: App, session: Session, outbox: Outbox, case: Case, actor: str,
            how: str) -> None:
    """Delete a New case that is not a report: its report, document and standings (the code
    name is never drawn again; the audit log keeps who did it). Every other member who
    received it is told."""
    code_name = case.code_name
    audit.record(app.keys, session, code_name, actor, "case discarded (not a report)")
    handles = set(receiving_members(app, session, case)) - {actor}
    for m in app.settings.members:
        if m.handle in handles:
            outbox.to_member(m, None, f"[{code_name}] discarded",
                             f'Case "{code_name}" was discarded as not a report ({how}). Its '
                             "report and document are deleted.\n")
    for pending in outbox.pending:
        if pending.case is case:
            pending.case = None
    session.delete(case)
    log.info("case %s discarded", code_name)


class Work:
    """One member's message, handled: a command for a case or for no case, or a thread post."""

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

    # -- entry points -------------------------------------------------------------------------
    def member_mail(self, case: Case | None, member: Member) -> None:
        try:
            self.body = readable.body(self.msg.content, self.quoted_mail_marks(case))
            try:
                command = commands.parse(self.body.lines, self.body.stop)
            except UnknownCommand as exc:
                raise Refusal(
                    f"There is no command /{exc}.\n\n" + commands.help_text(case=case is not None)
                ) from None
            if command is not None and len(command.args) > MAX_ARGS:
                raise Refusal(f"The line of /{command.name} is {len(command.args)} characters "
                              f"long; {MAX_ARGS} at most. Nothing changed.\n"
                              + commands.usage(command.name))
            if case is None:
                if command is None:
                    raise Refusal("Mail to your member address must be a command.\n\n"
                                  + commands.help_text(case=False))
                self.general_command(member, command)
            elif command is None:
                self.post(case, member)
            else:
                self.case_command(case, member, command)
        except Refusal as refusal:
            self.reply(member, case, str(refusal))
        except TemplateProblem as problem:
            self.reply(member, case, f"Nothing was sent: {problem}")

    def general_command(self, member: Member, cmd: Command) -> None:
        if cmd.name == "help":
            self.reply(member, None, commands.help_text(case=False))
        elif cmd.name == "statusreport":
            if member.handle in pending_members(self.app, self.session):
                raise Refusal("Answer your onboarding mail first (/conflicts ...).")
            self.reply(member, None, status.report_text(self.app, self.session))
        elif cmd.name == "conflicts":
            self.declare_conflicts(member, cmd)
        else:
            raise Refusal(f"/{cmd.name} concerns one case: send it as a reply to a message of "
                          "that case (its Reply-To: is your address for the case).")

    def case_command(self, case: Case, member: Member, cmd: Command) -> None:
        if cmd.name == "help":
            self.reply(member, case, commands.help_text(case=True))
            return
        if cmd.name in ("statusreport", "conflicts"):
            self.general_command(member, cmd)
            return
        handler = getattr(self, f"cmd_{cmd.name}")
        handler(case, member, cmd)
        if cmd.name != "discard":
            case.updated_at = utcnow()
            self.session.add(case)

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
        report = app.keys.open(case.report, "cases.report")
        reported = document.reported_of(app.keys, case)
        intro = (
            f'{why}\nCase "{case.code_name}", opened {case.opened_at:%Y-%m-%d %H:%M} UTC'
            + (f", involves {reported}" if reported else "")
            + ".\nThe report is attached. /doc sends you the case document; /help lists the "
            "commands.\n"
        )
        body = ForwardBody.build(intro, report)
        self.outbox.queue(
            case=case, role=member.handle, recipient=member.email,
            body=self.outbox.share(body.parts),
            build=lambda mid: forward_head(
                from_name=app.settings.committee.name, from_addr=app.alias,
                to=formataddr((member.name, member.email)),
                reply_to=app.addresses.case(case.code_name, member.handle),
                subject=f"[{case.code_name}] The report", body=body,
                message_id=mid, loop=app.alias, auth_results=None,
            ),
        )

    # -- the thread ---------------------------------------------------------------------------
    def post(self, case: Case, member: Member) -> None:
        if case.status == "New":
            st = self.standing(case, member)
            if st in (Standing.NOTIFIED, Standing.CLEARED):
                raise Refusal(
                    "Name the reported person first: reply `/involves NAME`. Your message was "
                    "not relayed: until the conflict check, the case has no thread."
                )
            raise Refusal(self.why_not(case, member))
        if self.standing(case, member) is not Standing.CLEARED:
            raise Refusal(self.why_not(case, member))
        others = [m for m in self.receiving(case) if m != member]
        if not others:
            raise Refusal("You are the only cleared member of this case: nothing was relayed.")
        app = self.app
        redactor = self.redactor(case)
        subject = redactor.text(self.msg.subject) or "(no subject)"
        if f"[{case.code_name}]" not in subject:
            subject = f"[{case.code_name}] {subject}"
        # Our addresses and tokens out of every part, in whatever encoding (a forwarded or
        # quoted case mail carries the author's own case address): see coc_mail/mail/redact.py.
        post = redactor.message(self.msg.content)
        for other in others:
            self.outbox.queue(
                case=case, role=other.handle, recipient=other.email,
                build=lambda mid, o=other: relay_message(  # type: ignore[misc]
                    original=post,
                    from_name=f"{member.name} via {case.code_name}", from_addr=app.alias,
                    to=formataddr((o.name, o.email)),
                    reply_to=app.addresses.case(case.code_name, o.handle),
                    subject=subject, message_id=mid, loop=app.alias,
                ),
            )
        case.updated_at = utcnow()
        self.session.add(case)
        log.info("case %s: post relayed to %d member(s)", case.code_name, len(others))

    # -- the conflict check -------------------------------------------------------------------
    def cmd_involves(self, case: Case, member: Member, cmd: Command) -> None:
        self.require_receiving(case, member)
        person = Person.named(cmd.args)
        name = str(person)
        if not name:
            raise Refusal(commands.usage("involves"))
        if case.status == "Ongoing":
            self.add_person(case, member, person)
            return
        if case.status != "New":
            raise Refusal("The case is resolved; /reopen it first to name another person.")
        app, session = self.app, self.session
        now = utcnow()
        deadline = now + dt.timedelta(hours=app.settings.intake.conflict_check_hours)
        case.reported = app.keys.seal_text(name, "cases.reported")
        case.status = "Ongoing"
        case.discard_by = None  # named: a report after all
        case.check_started_at, case.check_deadline = now, deadline
        current = standings(app, session, case)
        pending = pending_members(app, session)
        declared = declared_conflicts(app, session)
        asked, excluded = [], []
        for m in app.settings.members:
            if m.handle in pending or current.get(m.handle) not in (None, Standing.NOTIFIED):
                continue  # excluded, or left the case while it was New: never asked back
            if conflicts_with_person(m, person, declared.get(m.handle, ())):
                set_standing(app, session, case, m.handle, Standing.EXCLUDED)
                excluded.append(m)
            elif m == member:
                set_standing(app, session, case, m.handle, Standing.CLEARED)
            else:
                set_standing(app, session, case, m.handle, Standing.ASKED)
                asked.append(m)
        for m in asked:
            self.ask(case, m, name, deadline)
        self.audit(case, member.handle, "conflict check started; status New -> Ongoing")
        yours = (
            "You are excluded from it: you may be this person, or your own conflicts list "
            "names them, so you will receive nothing more about this case.\n"
            if member in excluded
            else "You are cleared; reply /conflict if you have one.\n"
        )
        self.reply(
            member, case,
            f'Case "{case.code_name}" now involves {name}. The conflict check went to '
            f"{len(asked)} member(s); {len(excluded)} excluded by known conflicts.\n"
            f"Answers are due by {deadline:%Y-%m-%d %H:%M} UTC. " + yours,
        )

    def add_person(self, case: Case, member: Member, person: Person) -> None:
        """``/involves`` once the check has started names one more person (a report about
        several people, or a first name that was wrong or a decoy): every member who may be
        them or lists them is out of the case at once, the members still taking part are
        told, and those not yet answering are asked again with every name."""
        app, session = self.app, self.session
        people = document.reported_people(app.keys, case)
        if any(Person.named(p) == person for p in people):
            raise Refusal(f"The case already involves {person}; nothing changed.")
        people.append(str(person))
        declared = declared_conflicts(app, session)
        current = standings(app, session, case)
        out, still = [], []
        for m in app.settings.members:
            st = current.get(m.handle)
            if st not in (Standing.NOTIFIED, Standing.ASKED, Standing.CLEARED):
                continue
            if conflicts_with_person(m, person, declared.get(m.handle, ())):
                out.append(m)
            elif m != member:
                still.append((m, st))
        others_out = [m for m in out if m != member]
        taking_part = [m for m in app.settings.members if m != member and current.get(
            m.handle) in (Standing.NOTIFIED, Standing.ASKED, Standing.CLEARED)]
        if others_out and self.excluded_others_before(case, member):
            raise Refusal(
                "Nothing changed: a person you named in this case already kept other members "
                "out of it. If this one must too, ask another member who receives the case to "
                "name them, or an operator.")
        if others_out and all(m in out for m in taking_part):
            raise Refusal(
                f"Nothing changed: {person} may be every other member taking part in the "
                "case, and naming them would leave you alone in it. If that is really so, an "
                "operator can look into it (coc-mail audit).")
        case.reported = app.keys.seal_text("\n".join(people), "cases.reported")
        for m in out:
            set_standing(app, session, case, m.handle, Standing.EXCLUDED)
        self.audit(case, member.handle, "person added to the case; excluded: "
                   + (", ".join(m.handle for m in out) or "nobody"))
        if others_out:
            self.outbox.notify_operators(
                "members excluded from a case",
                f'In case "{case.code_name}", a member named one more person, and '
                f"{len(others_out)} member(s) taking part were excluded as possibly that "
                f"person.\nIf that looks wrong, `coc-mail audit "
                f"{case.code_name.replace(' ', '-')}` says who named and who was excluded.\n")
        names = "; ".join(people)
        for m, st in still:
            if st is Standing.ASKED and case.check_deadline is not None:
                self.ask(case, m, names, case.check_deadline)
            else:
                self.outbox.to_member(
                    m, case, f"[{case.code_name}] Another person named",
                    f'{member.name} named one more person in case "{case.code_name}": '
                    f"{person}.\nThe case now involves: {names}.\n"
                    + ("Excluded as possibly that person: " + ", ".join(
                        x.name for x in others_out) + ".\n" if others_out else "")
                    + "If you have a conflict of interest with them, reply /conflict (or "
                      "/recuse).\n")
        yours = ("You are excluded from the case now: you may be this person or your "
                 "conflicts list names them.\n" if member in out else "")
        self.reply(member, case, f'Case "{case.code_name}" now also involves {person}. '
                                 f"{len(out)} member(s) excluded; {len(still)} told.\n" + yours)

    def excluded_others_before(self, case: Case, member: Member) -> bool:
        """Did a person this member named in this case already exclude other members? (One
        such naming per member and case: no member can empty a case of the others.)"""
        lines, _ = audit.verify(self.app.keys, self.session, case.code_name)
        return any(line.actor == member.handle and line.action.startswith(
            "person added to the case; excluded: ") and line.action.split(": ", 1)[1] not in (
            "nobody", member.handle) for line in lines)

    def ask(self, case: Case, m: Member, name: str, deadline: dt.datetime) -> None:
        app = self.app
        rendered = app.templates.render(
            "conflict-check", committee=app.settings.committee, case=case, member=m,
            reported=name, deadline=f"{deadline:%Y-%m-%d %H:%M} UTC",
        )
        subject = rendered.subject or f"[{case.code_name}] Conflict check"
        self.outbox.to_member(m, case, subject, rendered.body)

    def cmd_noconflict(self, case: Case, member: Member, cmd: Command) -> None:
        st = self.standing(case, member)
        if st is Standing.CLEARED:
            raise Refusal("You are already cleared for this case; nothing changed.")
        late = case.check_deadline is not None and utcnow() >= case.check_deadline
        if st is Standing.SILENT or (st is Standing.ASKED and late):
            if st is Standing.ASKED:
                set_standing(self.app, self.session, case, member.handle, Standing.SILENT)
                self.audit(case, "coc-mail", "member not added: no answer to the conflict check")
            raise Refusal("The conflict check deadline has passed, so you were not added to "
                          "this case (the procedure's rule). Nothing changed.")
        if st is not Standing.ASKED:
            raise Refusal(self.why_not(case, member))
        set_standing(self.app, self.session, case, member.handle, Standing.CLEARED)
        self.audit(case, member.handle, "member cleared (no conflict)")
        self.brief(case, member, "Thank you: you are cleared for this case.")

    def cmd_conflict(self, case: Case, member: Member, cmd: Command) -> None:
        st = self.standing(case, member)
        if st not in (Standing.ASKED, Standing.CLEARED, Standing.NOTIFIED):
            raise Refusal(self.why_not(case, member))
        set_standing(self.app, self.session, case, member.handle, Standing.CONFLICTED)
        self.audit(case, member.handle, "member declared a conflict")
        self.reply(member, case, "Noted: you have a conflict of interest. You will receive "
                                 "nothing more about this case.\n")

    def cmd_recuse(self, case: Case, member: Member, cmd: Command) -> None:
        st = self.standing(case, member)
        if st in (None, Standing.EXCLUDED, Standing.RECUSED, Standing.CONFLICTED):
            raise Refusal(self.why_not(case, member))
        set_standing(self.app, self.session, case, member.handle, Standing.RECUSED)
        self.audit(case, member.handle, "member recused")
        self.reply(member, case, "You have recused yourself. You will receive nothing more "
                                 "about this case.\n")

    # -- follow-ups ---------------------------------------------------------------------------
    def render_followup(self, case: Case, cmd: Command) -> tuple[str, str]:
        """The follow-up's subject and text: the template rendered with what the member wrote
        (up to the first quoted mail, signature or line naming our own mail). Refused when
        the result would still show a coc-mail address or the thread's "via <code name>":
        those only come from quoted mail."""
        template = cmd.args.split()[0] if cmd.args.split() else ""
        if not template:
            raise Refusal(commands.usage(cmd.name) + "\nTemplates: "
                          + ", ".join(n for n in self.app.templates.names()
                                      if n not in INTERNAL_TEMPLATES))
        if template in INTERNAL_TEMPLATES:
            raise Refusal(f"{template} is not a template for the reporter.")
        if template not in self.app.templates.names():
            raise Refusal(f"No template named {template}. Templates: " + ", ".join(
                n for n in self.app.templates.names() if n not in INTERNAL_TEMPLATES))
        if not cmd.body.strip() and self.left_out():
            raise Refusal("Nothing was sent: everything below the command looks like quoted "
                          "mail, a signature or a line naming our own mail (a coc-mail "
                          "address, a thread sender). Write your text on the lines right "
                          "below the command, above any quote.")
        rendered = self.app.templates.render(
            template, committee=self.app.settings.committee, case=case, text=cmd.body,
        )
        subject = rendered.subject or f"About your report ({case.code_name})"
        # What the member wrote ends before any line naming our own mail (self.body); the
        # whole rendering is checked again, so no template or unforeseen quote form can send
        # a coc-mail address or a thread sender's name to the reporter.
        redactor = self.redactor(case)
        via = re.compile(r"(?i)\bvia\s+" + r"\s+".join(map(re.escape, case.code_name.split())))
        members = [m.email for m in self.app.settings.members]
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

    def left_out(self) -> str:
        """A note for the member when lines below their text were not used (a quote)."""
        rest = [line for line in self.body.lines[self.body.stop:] if line.strip()]
        if not rest:
            return ""
        return (f"\n({len(rest)} line(s) below your text were left out: quoted mail or a "
                "signature.)\n")

    def cmd_preview(self, case: Case, member: Member, cmd: Command) -> None:
        self.require_receiving(case, member)
        subject, body = self.render_followup(case, cmd)
        self.reply(member, case, f"Preview (not sent):\n\nSubject: {subject}\n\n{body}"
                   + self.left_out())

    def cmd_followup(self, case: Case, member: Member, cmd: Command) -> None:
        self.require_receiving(case, member)
        if case.reporter is None:
            raise Refusal("This case has no reporter address to write to; nothing was sent.")
        subject, body = self.render_followup(case, cmd)
        app = self.app
        reporter = app.keys.open_text(case.reporter, "cases.reporter")
        self.outbox.queue(
            case=case, role="reporter", recipient=reporter,
            build=lambda mid: text_message(
                from_name=app.settings.committee.name, from_addr=app.alias, to=reporter,
                reply_to=app.addresses.reporter(case.code_name), subject=subject, body=body,
                message_id=mid, loop=app.alias,
            ),
        )
        document.add(app.keys, self.session, case, section=document.FOLLOWUP,
                     author=member.name, body=f"Subject: {subject}\n\n{body}")
        case.last_followup_at = utcnow()
        self.audit(case, member.handle, f"follow-up sent ({cmd.args.split()[0]})")
        self.reply(member, case, f"Sent to the reporter and kept in the document:\n\n"
                                 f"Subject: {subject}\n\n{body}" + self.left_out())

    # -- documentation ------------------------------------------------------------------------
    def cmd_note(self, case: Case, member: Member, cmd: Command) -> None:
        self.require_receiving(case, member)
        parts = cmd.args.split()
        if not parts or parts[0].lower() not in document.SECTIONS or len(parts) > 2:
            raise Refusal(commands.usage("note") + "\nSections: " + ", ".join(document.SECTIONS))
        section = parts[0].lower()
        date = None
        if len(parts) == 2:
            try:
                date = dt.date.fromisoformat(parts[1])
            except ValueError:
                raise Refusal(f"{parts[1]!r} is not a date like 2026-11-25.\n"
                              + commands.usage("note")) from None
        if not cmd.body.strip():
            raise Refusal("The note is empty: write it on the lines below the command.\n"
                          + commands.usage("note"))
        entry = document.add(self.app.keys, self.session, case, section=section,
                             author=member.name, body=self.redactor(case).text(cmd.body),
                             date=date)
        self.audit(case, member.handle, f"note added ({section})")
        self.reply(member, case, f"Added to {document.SECTIONS[section]} "
                                 f"({entry.entry_date:%Y-%m-%d}).\n")

    def cmd_status(self, case: Case, member: Member, cmd: Command) -> None:
        self.require_receiving(case, member)
        try:
            pairs = shlex.split(cmd.args)
        except ValueError as exc:
            raise Refusal(f"{exc}.\n{commands.usage('status')}") from None
        fields: dict[str, str] = {}
        for pair in pairs:
            key, eq, value = pair.partition("=")
            key = key.lower()
            if not eq or key not in ("safety", "repeat", "actions", "resolution"):
                raise Refusal(f"{pair!r} is not a field.\n{commands.usage('status')}")
            if key in ("safety", "repeat"):
                if value.lower() not in ANSWERS:
                    raise Refusal(f"{key} must be yes, no or maybe.\n{commands.usage('status')}")
                value = ANSWERS[value.lower()]
            if len(value) > MAX_FIELD:
                raise Refusal(f"{key} is {len(value)} characters long; {MAX_FIELD} at most "
                              "(the sheet wants a few vague words). Nothing changed.")
            fields[key] = value.strip()
        if not fields:
            raise Refusal(commands.usage("status"))
        document.set_sheet(self.app.keys, case, fields)
        self.audit(case, member.handle, "status sheet updated: " + ", ".join(sorted(fields)))
        self.reply(member, case, "Status sheet updated:\n\n" + status.case_row_text(self.app, case)
                   + status.warnings_text(self.app, self.session, [case]))

    def cmd_resolve(self, case: Case, member: Member, cmd: Command) -> None:
        self.require_receiving(case, member)
        try:
            words = shlex.split(cmd.args)
        except ValueError as exc:
            raise Refusal(f"{exc}.\n{commands.usage('resolve')}") from None
        resolution = " ".join(words).strip()
        if not resolution:
            raise Refusal(commands.usage("resolve"))
        if case.status == "Resolved":
            raise Refusal("The case is already resolved; /reopen it first.")
        if case.status == "New":
            raise Refusal("Name the reported person first (/involves NAME), or /discard the "
                          "case if it is not a report.")
        case.status, case.resolved_at = "Resolved", utcnow()
        document.set_sheet(self.app.keys, case, {"resolution": resolution})
        self.audit(case, member.handle, "status Ongoing -> Resolved")
        self.reply(member, case, f'Case "{case.code_name}" is resolved: {resolution}\n'
                   + status.warnings_text(self.app, self.session, [case]))

    def cmd_reopen(self, case: Case, member: Member, cmd: Command) -> None:
        self.require_receiving(case, member)
        if case.status != "Resolved":
            raise Refusal("Only a resolved case can be reopened; nothing changed.")
        if case.purged_at is not None:
            raise Refusal("The document of this case was purged; it cannot be reopened.")
        case.status, case.resolved_at, case.purge_warned = "Ongoing", None, False
        self.audit(case, member.handle, "status Resolved -> Ongoing")
        self.reply(member, case, f'Case "{case.code_name}" is open again.\n')

    def cmd_doc(self, case: Case, member: Member, cmd: Command) -> None:
        self.require_receiving(case, member)
        self.reply(member, case, document.render(self.app.keys, self.session, case),
                   subject=f"[{case.code_name}] Case document")

    def cmd_discard(self, case: Case, member: Member, cmd: Command) -> None:
        """Not a report (SPEC 4.7): the first /discard marks the case and tells every other
        member who receives it; the case is deleted only when a second one confirms (or an
        operator runs ``coc-mail discard``). No member can make a report vanish alone."""
        self.require_receiving(case, member)
        if case.status != "New":
            raise Refusal("Only a New case can be discarded (spam or misdirected mail is "
                          "recognised before anyone is named); nothing changed.")
        tag = member_tag(self.app, member.handle)
        others = [m for m in self.receiving(case) if m != member]
        if case.discard_by is None:
            case.discard_by = tag
            self.audit(case, member.handle, "discard requested (a second member must confirm)")
            for other in others:
                self.outbox.to_member(
                    other, case, f"[{case.code_name}] Discard requested",
                    f'{member.name} asked to discard case "{case.code_name}" as not a report '
                    "(spam or misdirected mail).\nIf you agree, reply /discard: the case and "
                    "its report are then deleted.\nIf it is a report, name the reported "
                    "person instead: /involves NAME.\n",
                )
            how = ("another member who received it confirms with /discard, or an operator "
                   f"runs `coc-mail discard {case.code_name.replace(' ', '-')}`"
                   if others else "an operator runs `coc-mail discard "
                   f"{case.code_name.replace(' ', '-')}` (nobody else receives this case)")
            self.reply(member, case, f'Case "{case.code_name}" is marked for discarding. It '
                       f"is deleted when {how}. {len(others)} other member(s) were told.\n")
            return
        if case.discard_by == tag:
            raise Refusal("You asked to discard this case already; a second member who "
                          "received it must confirm with /discard. Nothing changed.")
        first = next((m for m in self.app.settings.members
                      if member_tag(self.app, m.handle) == case.discard_by), None)
        discard(self.app, self.session, self.outbox, case, member.handle,
                f"{first.name if first else 'a member'} asked and {member.name} confirmed")
        self.reply(member, None, f'Case "{case.code_name}" is discarded: its report and '
                                 "document are deleted.\n", subject=f"[{case.code_name}] discarded")

    # -- onboarding ---------------------------------------------------------------------------
    def declare_conflicts(self, member: Member, cmd: Command) -> None:
        app, session = self.app, self.session
        text = cmd.args.strip()
        if not text:
            raise Refusal(commands.usage("conflicts"))
        names = [] if text.lower() == "none" else [
            " ".join(n.split()) for n in text.split(",") if n.strip()]
        if len(names) > MAX_CONFLICTS or any(len(n) > MAX_ENTRY for n in names):
            raise Refusal(f"At most {MAX_CONFLICTS} names or addresses of at most {MAX_ENTRY} "
                          "characters each; nothing was recorded.\n"
                          + commands.usage("conflicts"))
        tag = member_tag(app, member.handle)
        record = session.get(MemberRecord, tag) or MemberRecord(member_tag=tag, state="pending")
        was_pending = record.state == "pending"
        record.state, record.answered_at = "active", utcnow()
        record.conflicts = app.keys.seal(json.dumps(names).encode(), "member_records.conflicts")
        session.add(record)
        added = self.join_open_cases(member, names) if was_pending else []
        left = [] if was_pending else self.leave_conflicting_cases(member, names)
        self.reply(
            member, None,
            ("Thank you. Your conflicts are recorded: " + (", ".join(names) or "none") + ".\n")
            + (f"You are now part of {len(added)} open case(s); each one's report follows.\n"
               if was_pending else "")
            + (f"You are out of {len(left)} case(s) where you now have a conflict.\n"
               if left else ""),
        )

    def conflicted_with(self, member: Member, case: Case, declared: Iterable[str]) -> bool:
        """Known conflict with the case's reporter (address or name) or reported person."""
        app = self.app
        reporter = app.keys.open_text(case.reporter, "cases.reporter") if case.reporter else None
        reporter_name = None
        if case.report is not None:
            from coc_mail.mail.message import Envelope

            report = app.keys.open(case.report, "cases.report")
            reporter_name = Incoming(Envelope("", []), report).from_name or None
        return has_known_conflict(member, address=reporter, name=reporter_name,
                                  declared=declared) or any(
            conflicts_with_person(member, Person.named(p), declared)
            for p in document.reported_people(app.keys, case)
        )

    def leave_conflicting_cases(self, member: Member, declared: Iterable[str]) -> list[Case]:
        """A member declared new conflicts: leave every open case they now conflict with."""
        left = []
        for case in self.session.exec(select(Case).where(col(Case.status).in_(OPEN))):
            if self.standing(case, member) in (Standing.NOTIFIED, Standing.ASKED,
                                               Standing.CLEARED) and self.conflicted_with(
                    member, case, list(declared)):
                set_standing(self.app, self.session, case, member.handle, Standing.CONFLICTED)
                self.audit(case, member.handle, "member declared a conflict (/conflicts)")
                left.append(case)
        return left

    def join_open_cases(self, member: Member, declared: Iterable[str]) -> list[Case]:
        """After onboarding: join every open case where the member has no conflict."""
        app, session = self.app, self.session
        joined: list[Case] = []
        for case in session.exec(select(Case).where(col(Case.status).in_(OPEN))):
            if self.standing(case, member) is not None:
                continue
            if self.conflicted_with(member, case, list(declared)):
                set_standing(app, session, case, member.handle, Standing.EXCLUDED)
                continue
            if case.status == "New" and not (
                app.settings.intake.forward == "all" or "triage" in member.roles
            ):
                continue  # like at intake: the conflict check (/involves) will ask them
            standing = Standing.NOTIFIED if case.status == "New" else Standing.CLEARED
            set_standing(app, session, case, member.handle, standing)
            self.audit(case, member.handle, "member joined after onboarding")
            self.brief(case, member, "Welcome: you have no declared conflict with this case.")
            joined.append(case)
        return joined
