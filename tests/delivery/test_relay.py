"""The relay client (coc_mail/delivery/relay.py) against real SMTP servers over loopback: aiosmtpd
(with implicit TLS, AUTH) and a scripted server that misbehaves in the ways relays do."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from coc_mail.delivery.relay import SmtpTransport
from coc_mail.errors import DeliveryError
from tests.helpers import Relay, free_port, self_signed

COPY = [b"From: a@example.org\r\nSubject: x\r\n\r\n", b"body\r\n"]


class Captured(Relay):
    """The helpers' relay, also keeping each transaction's MAIL parameters."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.mail_options: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mail_options.append(list(envelope.mail_options))
        return await super().handle_DATA(server, session, envelope)


def send(transport: SmtpTransport, *copies: tuple[str, str, list[bytes]]) -> None:
    async def run() -> None:
        try:
            for sender, recipient, parts in copies:
                await transport.send("uid", sender, recipient, parts)
        finally:
            transport.close()

    asyncio.run(run())


def plain(port: int, **kw: Any) -> SmtpTransport:
    return SmtpTransport(f"smtp://127.0.0.1:{port}", None, None, False, 5.0, helo="coc.test",
                         **kw)


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelined"])
def test_mail_parameters_follow_the_content_and_the_addresses(pipelining: bool) -> None:
    """BODY=8BITMIME for 8-bit content (RFC 6152), nothing for ASCII; SMTPUTF8 only when an
    address as written on the line is not ASCII (a display name does not count)."""
    relay = Captured(pipelining=pipelining).start()
    try:
        send(plain(relay.port),
             ("b@example.org", "m@example.net", COPY),
             ("b@example.org", "Jöhn <m@example.net>", [COPY[0], "café\r\n".encode()]))
    finally:
        relay.stop()
    assert relay.mail_options == [[], ["BODY=8BITMIME"]]
    assert [rcpts for _, rcpts, _ in relay.messages] == [["m@example.net"], ["m@example.net"]]


def test_implicit_tls_with_require_tls(tmp_path: Path) -> None:
    """smtps:// with delivery.require_tls: TLS from the start, no STARTTLS asked for (the
    two aiosmtplib options cannot be combined), the relay's certificate verified."""
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    relay = Relay()
    controller = Controller(relay, hostname="localhost", port=relay.port,
                            server_hostname="mx.example.org", ssl_context=context)
    controller.start()
    try:
        send(SmtpTransport(f"smtps://localhost:{relay.port}", None, None, True, 5.0,
                           str(cert), helo="coc.test"),
             ("b@example.org", "m@example.net", COPY))
        assert len(relay.messages) == 1
    finally:
        controller.stop()


class Scripted:
    """A tiny SMTP server on loopback whose reply to MAIL is chosen per connection and
    transaction by ``mail_reply(connection, transaction)``; counts what it accepted."""

    def __init__(self, mail_reply: Callable[[int, int], bytes], pipelining: bool) -> None:
        self.mail_reply = mail_reply
        self.pipelining = pipelining
        self.port = free_port()
        self.connections = 0
        self.delivered = 0

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number, transactions = self.connections, 0
        self.connections += 1
        writer.write(b"220 scripted\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-scripted\r\n" + (b"250-PIPELINING\r\n" if self.pipelining
                                                     else b"") + b"250-AUTH PLAIN\r\n"
                             b"250 8BITMIME\r\n")
            elif verb == b"AUTH":
                writer.write(b"535 5.7.8 Authentication credentials invalid\r\n")
            elif verb == b"MAIL":
                reply = self.mail_reply(number, transactions)
                transactions += 1
                writer.write(reply)
                if reply.startswith(b"421"):
                    await writer.drain()
                    writer.close()
                    return
            elif verb == b"RCPT":
                writer.write(b"250 ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go on\r\n")
                while await reader.readline() not in (b".\r\n", b""):
                    pass
                self.delivered += 1
                writer.write(b"250 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                writer.close()
                return
            else:
                writer.write(b"502 no\r\n")
            await writer.drain()

    def run(self, *copies: tuple[str, str, list[bytes]], login: str | None = None) -> None:
        async def main() -> None:
            server = await asyncio.start_server(self.session, "127.0.0.1", self.port)
            transport = plain(self.port)
            transport.username, transport.password = login, login
            try:
                for sender, recipient, parts in copies:
                    await transport.send("uid", sender, recipient, parts)
            finally:
                transport.close()
                server.close()

        asyncio.run(main())


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelined"])
def test_a_421_on_a_reused_connection_is_retried_on_a_new_one(pipelining: bool) -> None:
    """A relay that timed out an idle session answers the next MAIL with 421 and closes: the
    copy goes out at once on a new connection instead of being deferred."""
    server = Scripted(lambda conn, n: b"421 4.4.2 idle too long\r\n" if (conn, n) == (0, 1)
                      else b"250 ok\r\n", pipelining)
    server.run(*[("b@example.org", "m@example.net", COPY)] * 2)
    assert (server.connections, server.delivered) == (2, 2)


def test_a_reply_longer_than_the_limit_ends_the_session_instead_of_misreading_it() -> None:
    """A multi-line reply past MAX_LINES must not be cut into two replies (the rest would be
    paired with the next command, out of step): the session ends, the copy is deferred."""
    long_reply = b"250-x\r\n" * 250 + b"250 ok\r\n"
    server = Scripted(lambda conn, n: long_reply, pipelining=True)
    with pytest.raises(DeliveryError) as failed:
        server.run(("b@example.org", "m@example.net", COPY))
    assert not failed.value.permanent and "too long" in str(failed.value)
    assert server.delivered == 0


def test_a_refused_login_is_a_temporary_failure() -> None:
    """A 535 to AUTH (a rotated password) is about the relay, not the copy: temporary, so the
    queue waits for the operator instead of being dropped copy by copy."""
    server = Scripted(lambda conn, n: b"250 ok\r\n", pipelining=True)
    with pytest.raises(DeliveryError) as refused:
        server.run(("b@example.org", "m@example.net", COPY), login="coc")
    assert not refused.value.permanent and "535" in str(refused.value)
    assert server.delivered == 0


def test_a_big_copy_goes_out_in_pieces_unaltered() -> None:
    """A copy over a megabyte is written a piece at a time at the relay's pace; what the relay
    reads back (dots unstuffed) is the copy, byte for byte."""
    relay = Captured(pipelining=True).start()
    body = b"".join(b"%s line %d of the evidence\r\n" % (b"." if i % 7 == 0 else b"", i)
                    for i in range(120_000))  # about 3 MiB, every 7th line starts with a dot
    try:
        send(plain(relay.port), ("b@example.org", "m@example.net", [COPY[0], body]))
    finally:
        relay.stop()
    assert len(body) > 3 << 20
    assert [content for _, _, content in relay.messages] == [COPY[0] + body]
