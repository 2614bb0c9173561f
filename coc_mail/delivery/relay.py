"""Relay sessions: aiosmtplib opens them (TLS, AUTH); mail transactions are pipelined.

aiosmtplib does what is worth a library (STARTTLS, implicit TLS, AUTH, EHLO), then hands the
connection over. From there :class:`Replies` reads the relay's replies in order however the
segments split or join them (aiosmtplib's protocol keeps one reply at a time, so it cannot
pipeline), and a copy's MAIL, RCPT and DATA go out as one group when the relay offers
PIPELINING (RFC 2920), the way Postfix's smtp(8) sends: two round trips a copy instead of
four. Without PIPELINING the commands go one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple, cast
from urllib.parse import urlsplit

import aiosmtplib
import aiosmtplib.protocol
from aiosmtplib.email import quote_address

from coc_mail.config import Settings
from coc_mail.errors import DeliveryError
from coc_mail.mail.downgrade import needs_downgrade, seven_bit
from coc_mail.store.crypto import BIG  # big content is written a piece of this size at a time

MAX_LINE = 8192  # a longer reply line ends the session (RFC 5321 4.5.3.1.5 says 512)
MAX_LINES = 200  # lines of one multi-line reply; more end the session
DATA_DONE = 600.0  # seconds for the reply to the end of DATA (RFC 5321 4.5.3.2.6: 10 min)
_PLAIN_ADDRESS = re.compile(r"[!-;=?-~]+@[!-;=?-~]+")  # printable ASCII, no < or >


class Reply(NamedTuple):
    """One SMTP reply: its code and its text (lines joined by newlines)."""

    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class Lost(DeliveryError):
    """The connection ended or broke (a temporary failure)."""

    content_sent = False  # set when the message had gone out: never sent again at once

    def __init__(self, why: str) -> None:
        super().__init__(f"relay: {why}", permanent=False)


class Replies(asyncio.Protocol):
    """Reads a relay's replies, in order, into the futures :meth:`expect` handed out."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.buffer = bytearray()
        self.lines: list[bytes] = []
        self.waiting: deque[asyncio.Future[Reply]] = deque()
        self.error: Lost | None = None
        self.writable = asyncio.Event()  # cleared while the transport's buffer is full
        self.writable.set()

    def expect(self, count: int) -> list[asyncio.Future[Reply]]:
        """Futures for the next ``count`` replies (ask before writing the commands)."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(count)]
        for future in futures:
            if self.error is not None:
                _fail(future, self.error)
            else:
                self.waiting.append(future)
        return futures

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\n")) != -1:
            line = bytes(self.buffer[:end + 1])
            del self.buffer[:end + 1]
            if len(line) > MAX_LINE or not line[:3].isdigit():
                self.close(Lost("malformed reply"))
                return
            self.lines.append(line)
            if line[3:4] == b"-":
                if len(self.lines) >= MAX_LINES:  # never cut a reply short: out of step
                    self.close(Lost("reply too long"))
                    return
                continue
            text = "\n".join(x[4:].strip().decode("utf-8", "replace") for x in self.lines)
            reply, self.lines = Reply(int(line[:3]), text), []
            if not self.waiting:  # a reply to nothing (421 before a close): session over
                self.close(Lost(f"unexpected reply {reply.code}"))
                return
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(reply)
        if len(self.buffer) > MAX_LINE:
            self.close(Lost("malformed reply"))

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def eof_received(self) -> bool:
        self.close(Lost("the relay closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(Lost("connection lost"))

    def close(self, error: Lost) -> None:
        """End the session: every reply still awaited fails with ``error``."""
        if self.error is None:
            self.error = error
        while self.waiting:
            _fail(self.waiting.popleft(), self.error)
        self.writable.set()  # a writer waiting for room sees the error
        self.transport.abort()


def _fail(future: asyncio.Future[Reply], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # retrieved: nobody may await it any more


def _line_endings(message: bytes) -> bytes:
    """aiosmtplib's line-ending normalisation (every line ends CRLF, and so does the
    message), without its regex when the message is CRLF throughout already."""
    pairs = message.count(b"\r\n")
    if message.count(b"\n") == pairs and message.count(b"\r") == pairs:
        return message if message.endswith(b"\r\n") else message + b"\r\n"
    return aiosmtplib.protocol.normalize_message_line_endings(message)


def _stuff_dots(message: bytes) -> bytes:
    """Transparency (RFC 5321 4.5.2): a dot that starts a line is doubled; aiosmtplib's
    ``(?m)^\\.`` substitution as ``bytes.replace`` (a line starts at the start or after LF)."""
    stuffed = message.replace(b"\n.", b"\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


SHARE_LIMIT = 1 << 20  # bodies up to this size keep their DATA form (bigger: made per copy)


class SharedPart(bytes):
    """A body part that many copies send (a report's, to every member). Its DATA form (line
    endings, doubled leading dots) is made on first use and kept on the part itself, so the
    five passes over it run once for all the copies, and the form lives exactly as long as
    the body in the delivery worker's cache."""

    def data_form(self) -> bytes:
        found: bytes | None = self.__dict__.get("data")
        if found is None:
            found = self.__dict__["data"] = _stuff_dots(_line_endings(self))
        return found


def shared_part(content: bytes) -> bytes:
    """``content`` marked as shared by copies (see :class:`SharedPart`), when small enough
    that keeping a second form of it costs little."""
    return SharedPart(content) if len(content) <= SHARE_LIMIT else content


def _data_form(part: bytes) -> bytes:
    return part.data_form() if isinstance(part, SharedPart) else _stuff_dots(_line_endings(part))


def encode_data(parts: Sequence[bytes]) -> list[bytes]:
    """The DATA payload of a message given in parts, end marker included. Parts that each end
    with CRLF are encoded one by one (a 25 MiB copy is never joined; a :class:`SharedPart`
    keeps its form for the next copies); otherwise the join."""
    filled = [p for p in parts if p]
    if filled and all(p.endswith(b"\r\n") for p in filled[:-1]):
        return [*map(_data_form, filled), b".\r\n"]
    return [_stuff_dots(_line_endings(b"".join(parts))), b".\r\n"]


def _address(address: str, utf8: bool) -> bytes:
    """An address as MAIL and RCPT carry it: plain ASCII as is (parsing our own bounce
    address and members' addresses for every copy cost more than the dialogue); anything
    else through aiosmtplib's parser and quoting."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return b"<" + address.encode("ascii") + b">"
    try:
        quoted = quote_address(address)
    except ValueError:
        raise DeliveryError("the address cannot be written on an SMTP line",
                            permanent=True) from None
    if quoted.isascii():
        return quoted.encode("ascii")
    if not utf8:  # as Postfix says it (RFC 6531: the relay must offer SMTPUTF8)
        raise DeliveryError("SMTPUTF8 is required, but was not offered by the relay",
                            permanent=True)
    return quoted.encode("utf-8")


def _refusal(reply: Reply) -> DeliveryError:
    """The error for a refusing reply; 421 (the relay is closing the session) is a
    :class:`Lost`, so a reused connection is replaced at once."""
    if reply.code == 421:
        return Lost(str(reply))
    return DeliveryError(str(reply), permanent=500 <= reply.code < 600)


class RelaySession:
    """One open connection to the relay, taken over from aiosmtplib after EHLO/TLS/AUTH."""

    def __init__(self, client: aiosmtplib.SMTP, timeout: float) -> None:
        if client.transport is None:
            raise Lost("connection lost")
        transport = cast(asyncio.Transport, client.transport)  # uvloop's is not a subclass
        self.pipelining = client.supports_extension("pipelining")
        self.smtputf8 = client.supports_extension("smtputf8")
        self.eightbit = client.supports_extension("8bitmime")
        self.timeout = timeout
        self.replies = Replies(transport)
        transport.set_protocol(self.replies)
        client.transport = client.protocol = None  # ours now; aiosmtplib lets go

    @property
    def usable(self) -> bool:
        return self.replies.error is None and not self.replies.transport.is_closing()

    async def _wait(
        self, futures: list[asyncio.Future[Reply]], timeout: float | None = None
    ) -> list[Reply]:
        timer = asyncio.get_running_loop().call_later(
            timeout or self.timeout, self.replies.close, Lost("timed out waiting for the relay"))
        try:
            return [await f for f in futures]
        finally:
            timer.cancel()

    async def _commands(self, *commands: bytes) -> list[Reply]:
        if not self.usable:
            raise self.replies.error or Lost("connection lost")
        futures = self.replies.expect(len(commands))
        self.replies.transport.write(b"".join(c + b"\r\n" for c in commands))
        return await self._wait(futures)

    async def send(self, sender: str, recipient: str, parts: Sequence[bytes],
                   downgrade: Callable[[bytes], bytes] = seven_bit) -> None:
        """One mail transaction. Raises :class:`DeliveryError` (a :class:`Lost` when the
        connection broke or the relay closes it: a 421). 8-bit content goes with
        BODY=8BITMIME (RFC 6152), or through ``downgrade`` to a relay that does not offer it
        (the delivery worker's re-signs after re-encoding)."""
        from_, to = _address(sender, self.smtputf8), _address(recipient, self.smtputf8)
        mail = b"MAIL FROM:" + from_
        if not (from_.isascii() and to.isascii()):
            mail += b" SMTPUTF8"
        if needs_downgrade(parts):
            if self.eightbit:
                mail += b" BODY=8BITMIME"
            else:
                # re-encoding and re-signing a big copy takes a while: not on the event loop,
                # where the other sessions' timers run
                parts = [await asyncio.to_thread(downgrade, b"".join(parts))]
        rcpt = b"RCPT TO:" + to
        if self.pipelining:
            replies = await self._commands(mail, rcpt, b"DATA")
        else:
            replies = []
            for command, wanted in ((mail, (250,)), (rcpt, (250, 251)), (b"DATA", (354,))):
                replies += await self._commands(command)
                if replies[-1].code not in wanted:
                    raise _refusal(replies[-1])
        failed = next((r for r, wanted in zip(replies, ((250,), (250, 251)), strict=False)
                       if r.code not in wanted), None)
        if replies[2].code == 354 and failed is not None:
            # RFC 2920 3.1: DATA accepted without a recipient: an empty message ends it (its
            # answer does not matter: the refusal above is what is reported)
            with contextlib.suppress(Lost):
                await self._commands(b".")
        if failed is not None or replies[2].code != 354:
            raise _refusal(failed or replies[2])
        futures = self.replies.expect(1)
        try:
            await self._write(encode_data(parts))
            (final,) = await self._wait(futures, max(self.timeout, DATA_DONE))
        except Lost as lost:
            lost.content_sent = True
            raise
        if final.code != 250:
            refusal = _refusal(final)
            if isinstance(refusal, Lost):
                refusal.content_sent = True
            raise refusal

    async def _write(self, payload: list[bytes]) -> None:
        """Write the message content; a big one a megabyte at a time, waiting for room in the
        transport's buffer (at most ``timeout`` seconds without progress)."""
        transport = self.replies.transport
        if sum(len(p) for p in payload) < BIG:
            transport.writelines(payload)
            return
        for part in payload:
            view = memoryview(part)
            for start in range(0, len(view), BIG):
                if not self.replies.writable.is_set():
                    try:
                        await asyncio.wait_for(self.replies.writable.wait(), self.timeout)
                    except TimeoutError:
                        self.replies.close(Lost("timed out sending to the relay"))
                if not self.usable:
                    raise self.replies.error or Lost("connection lost")
                transport.write(view[start:start + BIG])

    def close(self) -> None:
        """QUIT without waiting for the answer, then close (buffered writes go first)."""
        transport = self.replies.transport
        if self.usable:
            with contextlib.suppress(Exception):
                transport.write(b"QUIT\r\n")
        self.replies.error = self.replies.error or Lost("closed")
        transport.close()


class SmtpTransport:
    """Delivers through an SMTP relay: ``smtp://`` (STARTTLS when offered, or required with
    ``delivery.require_tls``) or ``smtps://`` (TLS from the start), AUTH when configured.
    Connections are kept open and reused (at most ``pool`` idle ones), as Postfix's
    connection cache does; a reused connection found closed is replaced once.

    Trouble opening a session (a refused greeting, STARTTLS or EHLO, a failed login) is
    temporary whatever its code, as Postfix treats it: it is about the relay, not the copy,
    and must never drop the queue (a rotated relay password would otherwise delete it all).
    """

    def __init__(
        self,
        url: str,
        username: str | None,
        password: str | None,
        require_tls: bool,
        timeout: float,
        ca_file: str | None = None,
        pool: int = 4,
        helo: str | None = None,
        downgrade: Callable[[bytes], bytes] = seven_bit,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.implicit = parts.scheme == "smtps"
        self.port = parts.port or (465 if self.implicit else 25)
        self.username, self.password = username, password
        self.require_tls, self.timeout = require_tls, timeout
        self.context = ssl.create_default_context(cafile=ca_file)  # built once: it is costly
        self.pool = pool
        self.helo = helo  # the EHLO name (else aiosmtplib asks getfqdn() for every connection)
        self.idle: list[RelaySession] = []
        self.downgrade = downgrade  # 8-bit copies for a relay without 8BITMIME

    @classmethod
    def from_settings(cls, settings: Settings, timeout: float | None = None,
                      downgrade: Callable[[bytes], bytes] = seven_bit) -> SmtpTransport:
        """The transport ``delivery.*`` describes. The EHLO name is ``server.hostname`` when
        it is a domain name, else this machine's (relays often refuse a dotless name such as
        the default ``localhost``), looked up once."""
        delivery, hostname = settings.delivery, settings.server.hostname
        return cls(
            delivery.relay, delivery.username, delivery.password(), delivery.require_tls,
            timeout or delivery.timeout_seconds, delivery.tls_ca_file,
            pool=settings.copies_in_flight(),
            helo=hostname if "." in hostname else socket.getfqdn(), downgrade=downgrade,
        )

    async def probe(self) -> None:
        """Open a session (TLS, AUTH, EHLO) and close it; raises :class:`DeliveryError`."""
        (await self._connect()).close()

    async def _connect(self) -> RelaySession:
        client: aiosmtplib.SMTP | None = None
        try:
            client = aiosmtplib.SMTP(
                hostname=self.host, port=self.port, use_tls=self.implicit,
                # smtps:// is TLS already; smtp:// takes STARTTLS when offered, or requires it
                start_tls=False if self.implicit else (True if self.require_tls else None),
                tls_context=self.context, timeout=self.timeout, local_hostname=self.helo,
            )
            await client.connect()
            if self.username:
                await client.login(self.username, self.password or "")
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()
            return RelaySession(client, self.timeout)
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryError(f"relay: {exc.code} {exc.message}", permanent=False) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError) as exc:
            raise DeliveryError(f"relay: {type(exc).__name__}: {exc}", permanent=False) from None
        finally:
            if client is not None and client.transport is not None:  # not handed over
                client.close()

    async def send(
        self, uid: str, envelope_from: str, recipient: str, parts: Sequence[bytes]
    ) -> None:
        session = None
        while self.idle and session is None:
            candidate = self.idle.pop()
            if candidate.usable:
                session = candidate
            else:
                candidate.close()
        reused = session is not None
        try:
            try:
                if session is None:
                    session = await self._connect()
                await session.send(envelope_from, recipient, parts, self.downgrade)
            except Lost as lost:
                if not reused or lost.content_sent:
                    raise
                assert session is not None
                session.close()  # the relay had closed (or is closing) an idle connection
                session = None
                session = await self._connect()
                await session.send(envelope_from, recipient, parts, self.downgrade)
        except BaseException:  # refused, broken, or cancelled at shutdown: never pooled
            if session is not None:
                session.close()
            raise
        if len(self.idle) < self.pool:
            self.idle.append(session)
        else:
            session.close()

    def close(self) -> None:
        """Say QUIT on the idle connections (shutdown)."""
        while self.idle:
            self.idle.pop().close()
