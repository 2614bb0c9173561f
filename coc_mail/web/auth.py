"""Signing in: one-time links, sessions and CSRF tokens, kept as hashes; rate limits.

A link is 256 random bits mailed to the member's configured address; the database keeps its
SHA-256 only, with the member's keyed tag, a deadline (``web.link_minutes``) and when it was
used: one conditional UPDATE uses it, so two tabs racing with one link get one session. A
session cookie is another 256 random bits, kept the same way. A CSRF token is a keyed tag of
the session's cookie (or, before sign-in, of a pre-session cookie): nothing to store, and a
page of another site can neither read nor forge it.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections import deque

from sqlmodel import Session, col, delete, select, update

from coc_mail.app import App
from coc_mail.config import Member
from coc_mail.store import WebLink, WebSession, utcnow
from coc_mail.store.crypto import Keyring


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def member_key(app: App, member: Member) -> str:
    """The keyed tag links, sessions and passkeys are kept under: of the member's handle and
    address together, so a member who leaves and a newcomer given the same handle later
    never share a session, a link or a passkey."""
    return _key(app.keys, member.handle, member.email)


@functools.lru_cache(maxsize=4096)
def _key(keys: Keyring, handle: str, email: str) -> str:
    return keys.tag("web-member", handle, email)


def _member(app: App, tag: str) -> Member | None:
    """The configured member whose key this is (None once they left the file)."""
    return next((m for m in app.settings.members if member_key(app, m) == tag), None)


def new_link(app: App, session: Session, member: Member) -> str:
    token = secrets.token_urlsafe(32)
    minutes = app.settings.web.link_minutes
    session.add(WebLink(token_hash=_hash(token), member_tag=member_key(app, member),
                        expires_at=utcnow() + dt.timedelta(minutes=minutes)))
    return token


def link_member(app: App, session: Session, token: str) -> Member | None:
    """The member a link is for, when it is unused and in time (it is not used here)."""
    row = session.exec(select(WebLink).where(
        WebLink.token_hash == _hash(token), col(WebLink.used_at).is_(None),
        col(WebLink.expires_at) > utcnow())).first()
    return _member(app, row.member_tag) if row else None


def use_link(app: App, session: Session, token: str) -> Member | None:
    """Use a link once: the member it signs in, or None (unknown, used, expired, or the
    member left the configuration)."""
    member = link_member(app, session, token)
    if member is None:
        return None
    used = session.exec(update(WebLink).where(
        col(WebLink.token_hash) == _hash(token), col(WebLink.used_at).is_(None),
        col(WebLink.expires_at) > utcnow()).values(used_at=utcnow()))
    return member if used.rowcount == 1 else None


def new_session(app: App, session: Session, member: Member, *, verified: bool = True) -> str:
    """A session for ``member``; ``verified=False`` while their passkey has not answered."""
    token = secrets.token_urlsafe(32)
    hours = app.settings.web.session_hours
    session.add(WebSession(token_hash=_hash(token), member_tag=member_key(app, member),
                           expires_at=utcnow() + dt.timedelta(hours=hours), verified=verified))
    return token


def session_of(app: App, session: Session, token: str) -> tuple[WebSession, Member] | None:
    """A session cookie's row and member, while it lasts and the member is configured."""
    if not token:
        return None
    row = session.exec(select(WebSession).where(
        WebSession.token_hash == _hash(token), col(WebSession.expires_at) > utcnow())).first()
    member = _member(app, row.member_tag) if row else None
    return (row, member) if row is not None and member is not None else None


def session_member(app: App, session: Session, token: str) -> Member | None:
    """The member a fully signed-in session belongs to (second factor done, if any): asked
    on every request, so two columns of one row are read, not a whole ORM object."""
    if not token:
        return None
    row = session.exec(select(WebSession.member_tag, WebSession.verified).where(
        WebSession.token_hash == _hash(token), col(WebSession.expires_at) > utcnow())).first()
    if row is None or not row[1]:
        return None
    return _member(app, row[0])


def end_session(session: Session, token: str) -> None:
    session.exec(delete(WebSession).where(
        col(WebSession.token_hash) == _hash(token)))


def sweep(session: Session) -> None:
    """Forget expired links and sessions."""
    now = utcnow()
    session.exec(delete(WebLink).where(col(WebLink.expires_at) < now))
    session.exec(delete(WebSession).where(
        col(WebSession.expires_at) < now))


def forget_departed(app: App, session: Session) -> int:
    """Delete the sessions and links of members no longer in the configuration (at reload):
    the same member added back later starts signed out."""
    keys = [member_key(app, m) for m in app.settings.members]
    count = 0
    for table in (WebSession, WebLink):
        result = session.exec(delete(table).where(col(table.member_tag).not_in(keys)))
        count += result.rowcount or 0
    return count


def csrf_token(app: App, cookie: str) -> str:
    return app.keys.tag("csrf", cookie)


def csrf_ok(app: App, cookie: str, sent: str) -> bool:
    return bool(cookie) and hmac.compare_digest(csrf_token(app, cookie), sent or "")


class RateLimit:
    """At most ``count`` events per ``seconds`` for each key (in this process).

    At most ``keys`` keys are tracked: when full, keys whose events have all aged out are
    forgotten; if none has, a new key is refused (a spray of addresses cannot flush the
    limits of the ones it wants to use)."""

    def __init__(self, count: int, seconds: float, keys: int = 10_000) -> None:
        self.count, self.seconds, self.keys = count, seconds, keys
        self.events: dict[str, deque[float]] = {}
        self.lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self.lock:
            seen = self.events.get(key)
            if seen is None:
                if len(self.events) >= self.keys:
                    cutoff = now - self.seconds
                    for old in [k for k, v in self.events.items() if not v or v[-1] <= cutoff]:
                        del self.events[old]
                    if len(self.events) >= self.keys:
                        return False
                seen = self.events[key] = deque()
            while seen and seen[0] <= now - self.seconds:
                seen.popleft()
            if len(seen) >= self.count:
                return False
            seen.append(now)
            return True


def client_key(host: str) -> str:
    """What the per-client limit counts: an IPv4 address, or an IPv6 address's /64 (one
    subscriber's whole network)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
