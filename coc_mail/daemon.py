"""``coc-mail serve``: the SMTP intake in this process, processing and delivery in worker
processes (:mod:`coc_mail.workers`); run until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import IO

from sqlalchemy.engine import make_url
from sqlmodel import Session, delete, select, update

from coc_mail import config as config_mod
from coc_mail.app import App, build
from coc_mail.cases import members
from coc_mail.config import Settings
from coc_mail.delivery.outbox import Outbox
from coc_mail.delivery.worker import retry_now
from coc_mail.errors import CocMailError
from coc_mail.smtp.handler import IntakeHandler, smtp_factory
from coc_mail.smtp.spool import Spool
from coc_mail.store import Inbound
from coc_mail.workers import Pool, run_loop

log = logging.getLogger(__name__)
LOCK_WAIT = 10.0  # seconds (the workers of a killed daemon take up to 2 s to go)


def _lock(settings: Settings) -> IO[str] | None:
    """With SQLite only one daemon may use the database: hold an exclusive lock file."""
    url = settings.database_url
    if not url.startswith("sqlite"):
        return None
    database = make_url(url).database or ""
    path = Path(database + ".lock") if database and database != ":memory:" else Path(
        settings.server.pid_file
    ).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("w")
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fh
        except BlockingIOError:
            # The workers of a daemon that was just killed let go within moments.
            if time.monotonic() > deadline:
                fh.close()
                raise CocMailError(
                    f"another coc-mail daemon holds {path}: with SQLite only one may run "
                    "(use PostgreSQL to run several)"
                ) from None
            time.sleep(0.1)


def sync_members(app: App) -> None:
    """Records for every configured member; onboarding mail to the new ones."""
    with Session(app.engine, autoflush=False) as session:
        outbox = Outbox(app, session)
        onboarded = members.sync_members(app, outbox, session)
        outbox.write(session)
        session.commit()
    if onboarded:
        log.info("onboarding sent to %d new member(s)", len(onboarded))


def _move_incoming(app: App) -> int:
    """Messages a coc-mail before 0.4 left in the main SQLite file's incoming queue move to
    the incoming file (idempotent by uid: a crash halfway leaves no duplicate)."""
    if app.incoming is app.engine:
        return 0
    with Session(app.engine) as main:
        rows = main.exec(select(Inbound)).all()
        if not rows:
            return 0
        with Session(app.incoming) as inq:
            for row in rows:
                uid = row.uid or f"moved-{row.id}"
                if inq.exec(select(Inbound.id).where(Inbound.uid == uid)).first() is None:
                    inq.add(Inbound(uid=uid, received_at=row.received_at, envelope=row.envelope,
                                    content=row.content, attempts=row.attempts,
                                    shunted=row.shunted, error=row.error))
            inq.commit()
        main.exec(delete(Inbound))
        main.commit()
    return len(rows)


def _recover(app: App) -> None:
    """Start-up: every waiting copy is due now; with SQLite (one daemon) old claims are void."""
    single = app.settings.database_url.startswith("sqlite")
    copies = retry_now(app, clear_claims=single)
    moved = _move_incoming(app)
    if single:
        with Session(app.incoming) as session:
            session.exec(update(Inbound).values(claimed_until=None))
            session.commit()
    if moved:
        log.info("start-up: %d incoming message(s) moved to the incoming queue's own file", moved)
    if copies:
        log.info("start-up: %d waiting copies queued for immediate retry", copies)


class Daemon:
    """The running daemon's main process: the SMTP listener and the spool writer thread, and
    the worker processes that process and deliver."""

    def __init__(self, app: App, config_path: str | None, workers: Pool,
                 web: socket.socket | None) -> None:
        self.app = app
        self.config_path = config_path
        self.stopped = asyncio.Event()
        self.web = web
        self.workers = workers

    def reload(self) -> None:
        """SIGHUP / `coc-mail reload`: re-read the config; on any error keep the old one."""
        try:
            fresh = config_mod.load(self.config_path)
        except CocMailError as exc:
            # Problems quote values (names, addresses): log where they are, not what they say.
            where = [p.split(":", 1)[0] for p in getattr(exc, "problems", [])] or ["?"]
            log.error("reload refused, keeping the running configuration; fix %s and run "
                      "`coc-mail check` to see the details", ", ".join(where))
            return
        self.app.settings = fresh
        self.handler.settings = fresh
        log.info("reload: configuration re-read (%d members)", len(fresh.members))
        try:
            sync_members(self.app)
        except Exception as exc:  # noqa: BLE001 - retried at the next reload or start
            log.error("reload: onboarding failed (%s)", type(exc).__name__)
        self.workers.signal(signal.SIGHUP)
        self.workers.deliver()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.app.settings
        self.spool = Spool(self.app.incoming, self.app.keys, on_commit=self.workers.process)
        self.handler = IntakeHandler(settings, self.app.addresses, self.app.engine, self.spool)
        _recover(self.app)
        sync_members(self.app)
        self.spool.start()
        self.workers.start()
        watcher = asyncio.create_task(self.workers.watch(), name="workers")
        server = await loop.create_server(
            lambda: smtp_factory(self.app.settings, self.handler),
            host=settings.server.host,
            port=settings.server.port,
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopped.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, self.workers.flush)
        log.info(
            "coc-mail ready: SMTP on %s for %s, delivering to %s (%d worker processes)%s",
            settings.server.listen,
            self.app.alias,
            settings.delivery.relay.split("@")[-1],
            self.workers.count,
            f"; web view on {settings.web.listen} ({settings.web.url})" if self.web else "",
        )
        await self.stopped.wait()
        log.info("stopping: no new mail accepted; finishing what is in hand")
        self.handler.accepting = False
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)
        await asyncio.to_thread(self.spool.stop)
        self.workers.stopping = True
        watcher.cancel()
        await asyncio.to_thread(self.workers.stop)
        log.info(
            "stopped: %d message(s) accepted in %d commit(s)%s",
            self.spool.messages, self.spool.commits,
            f", {self.workers.restarts} worker restart(s)" if self.workers.restarts else "",
        )


def serve(settings: Settings, config_path: str | None) -> None:
    lock = _lock(settings)
    web = None
    if settings.web.enabled:
        from coc_mail.web.server import bind

        web = bind(settings)
    keep = [lock.fileno()] if lock is not None else []
    workers = Pool(config_path, settings.worker_count(), keep, settings.server.pid_file,
                   web.fileno() if web is not None else None)
    workers.fork_server()  # before any database is opened or thread started
    app = build(settings, create_keys=True, wait=True)
    pid = Path(settings.server.pid_file)
    pid.parent.mkdir(parents=True, exist_ok=True)
    pid.write_text(f"{os.getpid()}\n")
    try:
        daemon = Daemon(app, config_path, workers, web)
        run_loop(daemon.run)
    finally:
        with contextlib.suppress(OSError):
            pid.unlink()
        if lock is not None:
            lock.close()
