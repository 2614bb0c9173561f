"""The SMTP side: an aiosmtpd handler that only gives verdicts and commits accepted mail.

RCPT: each address is classified (:mod:`coc_mail.smtp.verdicts`); unknown ones get 550 at once.
DATA: size (aiosmtpd, 552), header presence, loop and hop checks, then a durable commit to
the incoming queue and only then ``250``. Parsing, routing, rendering and signing happen
later, in :mod:`coc_mail.cases.processor`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import ssl
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any, cast

import aiosmtpd.smtp
from aiosmtpd.smtp import MISSING, SMTP
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session as SmtpSession
from sqlalchemy.engine import Engine
from sqlmodel import Session

from coc_mail.config import Settings
from coc_mail.errors import StoreUnavailable
from coc_mail.mail.addresses import Addresses
from coc_mail.mail.message import Envelope, header_block
from coc_mail.smtp import verdicts
from coc_mail.smtp.limits import Limits
from coc_mail.smtp.spool import DiskFull, Spool
from coc_mail.store.crypto import BIG

log = logging.getLogger(__name__)


class IntakeHandler:
    """aiosmtpd handler: ``handle_RCPT`` and ``handle_DATA`` verdicts, nothing slow."""

    def __init__(
        self, settings: Settings, addresses: Addresses, engine: Engine, spool: Spool
    ) -> None:
        self.settings = settings
        self.addresses = addresses
        self.engine = engine
        self.spool = spool
        self.loop_marker = addresses.alias.encode()
        self.accepting = True
        self.limits = Limits(
            max_per_ip=settings.server.max_connections_per_ip,
            unknown_per_window=settings.server.unknown_recipients_per_10_minutes,
            trusted=lambda ip: self.settings.intake.is_trusted(ip),
        )

    def _lookup(self, address: str) -> str:
        recipient = self.addresses.parse(address)
        if verdicts.needs_database(recipient):
            with Session(self.engine) as session:
                return verdicts.rcpt_verdict(address, self.settings, self.addresses, session)[0]
        return verdicts.rcpt_verdict(address, self.settings, self.addresses, None)[0]

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: SmtpEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= verdicts.MAX_RECIPIENTS:
            return verdicts.TOO_MANY_RCPTS
        ip = str(session.peer[0]) if session.peer else ""
        if self.limits.penalised(ip):
            return verdicts.GUESSING
        recipient = self.addresses.parse(address)
        try:
            if verdicts.needs_database(recipient):
                reply = await asyncio.to_thread(self._lookup, address)
            else:
                reply = self._lookup(address)
        except Exception as exc:  # noqa: BLE001 - the database is down: let the sender retry
            log.warning("rcpt: lookup failed: %s", type(exc).__name__)
            return verdicts.TEMP_STORE
        if reply.startswith("250"):
            if address.lower() not in (a.lower() for a in envelope.rcpt_tos):
                envelope.rcpt_tos.append(address)  # a repeated RCPT is accepted once
        else:
            if reply == verdicts.NO_SUCH_USER:
                self.limits.miss(ip)
            log.info("rcpt: refused %s from %s", reply[:9], ip or "?")
        return reply

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: SmtpEnvelope) -> str:
        if not self.accepting:
            return verdicts.SHUTTING_DOWN
        content: bytes = envelope.original_content or b""
        head = header_block(content)
        if len(head) > verdicts.MAX_HEADER_BYTES:
            return verdicts.HEADERS_TOO_BIG.format(limit=verdicts.MAX_HEADER_BYTES)
        headers = BytesHeaderParser(policy=compat32).parsebytes(head)
        if not headers.keys():
            return verdicts.NO_HEADERS
        for value in headers.get_all("X-Loop", []):
            if str(value).strip().lower().encode() == self.loop_marker:
                log.warning("data: loop detected, refused")
                return verdicts.LOOP
        if len(headers.get_all("Received", [])) > verdicts.MAX_HOPS:
            return verdicts.TOO_MANY_HOPS
        smtputf8 = "SMTPUTF8" in {o.upper() for o in envelope.mail_options}
        spooled = Envelope(
            mail_from=(envelope.mail_from or "").strip().strip("<>"),  # null sender: ""
            rcpt_tos=list(envelope.rcpt_tos),
            peer=str(session.peer[0]) if session.peer else "",
            smtputf8=smtputf8,
            tls=session.ssl is not None,
        )
        try:
            queue_id = await self.spool.put(spooled, content)
        except DiskFull:
            return verdicts.DISK_FULL
        except StoreUnavailable:
            return verdicts.TEMP_STORE
        log.info(
            "data: queued inbound %d (%d bytes, %d rcpt)",
            queue_id,
            len(content),
            len(spooled.rcpt_tos),
        )
        return verdicts.QUEUED.format(id=queue_id)


    async def handle_exception(self, error: Exception) -> str:
        """An unexpected error in a session: a temporary failure, logged without content."""
        log.error("smtp: unexpected %s", type(error).__name__)
        return verdicts.UNEXPECTED


TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"  # aiosmtpd's words
TOO_MUCH = "552 Error: Too much mail data"


class _SessionInspect:
    """What :mod:`aiosmtpd.smtp` asks of :mod:`inspect` when it sets up each session, from a
    cache per class: the ``auth_*`` methods of the protocol and of the handler (it looks
    through every member of both, a quarter of the intake's CPU with one message a
    connection, as smtp-source and most MTAs send) and the EHLO hook's parameters. Only
    that module sees it (its only two uses of :mod:`inspect`); aiosmtpd is pinned below 1.5
    in pyproject.toml, where these internals are read."""

    def __init__(self) -> None:
        self._names: dict[type, tuple[str, ...]] = {}
        self._signatures: dict[Any, inspect.Signature] = {}

    def getmembers(self, obj: object) -> list[tuple[str, Any]]:
        names = self._names.get(type(obj))
        if names is None:  # the class's own (inherited too); an instance's are added below
            names = self._names[type(obj)] = tuple(
                name for name, _ in inspect.getmembers(type(obj)) if name.startswith("auth_"))
        own = [n for n in getattr(obj, "__dict__", {}) if n.startswith("auth_")]
        return sorted((name, getattr(obj, name)) for name in {*names, *own})

    def signature(self, func: Any) -> inspect.Signature:
        key = (getattr(func, "__func__", func), hasattr(func, "__self__"))
        found = self._signatures.get(key)
        if found is None:
            found = self._signatures[key] = inspect.signature(func)
        return found


aiosmtpd.smtp.inspect = _SessionInspect()  # type: ignore[attr-defined,assignment]


class _Got:
    """What one DATA transfer has kept so far, and its refusal once one is known (after which
    nothing more is kept). Its bytes count towards ``BoundedSMTP.held`` until released."""

    def __init__(self, smtp: BoundedSMTP) -> None:
        self.smtp = smtp
        self.data = bytearray()
        self.size = 0  # bytes of DATA read, kept or not
        self.refusal = ""
        self.counted = 0  # of BoundedSMTP.held, this transfer's share

    def _keep(self, raw: int, text: bytes | bytearray | memoryview, too_long: bool,
              overrun: bool = False) -> None:
        """The first problem decides the answer, in aiosmtpd's order: a line past the
        reader's limit as it is read, the size limit, then a whole line too long."""
        self.size += raw
        limit = self.smtp.data_size_limit
        if overrun:
            self.refusal = self.refusal or TOO_LONG
        elif limit and self.size > limit:
            self.refusal = self.refusal or TOO_MUCH
        elif too_long:
            self.refusal = self.refusal or TOO_LONG
        elif BoundedSMTP.held + raw > self.smtp.max_data_memory:
            self.refusal = self.refusal or verdicts.TOO_BUSY
            log.warning("data: %d bytes held by all sessions; this one gets 451",
                        BoundedSMTP.held)
        if self.refusal:
            self.data = bytearray()  # nothing more is kept once the answer is known
            self.release()
            return
        self.data += text
        BoundedSMTP.held += raw
        self.counted += raw

    def line(self, line: bytes, *, too_long: bool) -> None:
        """One line as sent (CRLF included): kept without a leading dot (RFC 5321 4.5.2)."""
        self._keep(len(line), memoryview(line)[1:] if line[:1] == b"." else line, too_long)

    def lines(self, lines: bytearray) -> None:
        """Whole lines as sent (the transparency dots of RFC 5321 4.5.2 still in)."""
        if not lines:
            return
        too_long = len(lines) > self.smtp.line_length_limit and _longest_over(
            lines, self.smtp.line_length_limit)
        limit = self.smtp.data_size_limit
        if too_long and not self.refusal and limit and self.size + len(lines) > limit:
            start = 0  # both problems in these lines: the first one met decides, line by line
            while start < len(lines):
                end = lines.find(b"\r\n", start) + 2
                self.line(bytes(lines[start:end]),
                          too_long=end - start > self.smtp.line_length_limit)
                start = end
            return
        text: bytes | bytearray = lines
        if lines[:1] == b"." or b"\r\n." in lines:
            text = (b"\r\n" + lines).replace(b"\r\n.", b"\r\n")[2:]
        self._keep(len(lines), text, too_long)

    def overlong(self, raw: int) -> None:
        """Part of a line past the reader's limit, read and dropped."""
        self._keep(raw, b"", too_long=True, overrun=True)

    def release(self) -> None:
        BoundedSMTP.held -= self.counted
        self.counted = 0


def _longest_over(lines: bytearray, limit: int) -> bool:
    """Is a line of ``lines`` (whole CRLF lines) longer than ``limit``, CRLF included? Looks
    for the last line end each ``limit`` bytes can reach, not at every line."""
    start, size = 0, len(lines)
    while size - start > limit:
        end = lines.rfind(b"\r\n", start, start + limit)
        if end == -1:
            return True
        start = end + 2
    return False


class BoundedSMTP(SMTP):
    """aiosmtpd's SMTP with a cap on concurrent connections (421 beyond it), on the DATA bytes
    all sessions hold in memory together (``server.max_data_memory_bytes``; a session that
    would go past it is answered ``451`` once its data is read, and keeps nothing), and lines
    up to 64 KiB: RFC 5321 says 1000, but real mail (HTML from some clients) has longer lines
    and a report must not bounce for it (Postfix accepts them too)."""

    active = 0
    held = 0  # DATA bytes held by every session of this process, until their commit
    line_length_limit = 65536

    def __init__(
        self,
        handler: Any,
        *,
        max_connections: int,
        limits: Limits,
        max_session_seconds: float,
        max_data_memory: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.max_connections = max_connections
        self.max_data_memory = max_data_memory
        self.limits = limits
        self.max_session_seconds = max_session_seconds
        self._counted = False
        self._ip = ""
        self._deadline: asyncio.TimerHandle | None = None

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parser for MAIL and RCPT, without the class it defines on every
        call (a ``typing.Protocol``, for its type checker: a class built for each address)."""
        if not arg:
            return "", ""
        address: Any
        try:
            if arg.lstrip().startswith("<"):
                address, rest = get_angle_addr(arg)
            else:
                address, rest = get_addr_spec(arg)
        except HeaderParseError:
            return None, None
        addr = str(address.addr_spec)
        localpart = addr.rpartition("@")[0]
        if self.local_part_limit and len(localpart) > self.local_part_limit:
            return None, None
        return addr, rest

    async def smtp_DATA(self, arg: str) -> None:
        """DATA read into one growing buffer, a stretch of lines at a time. aiosmtpd reads a
        line at a time, keeps every line as an object of its own and then joins them,
        holding a big message about four times over (measured in ``bench/scale.py``); this
        holds it about once, and a message that fits the reader's buffer is found whole by
        two searches instead of a read per line. Replies, limits and the handler call are
        aiosmtpd's: 503/501 before 354, ``500`` for an over-long line, ``552`` past
        ``data_size_limit`` (both after the whole message is read, RFC 5321 4.2.5)."""
        if self._decode_data:  # pragma: no cover - coc-mail takes bytes; keep aiosmtpd's
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        got = _Got(self)
        try:
            carry = await self._read_stretches(got)
            if carry is not None:
                await self._read_lines(got, carry)
            if got.refusal:
                await self.push(got.refusal)
                self._set_post_data_state()  # type: ignore[no-untyped-call]
                return
            data = got.data
            content = bytes(data) if len(data) < BIG else data  # big: never copied
            self.envelope.content = self.envelope.original_content = content  # type: ignore[assignment]
            got.data = bytearray()
            del data
            status = await self._call_handler_hook("DATA")
        finally:
            got.release()
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _read_stretches(self, got: _Got) -> bytes | None:
        """Read DATA a stretch of whole lines at a time while the end is found within the
        reader's buffer: from a line start, up to the first CR (the line ``.`` ends the
        data), then up to the next ``LF . CR LF``, which ends the data when a CR comes just
        before it. Returns None at the end of the data; otherwise (no end within the
        buffer's limit: a big message) the part of the current line already read, for
        :meth:`_read_lines` to go on from. Nothing past the end marker is read: commands
        pipelined after it stay for aiosmtpd (RFC 2920)."""
        reader = self._reader
        lines = bytearray()  # whole lines read, not yet kept
        while True:
            try:  # at a line start
                head = await reader.readuntil(b"\r")
            except asyncio.LimitOverrunError:
                got.lines(lines)
                return b""
            if head == b".\r":
                after = await reader.readexactly(1)
                if after == b"\n":
                    got.lines(lines)
                    return None
                head += after
            try:
                rest = await reader.readuntil(b"\n.\r\n")
            except asyncio.LimitOverrunError:
                got.lines(lines)
                return head
            before = rest[-5:-4] if len(rest) > 4 else head[-1:]
            lines += head
            if before == b"\r":  # ".\r\n" on a line of its own: the end
                lines += memoryview(rest)[:-3]
                got.lines(lines)
                return None
            lines += rest  # a bare LF before it: one line goes on, to the CRLF ending it
            if len(lines) >= self.line_length_limit:  # whole lines: kept (and counted) now
                got.lines(lines)
                lines = bytearray()

    async def _read_lines(self, got: _Got, carry: bytes) -> None:
        """Read the rest of DATA a line at a time (a message bigger than the reader's
        buffer), ``carry`` being the start of the current line, read already."""
        reader = self._reader
        continued = False  # inside a line longer than the reader's limit
        while self.transport is not None:
            # a carry ending in CR may have its LF next: read to that LF, or the CRLF split
            # between the two would be missed and two lines merged
            until = b"\n" if carry.endswith(b"\r") else b"\r\n"
            try:
                line = carry + await reader.readuntil(until)
            except asyncio.LimitOverrunError as exc:
                chunk = await reader.read(exc.consumed)  # drained, never kept
                got.overlong(len(carry) + len(chunk))
                carry, continued = b"", True
                continue
            if not line.endswith(b"\r\n"):  # a bare LF after that CR: the line goes on
                carry = line
                continue
            carry = b""
            if line == b".\r\n" and not continued:
                return
            got.line(line, too_long=len(line) > self.line_length_limit)
            continued = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._ip = str(peer[0]) if peer else ""
        too_many = BoundedSMTP.active >= self.max_connections
        if too_many or not self.limits.open(self._ip):
            # uvloop's transports write but are not asyncio.WriteTransport subclasses.
            cast(asyncio.WriteTransport, transport).write(
                b"421 4.7.0 Too many connections, try again later\r\n"
            )
            transport.close()
            return
        BoundedSMTP.active += 1
        self._counted = True
        # A whole session, however busy, has a time limit (slowloris clients trickle bytes
        # and are never idle).
        self._deadline = asyncio.get_running_loop().call_later(
            self.max_session_seconds, transport.close
        )
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if not self._counted:  # refused in connection_made: nothing was set up
            return
        BoundedSMTP.active -= 1
        self._counted = False
        self.limits.close(self._ip)
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(error)


_CONTEXTS: dict[tuple[object, ...], ssl.SSLContext] = {}


def _stamp(cert: str, key: str) -> tuple[object, ...]:
    """What tells one version of the certificate and key files from another: inode, size,
    modification and change times (a copy that keeps the old modification time still
    changes the change time, which no one can set)."""
    marks: list[object] = [cert, key]
    for path in (cert, key):
        try:
            st = os.stat(path)
            marks += [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        except OSError:
            marks.append(None)  # loading says what is wrong
    return tuple(marks)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A server TLS context when ``server.tls_cert``/``tls_key`` are set, else ``None``.
    It is made once and made again when either file changes (a renewed certificate is used
    from the next session on, without a restart): loading them for each session, as before,
    cost a millisecond or more of the listener's CPU per connection. A context is kept only
    if neither file changed while it was being loaded (a half-written file is not kept)."""
    cert, key = settings.server.tls_cert, settings.server.tls_key
    if not cert or not key:
        return None
    stamp = _stamp(cert, key)
    context = _CONTEXTS.get(stamp)
    if context is None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        if _stamp(cert, key) == stamp:
            _CONTEXTS.clear()  # the files' earlier versions are not needed again
            _CONTEXTS[stamp] = context
    return context


def smtp_factory(settings: Settings, handler: IntakeHandler) -> BoundedSMTP:
    return BoundedSMTP(
        handler,
        max_connections=settings.server.max_connections,
        limits=handler.limits,
        max_session_seconds=settings.server.max_session_seconds,
        max_data_memory=settings.server.max_data_memory_bytes,
        data_size_limit=settings.server.max_message_bytes,
        enable_SMTPUTF8=True,
        decode_data=False,
        hostname=settings.server.hostname,
        ident="coc-mail",
        tls_context=tls_context(settings),
        timeout=settings.server.timeout_seconds,
    )
