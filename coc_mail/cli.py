"""The ``coc-mail`` command line: serve, check, healthcheck, dkim, cases, queue, reload, status,
case show, discard, purge, audit."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func
from sqlalchemy import inspect as sa_inspect
from sqlmodel import Session, col, select, update

from coc_mail import config as config_mod
from coc_mail import store
from coc_mail.config import Settings
from coc_mail.errors import CocMailError
from coc_mail.mail import dkim
from coc_mail.store import Case

log = logging.getLogger("coc_mail")

EPILOG = """\
configuration: --config PATH, else $COC_MAIL_CONFIG, else config/coc-mail.toml.
Relative paths in the file are relative to the working directory.
Secrets from the environment: COC_MAIL_KEY (storage key), COC_MAIL_DATABASE (database URL),
COC_MAIL_DATABASE_PASSWORD (set into that URL, any characters), and the variable named by
delivery.password_env (relay password).
"""


def _settings(args: argparse.Namespace) -> Settings:
    return config_mod.load(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    from coc_mail.daemon import serve

    serve(_settings(args), args.config)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from coc_mail.workers import run_worker

    peers = [int(fd) for fd in args.peer_fds.split(",") if fd]
    run_worker(_settings(args), args.config, args.index, args.wake_fd, args.lifeline_fd, peers,
               args.web_fd)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from coc_mail.app import build
    from coc_mail.mail.compose import Templates

    problems: list[str] = []

    def ok(what: str) -> None:
        print(f"ok    {what}")

    settings = _settings(args)
    ok(
        f"configuration {settings.source}: {len(settings.members)} members, "
        f"alias {settings.committee.address}"
    )
    templates = Templates(settings.templates.directory)
    template_problems = templates.check(**_template_sample(settings))
    problems += template_problems
    if not template_problems:
        ok(f"templates: {', '.join(templates.names())}")
    first_start = _first_start(settings)
    for line in first_start.created:
        ok(line)
    problems += first_start.problems
    try:
        if first_start.created:
            problems += _check_database_before_first_start(settings, first_start)
        else:
            app = build(settings, migrate=False)
            ok(
                f"storage key, DKIM key ({settings.dkim.private_key}) and database "
                f"({app.engine.url.render_as_string(hide_password=True)})"
            )
            ok(f"database schema at {store.SCHEMA_HEAD}")
    except CocMailError as exc:
        problems.append(str(exc))
    except Exception as exc:  # noqa: BLE001 - report any driver error plainly
        problems.append(f"database {settings.database_url.split('@')[-1]}: {exc}")
    problems += _check_relay(settings)
    if not problems:
        ok(f"relay {settings.delivery.relay.split('@')[-1]}")
    for p in problems:
        print(f"ERROR {p}", file=sys.stderr)
    return 1 if problems else 0


@dataclass
class FirstStart:
    """What ``coc-mail serve`` will create on its first start, and what it could not."""

    created: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    storage_key: bool = False  # the storage key is one of them
    database: bool = False  # the SQLite database file is one of them


def _creatable(path: Path) -> Path | None:
    """The nearest existing folder of ``path`` when it is not writable (None: it is)."""
    nearest = next((p for p in path.parents if p.exists()), Path("."))
    return None if os.access(nearest, os.W_OK) else nearest


def _first_start(settings: Settings) -> FirstStart:
    """A fresh install is no error: the keys and a SQLite file are made by ``serve``."""
    from sqlalchemy.engine import make_url

    from coc_mail.store.crypto import ENV_KEY

    found = FirstStart()
    wanted: list[tuple[str, Path, str]] = []
    if not os.environ.get(ENV_KEY) and not Path(settings.storage.key_file).exists():
        found.storage_key = True
        wanted.append(("storage.key_file", Path(settings.storage.key_file),
                       "back it up: it is the only way to open the database"))
    if not Path(settings.dkim.private_key).exists():
        wanted.append(("dkim.private_key", Path(settings.dkim.private_key),
                       "then publish its record (`coc-mail dkim txt`)"))
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" \
            and not Path(url.database).exists():
        found.database = True
        wanted.append(("storage.database", Path(url.database), "with the schema"))
    for key, path, then in wanted:
        blocked = _creatable(path)
        if blocked is not None:
            found.problems.append(f"{key} {path} does not exist, and `coc-mail serve` cannot "
                                  f"create it: {blocked} is not writable")
        else:
            found.created.append(f"{key} {path}: not there yet; `coc-mail serve` creates it "
                                 f"on first start ({then})")
    return found


def _check_database_before_first_start(settings: Settings, first: FirstStart) -> list[str]:
    """The database on a fresh install: reachable, and holding nothing a new key cannot
    open. A SQLite file that serve will create is not made here (check writes nothing)."""
    from coc_mail.store.crypto import load_keyring

    if first.database:
        return []
    engine = store.make_engine(settings.database_url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        try:
            store.check_schema(engine)
        except CocMailError:  # empty (or older): serve creates or upgrades the schema
            with engine.connect() as conn:
                sealed = sa_inspect(conn).has_table("meta")
            if sealed and first.storage_key:
                return [_KEY_LOST]
            print(f"ok    database {where} reachable; `coc-mail serve` creates or upgrades "
                  "its schema")
            return []
        if first.storage_key:
            return [_KEY_LOST]
        store.check_key(engine, load_keyring(settings.storage.key_file)[0])
        print(f"ok    storage key and database ({where}), schema at {store.SCHEMA_HEAD}")
        return []
    finally:
        engine.dispose()


_KEY_LOST = ("storage.key_file is missing but the database holds data sealed with a key: "
             "restore the key file (or set $COC_MAIL_KEY); a new key could not open it")


def _template_sample(settings: Settings) -> dict[str, object]:
    """Every variable a template may use, with sample values (see README, Templates)."""
    import datetime as dt

    case = Case(code_name="home shelf", status="Ongoing", reporter_key="",
                opened_at=dt.datetime(2026, 7, 7, 8, 30, tzinfo=dt.UTC))
    return {
        "committee": settings.committee, "case": case, "member": settings.members[0],
        "reported": "Jordan Roe", "deadline": "2026-07-09 08:30 UTC", "reason": "a reminder",
        "reported_names": ["Jordan Roe"], "text": "Free text from the member.",
    }


def _check_relay(settings: Settings) -> list[str]:
    delivery = settings.delivery
    if delivery.is_maildir:
        path = delivery.maildir_path
        nearest = next((p for p in (path, *path.parents) if p.exists()), Path("."))
        if not os.access(nearest, os.W_OK):
            return [f"delivery.relay: {path} is not writable"]
        return []
    from urllib.parse import urlsplit

    from coc_mail.delivery.relay import SmtpTransport

    try:  # the delivery workers' own session set-up (a bad CA file fails here too)
        asyncio.run(SmtpTransport.from_settings(settings, timeout=10).probe())
    except Exception as exc:  # noqa: BLE001 - any failure is what check reports
        where = urlsplit(delivery.relay).netloc
        return [f"delivery.relay {where}: not reachable ({exc})"]
    return []


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    settings = _settings(args)
    path = Path(args.output or settings.dkim.private_key)
    if path.exists():
        print(f"{path} exists; not overwritten. Its DNS record:", file=sys.stderr)
        pem = dkim.load_key(path)
    else:
        pem = dkim.generate_key(path, bits=args.bits)
        print(f"wrote {path} (keep it secret). Publish this DNS record:", file=sys.stderr)
    print(dkim.txt_record(pem, settings.dkim.selector, settings.committee.domain))
    return 0


def cmd_dkim_txt(args: argparse.Namespace) -> int:
    settings = _settings(args)
    pem = dkim.load_key(Path(settings.dkim.private_key))
    print(dkim.txt_record(pem, settings.dkim.selector, settings.committee.domain))
    return 0


def cmd_cases(args: argparse.Namespace) -> int:
    from coc_mail.app import build


    app = build(_settings(args), migrate=False)
    with Session(app.engine) as session:
        total = session.exec(select(func.count()).select_from(Case)).one()
        rows = session.exec(
            select(Case.code_name, Case.status, Case.opened_at)
            .order_by(col(Case.opened_at).desc(), col(Case.id).desc())
            .offset((args.page - 1) * args.per_page)
            .limit(args.per_page)
        ).all()
    print(f"{'CODE NAME':<32} {'STATUS':<10} OPENED (UTC)")
    for code_name, status, opened in rows:
        print(f"{code_name:<32} {status:<10} {opened:%Y-%m-%d %H:%M}")
    pages = max(1, -(-int(total) // args.per_page))
    print(f"-- {total} case(s); page {args.page} of {pages}", file=sys.stderr)
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    from coc_mail.app import build
    from coc_mail.delivery.worker import retry_now
    from coc_mail.store import Case, Inbound, Outbound, utcnow

    settings = _settings(args)
    app = build(settings, migrate=False)
    if args.flush:
        count = retry_now(app, clear_claims=False)
        with Session(app.incoming) as session:
            shunted = session.exec(
                update(Inbound)
                .where(col(Inbound.shunted).is_(True))
                .values(shunted=False, attempts=0, claimed_until=None)
            ).rowcount
            session.commit()
        _signal(settings, signal.SIGUSR1, quiet=True)
        print(f"{count} waiting copies will be retried now; {shunted} shunted message(s) "
              "go back to processing")
        return 0
    now = utcnow()
    with Session(app.engine) as session:
        rows = session.exec(
            select(Outbound, Case.code_name)
            .join(Case, col(Case.id) == col(Outbound.case_id), isouter=True)
            .order_by(col(Outbound.next_attempt_at))
        ).all()
    with Session(app.incoming) as session:
        inbound = session.exec(
            select(func.count()).select_from(Inbound).where(col(Inbound.shunted).is_(False))
        ).one()
        shunted = session.exec(
            select(func.count()).select_from(Inbound).where(col(Inbound.shunted).is_(True))
        ).one()
    print(f"{'COPY':<17} {'CASE':<28} {'TRIES':>5} {'AGE':>8} NEXT TRY")
    for row, code_name in rows:
        age = int((now - row.created_at).total_seconds())
        wait = max(0, int((row.next_attempt_at - now).total_seconds()))
        print(f"{row.uid:<17} {code_name or '-':<28} {row.attempts:>5} {age:>7}s in {wait}s")
    print(
        f"-- {len(rows)} copies waiting; {inbound} incoming not yet processed; {shunted} shunted",
        file=sys.stderr,
    )
    return 0


def _case(session: Session, code_name: str) -> Case:


    name = " ".join(code_name.replace("-", " ").split()).lower()
    case = session.exec(select(Case).where(Case.code_name == name)).first()
    if case is None:
        raise CocMailError(f"no case named {code_name!r} (see `coc-mail cases`)")
    return case


def cmd_status(args: argparse.Namespace) -> int:
    from coc_mail.app import build
    from coc_mail.cases import status

    app = build(_settings(args), migrate=False)
    with Session(app.engine) as session:
        cases = status.cases(app, session)
        data = status.render([status.row_of(c) for c in cases], args.format)
        found = status.warnings(app, session, cases)
    if args.output:
        Path(args.output).write_bytes(data)
        print(f"wrote {args.output} ({len(cases)} cases)", file=sys.stderr)
    elif args.format == "xlsx":
        raise CocMailError("xlsx is binary: give --output FILE.xlsx")
    else:
        sys.stdout.write(data.decode())
    for w in found:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def cmd_case_show(args: argparse.Namespace) -> int:
    from coc_mail.app import build
    from coc_mail.cases import document
    from coc_mail.cases.standing import receiving_members

    settings = _settings(args)
    member = settings.member_by_email(args.as_member)
    if member is None:
        raise CocMailError(f"--as {args.as_member}: not a member in {settings.source}")
    app = build(settings, migrate=False)
    with Session(app.engine) as session:
        case = _case(session, args.code_name)
        if member.handle not in receiving_members(app, session, case):
            print(f"refused: {member.name} is not cleared for case {case.code_name!r}",
                  file=sys.stderr)
            return 3
        sys.stdout.write(document.render(app.keys, session, case))
        from coc_mail.cases import audit

        audit.record(app.keys, session, case.code_name, member.handle,
                     "document read (case show)")
        session.commit()
    return 0


def cmd_discard(args: argparse.Namespace) -> int:
    from coc_mail.app import build
    from coc_mail.cases.commands.discard import discard
    from coc_mail.delivery.outbox import Outbox

    settings = _settings(args)
    app = build(settings, migrate=False)
    with Session(app.engine) as session:
        case = _case(session, args.code_name)
        if case.status != "New":
            raise CocMailError(
                f"case {case.code_name!r} is {case.status}: only a New case (spam, misdirected "
                "mail) can be discarded; a report stays (see cases.purge_after_days)"
            )
        outbox = Outbox(app, session)
        asked = " a member asked and" if case.discard_by else ""
        discard(app, session, outbox, case, "operator", f"{asked} an operator discarded it".strip())
        told = outbox.write(session)
        session.commit()
    _signal(settings, signal.SIGUSR1, quiet=True)
    print(f"case {args.code_name} discarded; {told} member(s) told")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from coc_mail.app import build
    from coc_mail.cases.reminders import tick

    settings = _settings(args)
    if not settings.cases.purge_after_days:
        print("cases.purge_after_days is 0: resolved documents are kept; nothing purged")
        return 0
    count = tick(build(settings, migrate=False), only_purge=True)
    print(f"{count} document(s) purged")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from coc_mail.app import build
    from coc_mail.cases import audit

    app = build(_settings(args), migrate=False)
    with Session(app.engine) as session:
        name = " ".join(args.code_name.replace("-", " ").split()).lower()
        lines, intact = audit.verify(app.keys, session, name)
    if not lines:
        raise CocMailError(f"no audit entries for {args.code_name!r}")
    for line in lines:
        mark = "" if line.ok else "   <-- BROKEN LINK"
        print(f"{line.at}  {line.actor:<12} {line.action}{mark}")
    print(f"-- {len(lines)} entries; chain {'verified' if intact else 'BROKEN'}",
          file=sys.stderr)
    return 0 if intact else 4


def _signal(settings: Settings, sig: signal.Signals, *, quiet: bool = False) -> int:
    pid_file = Path(settings.server.pid_file)
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, sig)
    except (OSError, ValueError):
        if not quiet:
            print(f"no running daemon found (pid file {pid_file})", file=sys.stderr)
        return 1
    return 0


HEALTHCHECK_HELP = """\
exit 0 when the running daemon is healthy: its SMTP listener (server.listen; 0.0.0.0 and
:: are asked on loopback) answers with a 220 greeting, and the database answers a query.
Otherwise exit 1 with a one-line reason. Nothing is written; no mail is sent (the session
ends with QUIT). The Docker image's HEALTHCHECK runs it.
"""


def cmd_healthcheck(args: argparse.Namespace) -> int:
    import smtplib

    settings = _settings(args)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(  # noqa: S104 - a probe
        settings.server.host, settings.server.host)
    smtp = f"SMTP {settings.server.listen}"
    try:
        smtplib.SMTP(host, settings.server.port, timeout=args.timeout).quit()
    except smtplib.SMTPConnectError as exc:
        return _unhealthy(f"{smtp}: greeting {exc.smtp_code}, not 220")
    except (OSError, smtplib.SMTPException) as exc:
        return _unhealthy(f"{smtp}: {exc.strerror or exc}" if isinstance(exc, OSError)
                          else f"{smtp}: {exc}")
    problem = _database_answers(settings, args.timeout)
    if problem:
        return _unhealthy(problem)
    print(f"healthy: {smtp} answers 220, database answers")
    return 0


def _database_answers(settings: Settings, timeout: float) -> str | None:
    """None when the database answers ``SELECT 1``; else what went wrong, on one line."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    where = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:" and not Path(url.database).exists():
            return f"database {where}: the file does not exist"  # a probe creates nothing
        engine = sa.create_engine(url, connect_args={"timeout": timeout})
    else:
        if "connect_timeout" not in url.query:
            url = url.update_query_dict({"connect_timeout": str(max(1, int(timeout)))})
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.DBAPIError as exc:
        lines = [line.strip() for line in str(exc.orig).splitlines() if line.strip()]
        return f"database {where}: {' '.join((lines or [type(exc.orig).__name__])[0].split())}"
    finally:
        engine.dispose()
    return None


def _unhealthy(reason: str) -> int:
    print(f"unhealthy: {reason}", file=sys.stderr)
    return 1


def cmd_reload(args: argparse.Namespace) -> int:
    settings = _settings(args)  # refuse to signal a daemon with a config that does not load
    if _signal(settings, signal.SIGHUP):
        return 1
    print("reload requested; the daemon logs the outcome")
    return 0


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="coc-mail",
        description="The mail system of a Code of Conduct committee.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", "-c", metavar="PATH", help="the TOML configuration file")
    p.add_argument("--verbose", "-v", action="store_true", help="log debug detail")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, func: Callable[[argparse.Namespace], int], text: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=text, description=text)
        sp.set_defaults(func=func)
        return sp

    add("serve", cmd_serve, "run the daemon (SMTP intake, processing, delivery)")
    # Started by `serve` for its worker processes; not listed, not for use by hand.
    w = sub.add_parser("worker")
    w.add_argument("index", type=int)
    w.add_argument("--wake-fd", type=int, required=True)
    w.add_argument("--lifeline-fd", type=int, required=True)
    w.add_argument("--peer-fds", required=True)
    w.add_argument("--web-fd", type=int)
    w.set_defaults(func=cmd_worker)
    add(
        "check",
        cmd_check,
        "validate configuration, keys, templates, database and relay; non-zero exit on error",
    )
    hc = sub.add_parser(
        "healthcheck", help="exit 0 if the running daemon answers SMTP and reaches its database",
        description=HEALTHCHECK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    hc.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                    help="for each of the two probes (default: 5)")
    hc.set_defaults(func=cmd_healthcheck)
    d = add("dkim", lambda a: _usage(d), "DKIM key management")
    dsub = d.add_subparsers(dest="dkim_command", metavar="ACTION")
    kg = dsub.add_parser("keygen", help="write a new RSA key and print its DNS TXT record")
    kg.add_argument("--bits", type=int, default=2048, choices=[1024, 2048, 3072, 4096])
    kg.add_argument("--output", metavar="PATH", help="key file (default: dkim.private_key)")
    kg.set_defaults(func=cmd_dkim_keygen)
    dsub.add_parser("txt", help="print the DNS TXT record of the configured key").set_defaults(
        func=cmd_dkim_txt
    )
    c = add("cases", cmd_cases, "list cases: code name, status, date (no content)")
    c.add_argument("--page", type=int, default=1)
    c.add_argument("--per-page", type=int, default=50)
    q = add("queue", cmd_queue, "list copies waiting for delivery (no content)")
    q.add_argument("--flush", action="store_true", help="retry every waiting copy now")
    add("reload", cmd_reload, "make the running daemon re-read its configuration (SIGHUP)")
    st = add("status", cmd_status, "the status sheet of all cases (the procedure's columns)")
    st.add_argument("--format", choices=["csv", "xlsx", "md"], default="md")
    st.add_argument("--output", "-o", metavar="FILE", help="write to FILE (needed for xlsx)")
    cs = add("case", lambda a: _usage(cs), "one case")
    csub = cs.add_subparsers(dest="case_command", metavar="ACTION")
    show = csub.add_parser("show", help="print a case document for a cleared member")
    show.add_argument("code_name", metavar="CODE-NAME", help='e.g. home-shelf or "home shelf"')
    show.add_argument("--as", dest="as_member", required=True, metavar="MEMBER-EMAIL",
                      help="the member reading it; refused unless cleared for the case")
    show.set_defaults(func=cmd_case_show)
    dc = add("discard", cmd_discard,
             "delete a New case that is not a report (spam, misdirected mail); members told")
    dc.add_argument("code_name", metavar="CODE-NAME", help='e.g. home-shelf or "home shelf"')
    add("purge", cmd_purge, "purge resolved documents older than cases.purge_after_days now")
    au = add("audit", cmd_audit, "print a case's audit log and verify its hash chain")
    au.add_argument("code_name", metavar="CODE-NAME")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiosmtpd's own log ("mail.log") writes envelopes and DATA lines: never below WARNING.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    if not args.verbose:
        for noisy in ("alembic", "aiosmtplib"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except CocMailError as exc:
        print(f"coc-mail: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
