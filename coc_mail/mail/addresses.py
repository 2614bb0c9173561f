"""The address scheme in one place: build and parse every address the daemon answers to.

    conduct@D                        the public alias: new reports (and replies to our mail)
    conduct+without.<handle>@D       a new report that excludes the member <handle>
    conduct+<code-name>.<token>@D    one member's address for one case
    conduct+r.<token>@D              the reporter's address for one case
    conduct+m.<token>@D              one member's address for commands about no single case
    conduct+b.<uid>.<mac>@D          envelope sender of the copy <uid>; DSNs come back here
    conduct-bounces+<uid>.<mac>@D    the same, as earlier releases wrote it (still parsed)
    postmaster@D, abuse@D            RFC 5321/2142 role addresses, forwarded to the operators

Tokens are HMACs under the storage key (80 bits, base32), so they cannot be guessed and a
token never reveals which case it belongs to.

The envelope sender is a tag on the alias itself (``conduct+b.…``), not on a separate
``conduct-bounces`` local part: filters that strip ``+tags`` before comparing the envelope
sender with ``From:`` (some providers' sender checks, DMARC reports read by people) then see
``conduct@D`` twice and find them aligned.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from enum import Enum

from coc_mail.store.crypto import Keyring

TOKEN = r"[a-z2-7]{16}"  # noqa: S105 - a pattern, not a secret
CODE = r"[a-z]+-[a-z]+"

_DETAIL = re.compile(
    rf"^(?:without\.(?P<without>[a-z0-9-]{{1,32}})"
    rf"|r\.(?P<reporter>{TOKEN})"
    rf"|m\.(?P<member>{TOKEN})"
    rf"|b\.(?P<uid>[0-9a-f]{{16}})\.(?P<mac>{TOKEN})"
    rf"|(?P<code>{CODE})\.(?P<case_token>{TOKEN}))$"
)
_BOUNCE = re.compile(rf"^(?P<uid>[0-9a-f]{{16}})\.(?P<mac>{TOKEN})$")


class Kind(Enum):
    """What an address of ours is for."""

    ALIAS = "alias"
    WITHOUT = "without"
    CASE = "case"
    REPORTER = "reporter"
    MEMBER = "member"
    BOUNCE = "bounce"
    POSTMASTER = "postmaster"


@dataclass(frozen=True)
class Recipient:
    """A parsed address of ours. ``value`` is the handle, code name, token or copy uid."""

    kind: Kind
    value: str = ""
    token: str = ""


class Addresses:
    """Builds and parses the committee's addresses; one instance per (alias, keyring)."""

    def __init__(self, alias: str, keys: Keyring) -> None:
        self.local, self.domain = alias.lower().split("@", 1)
        self.alias = alias.lower()
        self.keys = keys

    # -- building ---------------------------------------------------------------------------
    def _at(self, local: str) -> str:
        return f"{local}@{self.domain}"

    def without(self, handle: str) -> str:
        return self._at(f"{self.local}+without.{handle}")

    def case_token(self, code_name: str, handle: str) -> str:
        return self.keys.token("case", code_name, handle)

    def case(self, code_name: str, handle: str) -> str:
        """The address member ``handle`` uses for case ``code_name`` ("home shelf")."""
        slug = code_name.replace(" ", "-")
        return self._at(f"{self.local}+{slug}.{self.case_token(code_name, handle)}")

    def reporter_token(self, code_name: str) -> str:
        return self.keys.token("reporter", code_name)

    def reporter(self, code_name: str) -> str:
        return self._at(f"{self.local}+r.{self.reporter_token(code_name)}")

    def member_token(self, handle: str) -> str:
        return self.keys.token("member", handle)

    def member(self, handle: str) -> str:
        return self._at(f"{self.local}+m.{self.member_token(handle)}")

    def bounce(self, uid: str) -> str:
        return self._at(f"{self.local}+b.{uid}.{self.keys.token('bounce', uid)}")

    @staticmethod
    def new_copy_uid() -> str:
        return secrets.token_hex(8)

    # -- parsing ----------------------------------------------------------------------------
    def parse(self, address: str) -> Recipient | None:
        """Classify an address; ``None`` when it is not one of ours (or a bad token)."""
        local, at, domain = address.strip().strip("<>").lower().rpartition("@")
        if not at and domain == "postmaster":  # RFC 5321 4.5.1: <Postmaster> alone
            return Recipient(Kind.POSTMASTER)
        if not at or domain != self.domain:
            return None
        if local in ("postmaster", "abuse"):
            return Recipient(Kind.POSTMASTER)
        if local == self.local:
            return Recipient(Kind.ALIAS)
        base, plus, detail = local.partition("+")
        if not plus:
            return None
        if base == f"{self.local}-bounces":  # as earlier releases wrote it: their DSNs still arrive
            m = _BOUNCE.match(detail)
            return self._bounce(m["uid"], m["mac"]) if m else None
        if base != self.local:
            return None
        m = _DETAIL.match(detail)
        if not m:
            return None
        if m["uid"]:
            return self._bounce(m["uid"], m["mac"])
        if m["without"]:
            return Recipient(Kind.WITHOUT, m["without"])
        if m["reporter"]:
            return Recipient(Kind.REPORTER, token=m["reporter"])
        if m["member"]:
            return Recipient(Kind.MEMBER, token=m["member"])
        return Recipient(Kind.CASE, m["code"].replace("-", " "), m["case_token"])

    def _bounce(self, uid: str, mac: str) -> Recipient | None:
        return Recipient(Kind.BOUNCE, uid) if self.keys.check_token(mac, "bounce", uid) else None

    def is_ours(self, domain: str) -> bool:
        return domain.lower() == self.domain
