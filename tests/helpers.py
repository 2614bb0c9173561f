"""Test helpers: a real coc-mail daemon in a subprocess, a capturing relay, Maildir readers."""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import os
import random
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP, default
from pathlib import Path
from typing import Any, Self

from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

ALIAS = "conduct@example.org"
DOMAIN = "example.org"

MEMBERS: list[dict[str, Any]] = [
    {"name": "Ada Example", "email": "ada@example.net", "handle": "ada",
     "roles": ["triage", "operator"], "conflicts": ["pat@example.com", "Jordan Roe"]},
    {"name": "Grace Sample", "email": "grace@example.net", "roles": ["triage"]},
    {"name": "Linus Placeholder", "email": "linus@example.net"},
]


def _ephemeral_ports() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port() -> int:
    """A port nothing listens on, for a server a test starts later: taken at random below the
    kernel's ephemeral range (a port the kernel handed out for port 0 is one it also gives
    to outgoing connections, the test's own among them, which took it in between: "Address
    already in use" now and then in CI)."""
    ephemeral = _ephemeral_ports()
    for _ in range(200):
        port = random.randint(20000, 32767)
        if port in ephemeral:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # the range is full: the kernel's choice, as before
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_value(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def write_config(path: Path, sections: dict[str, Any], members: list[dict[str, Any]]) -> None:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        lines.append("")
    for m in members:
        lines.append("[[members]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in m.items()]
        lines.append("")
    path.write_text("\n".join(lines))


def make_report(
    sender: str = "Reporter Person <reporter@example.com>",
    subject: str = "Something happened",
    body: str = "Report body.\n",
    to: str = ALIAS,
    *,
    cte: str | None = None,
    html: str | None = None,
    **headers: str,
) -> EmailMessage:
    """A message as a simple client writes it; ``cte`` forces the body's transfer encoding
    (base64, quoted-printable), ``html`` adds an HTML alternative."""
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    m["Message-ID"] = email.utils.make_msgid(domain="example.com")
    for k, v in headers.items():
        m[k.replace("_", "-")] = v
    m.set_content(body, cte=cte) if cte else m.set_content(body)
    if html is not None:
        m.add_alternative(html, subtype="html", cte=cte) if cte else m.add_alternative(
            html, subtype="html")
    return m


def reads(raw: bytes, needle: str) -> bool:
    """Would a reader of ``raw`` see ``needle``: in any part, decoded (transfer encodings,
    charsets), in HTML as shown, as source or in attribute values, with entities and URL
    escapes undone, in nested messages? (coc_mail.mail.readable.views, the daemon's own reader.)"""
    from coc_mail.mail.readable import searchable, views

    folded = searchable(needle)
    return any(folded in searchable(view) for view in views(raw))


def wire(msg: EmailMessage) -> bytes:
    """A message as smtplib puts it on the wire (CRLF)."""
    return msg.as_bytes(policy=SMTP)


@dataclass
class Daemon:
    """A coc-mail daemon run as a user would: ``python -m coc_mail --config ... serve``."""

    root: Path
    database: str
    relay: str = ""
    members: list[dict[str, Any]] = field(default_factory=lambda: [dict(m) for m in MEMBERS])
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    pass_fds: tuple[int, ...] = ()  # descriptors the daemon inherits, as from a supervisor
    environ: dict[str, str] = field(default_factory=dict)  # COC_MAIL_* secrets for the daemon

    def __post_init__(self) -> None:
        self.var = self.root / "var"
        self.outbox = self.root / "outbox"
        self.log = self.root / "daemon.log"
        self.config = self.root / "coc-mail.toml"
        self.write()

    def write(self) -> None:
        sections: dict[str, dict[str, Any]] = {
            "committee": {"name": "Test Conference CoC Committee", "address": ALIAS},
            # Two workers (a processor and a delivery worker) start faster than one per core;
            # the benchmark smoke test and test_workers.py run the default.
            "server": {"listen": f"127.0.0.1:{self.port}", "hostname": "mx.example.org",
                       "max_message_bytes": 200_000, "pid_file": "var/coc-mail.pid",
                       "workers": 2},
            "delivery": {"relay": self.relay or f"maildir:{self.outbox}", "retry_seconds": 0.5},
            "dkim": {"private_key": "var/dkim.key", "dns_timeout": 1.0},
            "storage": {"database": self.database, "key_file": "var/secret.key"},
        }
        for name, values in self.extra.items():
            sections.setdefault(name, {}).update(values)
        write_config(self.config, sections, self.members)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "coc_mail", "--config", str(self.config), *args],
            cwd=self.root, capture_output=True, text=True, timeout=60, env=self.env(),
        )
        if check and result.returncode != 0:
            raise AssertionError(f"coc-mail {' '.join(args)} failed:\n{result.stderr}")
        return result

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COC_MAIL_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.environ)
        return env

    def start(self) -> Daemon:
        mark = self.log.read_text().count("coc-mail ready") if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "coc_mail", "--config", str(self.config), "serve"],
                cwd=self.root, stdout=log, stderr=log, env=self.env(), pass_fds=self.pass_fds,
            )
        self.starts += 1

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            return self.log_text().count("coc-mail ready") > mark

        wait_for(ready, 30, "daemon start")
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def smtp(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, timeout=30)

    def send(self, msg: EmailMessage | bytes, *, sender: str = "reporter@example.com",
             to: list[str] | None = None) -> None:
        with self.smtp() as s:
            if isinstance(msg, bytes):
                s.sendmail(sender, to or [ALIAS], msg)
            else:
                s.send_message(msg, from_addr=sender, to_addrs=to or [ALIAS])

    # -- outbox -----------------------------------------------------------------------------
    def delivered(self) -> list[Copy]:
        """Every copy in the Maildir, oldest first; each file is read and parsed once (a
        delivered file never changes: Maildir delivery renames it into new/ complete)."""
        new = self.outbox / "new"
        if not new.exists():
            return []
        files = sorted(new.iterdir(), key=lambda p: (p.stat().st_mtime_ns, p.name))
        cache = self.__dict__.setdefault("_copies", {})
        for p in files:
            if p.name not in cache:
                cache[p.name] = Copy(p.read_bytes())
        return [cache[p.name] for p in files]

    def wait_delivered(self, count: int, timeout: float = 20.0) -> list[Copy]:
        def enough() -> list[Copy] | None:
            got = self.delivered()
            return got if len(got) >= count else None

        wait_for(enough, timeout, f"{count} delivered messages")
        time.sleep(0.3)  # anything extra would show up now
        got = self.delivered()
        assert len(got) == count, f"expected {count} messages, got {len(got)}"
        return got


class Copy:
    """One delivered file: its raw bytes and the parsed message."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.msg: EmailMessage = email.message_from_bytes(raw, policy=default)

    def __getitem__(self, name: str) -> Any:
        return self.msg[name]

    @property
    def to(self) -> str:
        return str(self.msg["Delivered-To"]).strip()

    @property
    def text(self) -> str:
        part = self.msg.get_body(preferencelist=("plain",))
        return str(part.get_content()) if part is not None else ""

    def original(self) -> bytes:
        """The attached original, byte for byte as carried (LF line endings, as in Maildir)."""
        boundary = self.msg.get_boundary()
        assert boundary, "not multipart"
        parts = self.raw.split(b"--" + boundary.encode())
        for part in parts:
            head, _, body = part.lstrip(b"\n").partition(b"\n\n")
            if b"message/rfc822" in head:
                return body
        raise AssertionError("no message/rfc822 part")

    def wire(self) -> bytes:
        """The message as it went over the wire (CRLF), minus the delivery headers."""
        lines = self.raw.split(b"\n")
        while lines and lines[0].split(b":")[0] in (b"Return-Path", b"Delivered-To"):
            lines.pop(0)
        return b"\r\n".join(lines)


class Forwarder:
    """A TCP forwarder on a port of its own to ``target`` (e.g. PostgreSQL): a database that
    is not there until :meth:`start`, and gone again at :meth:`stop` (its connections cut)."""

    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self.listener: socket.socket | None = None
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()

    def start(self) -> Forwarder:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self.listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would leave the
            # socket listening until that accept() returned.
            with contextlib.suppress(OSError):
                self.listener.shutdown(socket.SHUT_RDWR)
            self.listener.close()
            self.listener = None
        with self.lock:
            for s in self.open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.open.clear()


def by_recipient(copies: list[Copy]) -> dict[str, list[Copy]]:
    out: dict[str, list[Copy]] = {}
    for c in copies:
        out.setdefault(c.to, []).append(c)
    return out


class Relay:
    """A capturing SMTP relay (aiosmtpd) that can be started and stopped on a fixed port."""

    def __init__(self, port: int | None = None, *, pipelining: bool = False) -> None:
        self.port = port or free_port()
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.controller: Controller | None = None
        self.refuse: dict[str, str] = {}
        self.pipelining = pipelining  # offer PIPELINING (aiosmtpd reads commands in order)

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: Any) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                              bytes(envelope.original_content)))
        return "250 OK"

    def start(self) -> Self:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller:
            self.controller.stop()
            self.controller = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def recipients(self) -> list[str]:
        return [r for _, rcpts, _ in self.messages for r in rcpts]


class Mail:
    """The Maildir outbox read as a sequence: wait for the next N copies."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.seen = 0
        self.all: list[Copy] = []

    def next(self, count: int, timeout: float = 20) -> list[Copy]:
        want = self.seen + count
        wait_for(lambda: len(self.d.delivered()) >= want, timeout, f"{count} more copies")
        time.sleep(0.2)  # anything extra would show up now (and fail the next call)
        got = self.d.delivered()
        assert len(got) == want, f"expected {count} new copies, got {len(got) - self.seen}: " + \
            ", ".join(f"{c.to} {c['Subject']}" for c in got[self.seen:])
        new = got[self.seen:]
        self.seen = want
        self.all = got
        return new

    def nothing_more(self) -> None:
        time.sleep(1.0)
        extra = self.d.delivered()[self.seen:]
        assert not extra, ", ".join(f"{c.to} {c['Subject']}" for c in extra)


def to(copies: list[Copy], who: str) -> Copy:
    """The one copy of ``copies`` for ``who`` (a handle at example.net, or an address)."""
    found = [c for c in copies if c.to == f"{who}@example.net" or c.to == who]
    assert len(found) == 1, f"{len(found)} copies for {who}"
    return found[0]


def send_as(d: Daemon, who: str, address: str, body: str, subject: str = "Re: case",
            **kw: Any) -> None:
    msg = make_report(sender=f"{who.title()} <{who}@example.net>", to=address,
                      subject=subject, body=body, **kw)
    d.send(msg, sender=f"{who}@example.net", to=[address])


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for mx.example.org and localhost, and its key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.example.org")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("mx.example.org"), x509.DNSName("localhost")]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# -- the web view -------------------------------------------------------------------------
def web_daemon(root: Path, database: str, **extra: dict[str, Any]) -> Daemon:
    """A daemon with the web view on a free port and ``intake.deliver = "notice"``."""
    port = free_port()
    sections: dict[str, dict[str, Any]] = {
        "web": {"listen": f"127.0.0.1:{port}"}, "intake": {"deliver": "notice"}}
    for name, values in extra.items():
        sections.setdefault(name, {}).update(values)
    return Daemon(root, database, extra=sections)


def web_url(d: Daemon) -> str:
    return f"http://{d.extra['web']['listen']}"


def csrf_of(html: str) -> str:
    import re

    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def mailed_link(d: Daemon, address: str, seen: int = 0, timeout: float = 20) -> str:
    """The newest sign-in link mailed to ``address`` (waiting for one beyond ``seen``)."""
    import re

    def links() -> list[str]:
        found = []
        for c in d.delivered():
            if c.to == address and "sign-in link" in str(c["Subject"]):
                found += re.findall(r"https?://\S+/login/[\w-]+", c.text)
        return found

    got = wait_for(lambda: len(links()) > seen and links(), timeout,
                   f"a sign-in link for {address}")
    return str(got[-1])


def sign_in(d: Daemon, address: str) -> Any:
    """An httpx client signed in as ``address`` the way a member does it: /login, the mailed
    link, its button."""
    import httpx

    client = httpx.Client(base_url=web_url(d), timeout=30)
    seen = len([c for c in d.delivered() if c.to == address
                and "sign-in link" in str(c["Subject"])])
    page = client.get("/login")
    answer = client.post("/login", data={"csrf": csrf_of(page.text), "email": address})
    assert answer.status_code == 200, answer.text
    link = mailed_link(d, address, seen)
    button = client.get(link)
    assert button.status_code == 200, button.text
    done = client.post(link, data={"csrf": csrf_of(button.text)})
    assert done.status_code == 303 and done.headers["location"] == "/", done.text
    return client


def open_case(d: Daemon, body: str, subject: str, to: str = ALIAS) -> str:
    """Send a report to ``to``; the code name of its case, read off the members' notices
    (notice mode)."""
    import re

    before = len(d.delivered())
    d.send(make_report(body=body + "\n", subject=subject, to=to), to=[to])
    notice = wait_for(lambda: next((str(c["Subject"]) for c in d.delivered()[before:]
                                    if "A new report" in str(c["Subject"])), None), 20,
                      "a notice")
    found = re.match(r"\[([a-z]+ [a-z]+)\]", notice)
    assert found
    time.sleep(0.5)  # the other copies
    return found.group(1)


def slug(code: str) -> str:
    """A code name as URLs and addresses write it."""
    return code.replace(" ", "-")
