"""The intake reads DATA as aiosmtpd does: the same content kept, the same replies, and not a
byte past the end marker (commands pipelined after it are answered), however the lines,
dots, bare CRs and LFs, long lines and TCP segments fall. Both servers run on loopback and
get the same bytes over real sockets."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from coc_mail.smtp.handler import BoundedSMTP
from coc_mail.smtp.limits import Limits
from tests.helpers import free_port

LIMIT = 300_000  # data_size_limit of both


class Keeper:
    """Keeps what each transaction's DATA delivered."""

    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.contents.append(bytes(envelope.content))
        return "250 OK"


class Stock(SMTP):
    line_length_limit = BoundedSMTP.line_length_limit  # the intake's: 64 KiB lines


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, tuple[int, Keeper]]]:
    loop = asyncio.new_event_loop()
    found: dict[str, tuple[int, Keeper]] = {}

    async def start() -> None:
        for name in ("stock", "ours"):
            keeper, port = Keeper(), free_port()
            if name == "stock":
                def factory(k: Keeper = keeper) -> SMTP:
                    return Stock(k, decode_data=False, data_size_limit=LIMIT)
            else:
                def factory(k: Keeper = keeper) -> SMTP:
                    return BoundedSMTP(k, max_connections=100, limits=Limits(100, 100),
                                       max_session_seconds=60, max_data_memory=1 << 30,
                                       decode_data=False, data_size_limit=LIMIT)
            await loop.create_server(factory, "127.0.0.1", port)
            found[name] = (port, keeper)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    yield found
    loop.call_soon_threadsafe(loop.stop)


def converse(port: int, pieces: list[bytes]) -> bytes:
    """Send the pieces (a short pause between them: separate segments) and read every reply
    until the server closes after QUIT."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.002)
        replies = b""
        while chunk := sock.recv(65536):
            replies += chunk
    return replies


LINE = st.lists(st.sampled_from([b"a", b"b ", b".", b"..", b"\r", b"\n", b"\r\n", b"x" * 70,
                                 b"\n.\r\n", b".\r", b"\r\r\n"]),
                max_size=12).map(b"".join)
BIG_LINE = st.sampled_from([b"y" * 70_000, b"." + b"z" * 65_540 + b"\r\n", b"w" * 65_534])


@example(lines=[b"a\n.", b".b", b"..", b"c\r"], repeat=1, cuts=[])  # a bare LF before "."
@example(lines=[b".\r\r", b".", b"\r"], repeat=1, cuts=[62, 63, 64, 65])
@example(lines=[b"x" * 70] * 20, repeat=3000, cuts=[70_000, 70_001])  # past the buffer
@example(lines=[b"v" * 40_000 + b"\r" + b"u" * 40_000], repeat=1, cuts=[])  # a line too long
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.one_of(LINE, LINE, LINE, BIG_LINE), max_size=30),
       repeat=st.sampled_from([1, 1, 1, 40, 3000]), cuts=st.lists(st.integers(0, 1 << 20),
                                                                  max_size=4))
def test_data_is_read_as_aiosmtpd_reads_it(servers: dict[str, tuple[int, Keeper]],
                                           lines: list[bytes], repeat: int,
                                           cuts: list[int]) -> None:
    body = (b"\r\n".join(lines) * repeat)[:400_000]  # some past data_size_limit (552)
    # an end marker inside would leave the rest to be read as commands: not this test's
    assume(b"\r\n.\r\n" not in body and not body.startswith(b".\r\n"))
    stream = (b"EHLO test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
              + body + b"\r\n.\r\nNOOP\r\nQUIT\r\n")
    at = sorted({c % len(stream) for c in cuts} | {0, len(stream)})
    pieces = [stream[a:b] for a, b in itertools.pairwise(at)]
    seen = {}
    for name, (port, keeper) in servers.items():
        before = len(keeper.contents)
        seen[name] = (converse(port, pieces), keeper.contents[before:])
    assert seen["ours"] == seen["stock"]


# Streams a review found or checked by hand: CRs about the reader's 64 KiB limit, a CRLF
# split where a stretch breaks off, the size limit met before a line too long.
EDGES = {
    "cr at 65535": b"a" * 65535 + b"\r" + b"b" * 10,
    "cr at 65536": b"a" * 65536 + b"\r" + b"b" * 10,
    "crlf past the limit": b"a" * 65537 + b"\r\n.x",
    "crlf at 65534": b"a" * 65534 + b"\r\nz",
    "crlf at 65536": b"a" * 65536 + b"\r\nz",
    "cr cr lf at the boundary": b"a" * 65535 + b"\r\r\n.q\r\n" + b"y" * 70,
    "a long first line with a dot": b"." + b"z" * 70000 + b"\r\n..\r\nend",
    "bare lf dot, then a big body": b"a\n.\r\n" + b"\r\n".join([b"y" * 70] * 1000),
    "cr dot cr, then a big body": b"q\r.\r" + b"\r\n".join([b"y" * 70] * 1000),
    "cr cr lf carried, then a dot": b"A\r\r\n.foo\r\n" + b"\r\n".join([b"y" * 70] * 1000),
    "size limit before a long line": b"\r\n".join([b"x" * 70] * 3500) + b"\r\n" + b"z" * 65535,
    "a bare lf dot every 60 KiB": (b"x" * 60_000 + b"\n.\r\n") * 8,
}


@pytest.mark.parametrize("body", list(EDGES.values()), ids=list(EDGES))
def test_edges_are_read_as_aiosmtpd_reads_them(servers: dict[str, tuple[int, Keeper]],
                                               body: bytes) -> None:
    stream = (b"EHLO test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
              + body + b"\r\n.\r\nNOOP\r\nQUIT\r\n")
    seen = {}
    for name, (port, keeper) in servers.items():
        before = len(keeper.contents)
        seen[name] = (converse(port, [stream]), keeper.contents[before:])
    assert seen["ours"] == seen["stock"]


def test_a_bare_lf_before_each_dot_does_not_escape_the_size_limit(
        servers: dict[str, tuple[int, Keeper]]) -> None:
    """A line ``x LF . CR LF`` every 60 KiB keeps the search for the end marker going past
    the size limit: the answer is still 552, and nothing is kept."""
    port, keeper = servers["ours"]
    body = (b"x" * 60_000 + b"\n.\r\n") * 10  # 600 KB, twice the limit
    before = len(keeper.contents)
    replies = converse(port, [b"EHLO t\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>"
                              b"\r\nDATA\r\n" + body + b"\r\n.\r\nQUIT\r\n"])
    assert b"552 Error: Too much mail data" in replies
    assert keeper.contents[before:] == []
