"""The web view's process: uvicorn serving :class:`coc_mail.web.pages.Web` on the socket the
main process bound (so a port in use fails ``serve`` at once, and restarts keep the port)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import anyio.to_thread
import uvicorn
from sqlmodel import Session
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from coc_mail import config as config_mod
from coc_mail.app import build
from coc_mail.config import Settings
from coc_mail.errors import CocMailError
from coc_mail.store.engine import POOL_SIZE
from coc_mail.web import auth
from coc_mail.web.pages import WRITERS, Web

log = logging.getLogger(__name__)
MAX_HEAD = 65536  # bytes of a request line and header fields; past them: 431, as h11 answers
TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
             b"content-type: text/plain; charset=utf-8\r\ncontent-length: 33\r\n"
             b"connection: close\r\n\r\nRequest header fields too large.\n")


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol (HTTP parsed in C) with h11's bound on a request's head.
    httptools has none of its own: uvicorn appends every header it hands over, and a header
    value fed in pieces is regrown on each one, so one client could send megabytes of
    header before signing in. What a request sends besides its body (request line, header
    fields, chunk framing and trailer fields after a chunked body) is counted; past
    :data:`MAX_HEAD` the connection is answered 431 and closed (at most one read beyond the
    limit is parsed). The body's own limit is :class:`coc_mail.web.pages.BodyLimit`'s."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._not_body = 0  # bytes of this request that were not body

    def data_received(self, data: bytes) -> None:
        self._not_body += len(data)
        super().data_received(data)
        if (self._not_body > MAX_HEAD and self.transport is not None
                and not self.transport.is_closing()):
            self.transport.write(TOO_LARGE)
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        self._not_body -= len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._not_body = 0  # what comes next on this connection is another request
        super().on_message_complete()


def bind(settings: Settings) -> socket.socket:
    """The listening socket of ``web.listen`` (in the main process, before the workers)."""
    listen = settings.web.listen
    assert listen is not None
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        sock = socket.create_server((host, int(port)),
                                    family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    backlog=512)
    except OSError as exc:
        raise CocMailError(f"web.listen {listen}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


async def serve(settings: Settings, config_path: str | None, fd: int, lifeline_fd: int,
                on_queued: Callable[[], None]) -> None:
    """Serve until SIGTERM or until the main process is gone."""
    app = build(settings, migrate=False)
    web = Web(app, on_queued)
    sock = socket.socket(fileno=fd)
    config = uvicorn.Config(
        web.asgi(), log_level="warning", access_log=False,  # paths hold sign-in tokens
        proxy_headers=True, forwarded_allow_ips=list(settings.web.trusted_proxies),
        server_header=False, lifespan="off", timeout_keep_alive=30,
        limit_concurrency=1000, http=BoundedHttpTools,
    )
    server = uvicorn.Server(config)
    # Pages are synchronous (database work) and run in threads: with the posted forms' own
    # WRITERS, no more at once than the pool's connections, so none opens and drops a
    # connection of its own under load, and the GIL is not passed among forty threads
    # (anyio's default).
    anyio.to_thread.current_default_thread_limiter().total_tokens = POOL_SIZE - WRITERS
    loop = asyncio.get_running_loop()

    def reload() -> None:
        try:
            app.settings = config_mod.load(config_path)
        except CocMailError:
            return  # the main process logs why and keeps the old configuration
        try:
            with Session(app.engine) as session:
                ended = auth.forget_departed(app, session)
                session.commit()
        except Exception as exc:  # noqa: BLE001 - they are refused anyway; retried next time
            log.error("web: reload: sessions of departed members not removed (%s)",
                      type(exc).__name__)
            return
        if ended:
            log.info("web: reload: %d session(s) and link(s) of departed members removed", ended)

    def orphaned() -> None:
        if not os.read(lifeline_fd, 1):
            loop.remove_reader(lifeline_fd)
            server.should_exit = True

    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_reader(lifeline_fd, orphaned)
    await server.serve(sockets=[sock])
    log.info("web view stopped")
