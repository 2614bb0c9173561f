"""Load the TOML configuration into validated settings; every error names its key and line."""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import tomllib
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from coc_mail.errors import ConfigError

DEFAULT_CONFIG = "config/coc-mail.toml"
ENV_CONFIG = "COC_MAIL_CONFIG"
ENV_DATABASE = "COC_MAIL_DATABASE"
ENV_DATABASE_PASSWORD = "COC_MAIL_DATABASE_PASSWORD"  # noqa: S105 - a variable's name

_ADDRESS = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$"
)
RESERVED_HANDLES = frozenset({"reporter", "operator"})  # roles of copies beside member handles
_HANDLE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")


# Copies in flight to the relay, all delivery processes together, when ``delivery.workers``
# is 0: Postfix's default_destination_concurrency_limit. On a LAN relay fewer would do (the
# work is CPU then); to a relay 20-50 ms away each copy's two pipelined round trips are the
# wait, and 4 per process capped a 2-core daemon near 200 copies/s.
RELAY_CONCURRENCY = 20


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_address(value: str) -> str:
    if not _ADDRESS.match(value):
        raise ValueError(f"{value!r} is not a plain address like name@example.org")
    return value


class Committee(_Section):
    """``[committee]``: who we are and the public alias."""

    name: str = Field(min_length=1)
    address: str

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        _check_address(value)
        local = value.split("@", 1)[0]
        if "+" in local:
            raise ValueError(
                "the alias must not contain '+': coc-mail adds +code-name.token to it itself"
            )
        return value.lower()

    @property
    def local_part(self) -> str:
        return self.address.split("@", 1)[0]

    @property
    def domain(self) -> str:
        return self.address.split("@", 1)[1]


Role = Literal["triage", "operator"]


def handle_from_name(name: str) -> str:
    """Default handle: the name's first word, ASCII-folded and lowercased ("Ada X" -> "ada")."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    words = re.findall(r"[a-z0-9]+", folded)
    return words[0] if words else ""


class Member(_Section):
    """One ``[[members]]`` entry. The handle is the member's stable identity."""

    name: str = Field(min_length=1)
    email: str
    handle: str = ""
    roles: list[Role] = Field(default_factory=list)
    conflicts: list[str] = Field(default_factory=list)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return _check_address(value).lower()

    @model_validator(mode="after")
    def _default_handle(self) -> Member:
        if not self.handle:
            object.__setattr__(self, "handle", handle_from_name(self.name))
        if not _HANDLE.match(self.handle):
            raise ValueError(
                f"handle {self.handle!r} must be 1-32 lowercase letters, digits or '-' "
                "(set `handle` explicitly)"
            )
        if self.handle in RESERVED_HANDLES:
            raise ValueError(
                f"handle {self.handle!r} is reserved (copies for the reporter and the operators "
                "are filed under it); set another `handle`"
            )
        return self


class Server(_Section):
    """``[server]``: the SMTP listener."""

    listen: str = "127.0.0.1:8025"
    hostname: str = "localhost"
    max_message_bytes: int = Field(default=26_214_400, gt=1024)
    tls_cert: str | None = None
    tls_key: str | None = None
    max_connections: int = Field(default=200, gt=0)
    max_connections_per_ip: int = Field(default=20, gt=0)
    max_session_seconds: float = Field(default=1800, gt=0)
    unknown_recipients_per_10_minutes: int = Field(default=20, gt=0)
    timeout_seconds: float = Field(default=300.0, gt=0)
    pid_file: str = "var/coc-mail.pid"
    require_tls_for_members: bool = False
    workers: int = Field(default=0, ge=0, le=64)  # worker processes; 0: one per core (2-8)
    max_data_memory_bytes: int = Field(default=268_435_456, gt=0)  # DATA held, all sessions

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} must be host:port, e.g. 127.0.0.1:8025 or [::1]:25")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Server:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class Delivery(_Section):
    """``[delivery]``: where copies go and how hard we try."""

    relay: str = "maildir:var/outbox"
    username: str | None = None
    password_env: str | None = None
    require_tls: bool = False
    tls_ca_file: str | None = None
    max_queue_days: float = Field(default=5.0, gt=0)
    retry_seconds: float = Field(default=60.0, gt=0)
    timeout_seconds: float = Field(default=60.0, gt=0)
    workers: int = Field(default=0, ge=0, le=64)  # copies in flight per delivery process

    @field_validator("relay")
    @classmethod
    def _relay(cls, value: str) -> str:
        if value.startswith("maildir:"):
            if not value[len("maildir:") :]:
                raise ValueError("maildir: needs a path, e.g. maildir:var/outbox")
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(
                f"{value!r} must be maildir:PATH, smtp://host:port or smtps://host:port"
            )
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"{value!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _password(self) -> Delivery:
        if self.password_env and not self.username:
            raise ValueError("password_env is set but username is not")
        return self

    @property
    def is_maildir(self) -> bool:
        return self.relay.startswith("maildir:")

    @property
    def maildir_path(self) -> Path:
        return Path(self.relay[len("maildir:") :])

    def password(self) -> str | None:
        return os.environ.get(self.password_env) if self.password_env else None


class Dkim(_Section):
    """``[dkim]``: signing outbound mail and verifying inbound mail."""

    selector: str = Field(default="coc", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    private_key: str = "var/dkim.key"
    verify_inbound: bool = True
    require_aligned_members: bool = False
    dns_timeout: float = Field(default=5.0, gt=0)
    dns_overrides: dict[str, str] = Field(default_factory=dict)


class Storage(_Section):
    """``[storage]``: the database and the at-rest encryption key."""

    database: str = "sqlite:///var/coc-mail.db"
    key_file: str = "var/secret.key"
    connect_timeout_seconds: float = Field(default=60.0, ge=0)  # serve waits for the database

    @field_validator("database")
    @classmethod
    def _database(cls, value: str) -> str:
        scheme = value.split(":", 1)[0]
        if not (scheme == "sqlite" or scheme.startswith("postgresql")):
            raise ValueError(f"{value!r}: use sqlite:///PATH or postgresql+psycopg://user@host/db")
        return value


class Intake(_Section):
    """``[intake]``: who receives new reports."""

    forward: Literal["all", "triage"] = "all"
    conflict_check_hours: float = Field(default=48, gt=0)
    conflict_check_reminder: bool = True
    acknowledgments_per_day: int = Field(default=3, ge=0)
    strip_client_headers: bool = True
    reports_per_hour_before_digest: int = Field(default=10, ge=0)
    trusted_relays: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    # "copy": the report's text in the members' mail; "notice": code name and a web link only
    deliver: Literal["copy", "notice"] = "copy"

    @field_validator("trusted_relays")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/24)"
                ) from None
        return value

    def is_trusted(self, ip: str) -> bool:
        """Is ``ip`` one of the MTAs in front of coc-mail (``trusted_relays``)?"""
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in _networks(tuple(self.trusted_relays)))


@functools.lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(e, strict=False) for e in entries]


class Cases(_Section):
    """``[cases]``: retention and reminders."""

    purge_after_days: float = Field(default=0, ge=0)
    stale_days: float = Field(default=14, ge=0)
    remind_unchecked_hours: float = Field(default=24, ge=0)
    remind_followup_days: float = Field(default=7, ge=0)
    check_interval_seconds: float = Field(default=60, gt=0)


class Processing(_Section):
    """``[processing]``: the budget of one message; over it, the message is set aside."""

    max_parts: int = Field(default=1000, gt=0)
    max_depth: int = Field(default=30, gt=0, le=60)
    max_part_header_bytes: int = Field(default=65536, gt=0)
    max_header_fields: int = Field(default=1000, gt=0)
    max_parameters: int = Field(default=100, gt=0)
    max_dkim_signed_headers: int = Field(default=100, gt=0)
    max_cpu_seconds: float = Field(default=10.0, gt=0)


class Web(_Section):
    """``[web]``: the members' web view (unset ``listen``: none)."""

    listen: str | None = None  # host:port, e.g. 127.0.0.1:8080 behind a TLS reverse proxy
    base_url: str | None = None  # what links in mail start with; http://<listen> when unset
    session_hours: float = Field(default=12, gt=0, le=24 * 30)
    link_minutes: float = Field(default=15, gt=0, le=24 * 60)  # a sign-in link's life
    require_passkey: bool = False  # every member must confirm sign-in with a passkey
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        return None if value is None else Server._listen(value)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise ValueError(f"{value!r} must be http(s)://host[:port][/path]")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _passkeys(self) -> Web:
        host = urlsplit(self.url).hostname or ""
        if self.require_passkey and (host.replace(".", "").isdigit() or ":" in host):
            raise ValueError("require_passkey: passkeys need web.base_url with a domain name "
                             "(browsers refuse them on an IP address), e.g. "
                             "https://conduct.example.org or http://localhost:8080")
        return self

    @property
    def enabled(self) -> bool:
        return self.listen is not None

    @property
    def url(self) -> str:
        """Where members' links point."""
        if self.base_url:
            return self.base_url
        host, _, port = (self.listen or "127.0.0.1:8080").rpartition(":")
        return f"http://{host}:{port}"

    @property
    def secure(self) -> bool:
        return self.url.startswith("https://")


class Templates(_Section):
    """``[templates]``: a directory whose files override the packaged templates."""

    directory: str | None = None


class Settings(_Section):
    """The whole validated configuration."""

    committee: Committee
    members: Annotated[list[Member], Field(min_length=1)]
    server: Server = Server()
    delivery: Delivery = Delivery()
    dkim: Dkim = Dkim()
    storage: Storage = Storage()
    intake: Intake = Intake()
    cases: Cases = Cases()
    processing: Processing = Processing()
    templates: Templates = Templates()
    web: Web = Web()
    source: str = ""

    @model_validator(mode="after")
    def _members(self) -> Settings:
        seen_email: dict[str, str] = {}
        seen_handle: dict[str, str] = {}
        for m in self.members:
            if m.email in seen_email:
                raise ValueError(f"members {seen_email[m.email]!r} and {m.name!r} share {m.email}")
            if m.handle in seen_handle:
                raise ValueError(
                    f"members {seen_handle[m.handle]!r} and {m.name!r} share the handle "
                    f"{m.handle!r}: give one of them an explicit `handle`"
                )
            if m.email == self.committee.address:
                raise ValueError(f"member {m.name!r} has the committee's own address")
            seen_email[m.email] = m.name
            seen_handle[m.handle] = m.name
        if self.intake.deliver == "notice" and not self.web.enabled:
            raise ValueError('intake.deliver = "notice" sends members a link to the web view: '
                             "set web.listen (and web.base_url) too")
        if self.intake.deliver == "notice" and not self.operators:
            raise ValueError('intake.deliver = "notice" needs an operator (roles = '
                             '["operator"]): without one, mail to postmaster@ and abuse@ '
                             "(where a report may be sent) would go whole to every member")
        if self.intake.forward == "triage" and not any("triage" in m.roles for m in self.members):
            raise ValueError('intake.forward = "triage" but no member has roles = ["triage"]')
        return self

    def worker_count(self) -> int:
        """``server.workers``, or with 0 (the default) one processor and one delivery worker
        per CPU core (at most 8)."""
        if self.server.workers:
            return self.server.workers
        return 1 + max(1, min(8, os.cpu_count() or 1))

    def copies_in_flight(self) -> int:
        """``delivery.workers``, or with 0 (the default) :data:`RELAY_CONCURRENCY` relay
        connections in all, shared among the delivery processes, at least 4 each."""
        if self.delivery.workers:
            return self.delivery.workers
        delivering = max(1, self.worker_count() - 1)
        return max(4, -(-RELAY_CONCURRENCY // delivering))

    def member_by_handle(self, handle: str) -> Member | None:
        return next((m for m in self.members if m.handle == handle), None)

    def member_by_email(self, email: str) -> Member | None:
        email = email.lower()
        return next((m for m in self.members if m.email == email), None)

    @property
    def operators(self) -> list[Member]:
        return [m for m in self.members if "operator" in m.roles]

    @property
    def database_url(self) -> str:
        """``$COC_MAIL_DATABASE`` or ``storage.database``, with ``$COC_MAIL_DATABASE_PASSWORD``
        (any characters: ``@``, ``/``, ``:``, ``%`` ...) set as its password, quoted as URLs
        need it."""
        url = os.environ.get(ENV_DATABASE) or self.storage.database
        password = os.environ.get(ENV_DATABASE_PASSWORD)
        if not password or url.startswith("sqlite"):
            return url
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError):  # no scheme; a port that is not a number
            raise ConfigError(self.source, [
                f"storage.database (or ${ENV_DATABASE}) is not a URL like "
                "postgresql+psycopg://user@host/db"]) from None
        return parsed.set(password=password).render_as_string(hide_password=False)


def _key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Map each key path in a TOML text to its 1-based line (tables, arrays of tables, keys)."""
    where: dict[tuple[str | int, ...], int] = {}
    counters: dict[tuple[str, ...], int] = {}
    table: tuple[str | int, ...] = ()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[["):
            name = tuple(p.strip().strip('"') for p in line.strip("[]").split("."))
            index = counters.get(name, -1) + 1
            counters[name] = index
            table = (*name, index)
            where.setdefault(table, number)
        elif line.startswith("["):
            table = tuple(p.strip().strip('"') for p in line.strip("[]").split("."))
            where.setdefault(table, number)
        elif "=" in line:
            key = line.split("=", 1)[0].strip()
            path = tuple(p.strip().strip('"') for p in key.split("."))
            where.setdefault((*table, *path), number)
    return where


def _locate(loc: Sequence[str | int], lines: dict[tuple[str | int, ...], int]) -> str:
    keys = [str(p) if isinstance(p, str) else f"[{p}]" for p in loc]
    dotted = ".".join(keys).replace(".[", "[") or "(top level)"
    path = tuple(loc)
    while path:
        if path in lines:
            return f"{dotted} (line {lines[path]})"
        path = path[:-1]
    return dotted


def parse(text: str, source: str = "<string>") -> Settings:
    """Validate a TOML text; raise :class:`ConfigError` naming every bad key and its line."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"TOML syntax: {exc}"]) from None
    lines = _key_lines(text)
    try:
        return Settings.model_validate({**data, "source": source})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = _locate(err["loc"], lines)
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key (a typo?); see README for the keys of each section"
            elif err["type"] == "missing":
                message = "required key is missing"
            problems.append(f"{where}: {message}")
        raise ConfigError(source, problems) from None


def load(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read and validate the configuration file (``--config``, ``$COC_MAIL_CONFIG`` or default)."""
    chosen = Path(path or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG)
    try:
        text = chosen.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            str(chosen), ["file not found: pass --config PATH or set COC_MAIL_CONFIG"]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(chosen), [f"cannot read: {exc}"]) from None
    return parse(text, str(chosen))
