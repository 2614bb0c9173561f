"""A private Postfix instance (its own config, queue and port) for interop tests and benchmarks.

It needs Debian's `postfix` package and root (Postfix's master runs as root); the system
service is not touched.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.helpers import free_port, wait_for


def available() -> str:
    """Empty when a private Postfix can run here, else the reason it cannot."""
    if shutil.which("postfix") is None:
        return "Debian's postfix package is not installed (.ci/run installs it)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root"
    return ""


class PrivatePostfix:
    """Postfix on 127.0.0.1:<port>: relays ``relay_domain`` to ``relay_to`` and delivers the
    ``mailboxes`` (addresses) into Maildirs under ``root/mail/<address>/``."""

    def __init__(
        self, *, relay_domain: str, relay_to: str, mailboxes: list[str], extra: str = ""
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="coc-postfix-"))
        self.root.chmod(0o755)
        self.port = free_port()
        conf, queue, data, mail = (self.root / n for n in ("conf", "queue", "data", "mail"))
        for d in (conf, queue, data, mail):
            d.mkdir()
        shutil.chown(data, "postfix")
        shutil.chown(mail, "postfix")
        master = Path("/etc/postfix/master.cf").read_text().splitlines()
        master = [
            f"127.0.0.1:{self.port} inet n - n - - smtpd" if line.startswith("smtp ")
            and " inet " in line else line
            for line in master
        ]
        (conf / "master.cf").write_text("\n".join(master) + "\n")
        domains = sorted({a.split("@")[1] for a in mailboxes}) or ["mailboxes.invalid"]
        host, port = relay_to.rsplit(":", 1)
        boxes = ", ".join(f"{a}={a}/" for a in mailboxes)
        (conf / "main.cf").write_text(
            f"""compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
meta_directory = /etc/postfix
maillog_file = {self.root}/maillog
maillog_file_prefixes = {self.root}
myhostname = mx.relay.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = {relay_domain}
transport_maps = inline:{{ {relay_domain}=smtp:[{host}]:{port} }}
virtual_mailbox_domains = {' '.join(domains)}
virtual_mailbox_base = {mail}
virtual_mailbox_maps = inline:{{ {boxes} }}
virtual_uid_maps = static:{pwd.getpwnam("postfix").pw_uid}
virtual_gid_maps = static:{grp.getgrnam("postfix").gr_gid}
smtp_tls_security_level = none
smtpd_tls_security_level = none
alias_maps =
alias_database =
smtputf8_enable = yes
{extra}
"""
        )
        self.conf = conf
        self.mail = mail

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["postfix", "-c", str(self.conf), *args], capture_output=True,
                              text=True, timeout=60)

    def start(self) -> PrivatePostfix:
        result = self.postfix("start")
        if result.returncode != 0:
            raise RuntimeError(f"postfix start failed: {result.stderr}{self.log()}")
        wait_for(self._listening, 20, "postfix listening")
        return self

    def _listening(self) -> bool:
        import socket

        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        self.postfix("stop")
        time.sleep(0.3)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def mailbox(self, address: str) -> list[bytes]:
        new = self.mail / address / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []


class Sink:
    """Postfix's smtp-sink dumping each transaction into a file of its own; ``eightbit=False``
    makes it a relay that does not offer 8BITMIME (``-8``)."""

    def __init__(self, *, eightbit: bool = True) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="coc-sink-"))
        self.dir.chmod(0o755)
        shutil.chown(self.dir, "postfix")
        flags = [] if eightbit else ["-8"]
        self.proc = subprocess.Popen(
            ["smtp-sink", *flags, "-u", "postfix", "-d", f"{self.dir}/%H%M%S.",
             f"127.0.0.1:{self.port}", "100"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._listening, 10, "smtp-sink listening")

    def _listening(self) -> bool:
        import socket

        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def transactions(self) -> list[tuple[dict[str, str], bytes]]:
        """Each received transaction: smtp-sink's ``X-*-Args`` lines, and the message bytes
        exactly as they came over the wire (dot-unstuffed, CRLF)."""
        found = []
        for path in sorted(self.dir.iterdir()):
            data = path.read_bytes()
            args: dict[str, str] = {}
            while data.startswith(b"X-") and b": " in data.split(b"\n", 1)[0]:
                line, data = data.split(b"\n", 1)
                name, _, value = line.decode().rstrip("\r").partition(": ")
                if not name.endswith("-Args") and name not in ("X-Client-Addr",
                                                                "X-Client-Proto"):
                    data = line + b"\n" + data
                    break
                args[name] = args[name] + " " + value if name in args else value
            found.append((args, data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")))
        return found

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
