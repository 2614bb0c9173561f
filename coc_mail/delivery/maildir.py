"""The local next hop: a Maildir written as Postfix's local(8) does, and what any transport is."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from coc_mail.errors import DeliveryError
from coc_mail.store.crypto import BIG  # big content is written a piece of this size at a time


class Transport(Protocol):
    """Hands one copy (the message as consecutive parts) to its next hop; raises
    :class:`DeliveryError`."""

    async def send(
        self, uid: str, envelope_from: str, recipient: str, parts: Sequence[bytes]
    ) -> None:
        """Deliver or raise."""

    def close(self) -> None:
        """Let go of open connections (shutdown)."""


class MaildirTransport:
    """Delivers into one Maildir (an outbox), each file with ``Delivered-To``, like Postfix's
    local(8). The file name carries the copy's uid, so a retried copy is never written twice."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.host = socket.gethostname().replace("/", "_").replace(":", "_")

    def prepare(self) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        """Nothing is held open."""

    async def send(
        self, uid: str, envelope_from: str, recipient: str, parts: Sequence[bytes]
    ) -> None:
        await asyncio.to_thread(self._write, uid, envelope_from, recipient, parts)

    def _exists(self, uid: str) -> bool:
        marker = f".C{uid}."
        return any(marker in name for sub in ("new", "cur") for name in os.listdir(self.path / sub))

    def _write(
        self, uid: str, envelope_from: str, recipient: str, parts: Sequence[bytes]
    ) -> None:
        try:
            self.prepare()
            if self._exists(uid):
                return
            name = f"{int(time.time())}.C{uid}.{self.host}"
            tmp = self.path / "tmp" / name
            first = f"Return-Path: <{envelope_from}>\nDelivered-To: {recipient}\n".encode()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb", closefd=False) as out:
                    out.write(first)
                    for part in parts:  # CRLF to the local LF, a megabyte at a time
                        for piece in _pieces(part):
                            out.write(piece.replace(b"\r\n", b"\n"))
                os.fsync(fd)
            finally:
                os.close(fd)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, self.path / "new" / name)
            os.unlink(tmp)
            dfd = os.open(self.path / "new", os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            raise DeliveryError(f"maildir: {exc.strerror}", permanent=False) from None


def _pieces(data: bytes, size: int = BIG) -> Iterator[bytes]:
    """``data`` in pieces of about ``size`` bytes, never splitting a CRLF."""
    start = 0
    while start < len(data):
        end = min(start + size, len(data))
        if data[end - 1:end] == b"\r":
            end += 1
        yield data[start:end]
        start = end
