"""``coc-mail serve``: wire intake, processor and delivery together and run until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from sqlalchemy.engine import make_url
from sqlmodel import Session, update

from . import config as config_mod
from . import workflow
from .app import App, build
from .config import Settings
from .delivery import Deliverer, make_transport, retry_now
from .errors import CocMailError
from .intake import IntakeHandler, smtp_factory
from .outbox import Outbox
from .processor import Processor
from .reminders import Scheduler
from .spool import Spool
from .store import Inbound

log = logging.getLogger(__name__)


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
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise CocMailError(
            f"another coc-mail daemon holds {path}: with SQLite only one may run "
            "(use PostgreSQL to run several)"
        ) from None
    return fh


def sync_members(app: App) -> None:
    """Records for every configured member; onboarding mail to the new ones."""
    with Session(app.engine, autoflush=False) as session:
        outbox = Outbox(app)
        onboarded = workflow.sync_members(app, outbox, session)
        outbox.write(session)
        session.commit()
    if onboarded:
        log.info("onboarding sent to %d new member(s)", len(onboarded))


def _recover(app: App) -> None:
    """Start-up: every waiting copy is due now; with SQLite (one daemon) old claims are void."""
    single = app.settings.database_url.startswith("sqlite")
    copies = retry_now(app, clear_claims=single)
    if single:
        with Session(app.engine) as session:
            session.exec(update(Inbound).values(claimed_until=None))
            session.commit()
    if copies:
        log.info("start-up: %d waiting copies queued for immediate retry", copies)


def _call_soon(loop: asyncio.AbstractEventLoop, func: Callable[[], object]) -> None:
    loop.call_soon_threadsafe(func)


class Daemon:
    """The running daemon: one asyncio loop for SMTP and delivery, threads for the rest."""

    def __init__(self, app: App, config_path: str | None) -> None:
        self.app = app
        self.config_path = config_path
        self.stopped = asyncio.Event()

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
        self.deliverer.wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.app.settings
        self.deliverer = Deliverer(self.app, make_transport(self.app))
        self.processor = Processor(
            self.app, on_queued=lambda: _call_soon(loop, self.deliverer.wake.set)
        )
        self.spool = Spool(self.app.engine, self.app.keys, on_commit=self.processor.wake.set)
        self.handler = IntakeHandler(settings, self.app.addresses, self.app.engine, self.spool)
        _recover(self.app)
        sync_members(self.app)
        self.spool.start()
        scheduler = Scheduler(self.app, lambda: _call_soon(loop, self.deliverer.wake.set))
        ticker = threading.Thread(target=scheduler.run, name="reminders", daemon=True)
        ticker.start()
        worker = threading.Thread(target=self.processor.run, name="processor", daemon=True)
        worker.start()
        delivery = asyncio.create_task(self.deliverer.run(), name="delivery")
        server = await loop.create_server(
            lambda: smtp_factory(self.app.settings, self.handler),
            host=settings.server.host,
            port=settings.server.port,
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopped.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, self.deliverer.wake.set)
        log.info(
            "coc-mail ready: SMTP on %s for %s, delivering to %s",
            settings.server.listen,
            self.app.alias,
            settings.delivery.relay.split("@")[-1],
        )
        await self.stopped.wait()
        log.info("stopping: no new mail accepted; finishing what is in hand")
        self.handler.accepting = False
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)
        await asyncio.to_thread(self.spool.stop)
        scheduler.stopping.set()
        self.processor.stopping.set()
        self.processor.wake.set()
        await asyncio.to_thread(worker.join, 30)
        self.deliverer.stop()  # copies being sent are finished and recorded, up to 30 s
        try:
            await asyncio.wait_for(delivery, 30)
        except (TimeoutError, asyncio.CancelledError):
            log.warning("stopping: copies still in flight are left to the next start")
        log.info(
            "stopped: %d message(s) accepted in %d commit(s), %d processed, %d copies "
            "delivered, %d deferrals",
            self.spool.messages, self.spool.commits, self.processor.processed,
            self.deliverer.delivered, self.deliverer.deferred,
        )


def serve(settings: Settings, config_path: str | None) -> None:
    lock = _lock(settings)
    app = build(settings, create_keys=True)
    pid = Path(settings.server.pid_file)
    pid.parent.mkdir(parents=True, exist_ok=True)
    pid.write_text(f"{os.getpid()}\n")
    try:
        asyncio.run(Daemon(app, config_path).run())
    finally:
        with contextlib.suppress(OSError):
            pid.unlink()
        if lock is not None:
            lock.close()
