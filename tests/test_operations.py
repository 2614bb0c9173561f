"""Operating the daemon: check, keys, reload, TLS, inbound DKIM, one daemon per SQLite file."""

from __future__ import annotations

import base64
import signal
import smtplib
import ssl
import subprocess
import sys
from pathlib import Path

import dkim

from coc_mail.mail.dkim import generate_key, txt_record_value
from tests.helpers import ALIAS, Daemon, by_recipient, make_report, self_signed, wait_for, wire


def test_check_passes_on_a_started_daemon_and_fails_precisely(
    tmp_path: Path, sqlite_url: str
) -> None:
    d = Daemon(tmp_path, sqlite_url)
    d.write()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    first = d.cli("check")  # a fresh install passes, and says what serve will create
    for key in ("storage.key_file", "dkim.private_key", "storage.database"):
        assert f"ok    {key} " in first.stdout and "`coc-mail serve` creates it" in first.stdout
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "check wrote something"
    d.start()
    d.stop()
    ok = d.cli("check")
    assert "ok    database schema at" in ok.stdout and "ok    relay" in ok.stdout
    d.relay = "smtp://127.0.0.1:1"
    d.write()
    bad = d.cli("check", check=False)
    assert bad.returncode == 1 and "delivery.relay 127.0.0.1:1: not reachable" in bad.stderr
    key_file = next(tmp_path.rglob("secret.key"))
    key_file.rename(tmp_path / "elsewhere.key")  # the database stays, sealed with the lost key
    lost = d.cli("check", check=False)
    assert lost.returncode == 1 and "storage.key_file is missing but the database" in lost.stderr


def test_a_wrong_storage_key_is_refused(tmp_path: Path, sqlite_url: str) -> None:
    d = Daemon(tmp_path, sqlite_url)
    d.start()
    d.send(make_report())
    d.wait_delivered(4)
    d.stop()
    key = d.var / "secret.key"
    key.write_text(base64.urlsafe_b64encode(b"x" * 32).decode())
    result = d.cli("cases", check=False)
    assert result.returncode == 1
    assert "does not open this database" in result.stderr
    proc = subprocess.run([sys.executable, "-m", "coc_mail", "--config", str(d.config), "serve"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, env=d.env())
    assert proc.returncode == 1 and "does not open this database" in proc.stderr


def test_a_second_daemon_on_the_same_sqlite_file_is_refused(sqlite_daemon: Daemon) -> None:
    d = sqlite_daemon
    proc = subprocess.run([sys.executable, "-m", "coc_mail", "--config", str(d.config), "serve"],
                          cwd=d.root, capture_output=True, text=True, timeout=60, env=d.env())
    assert proc.returncode == 1 and "another coc-mail daemon" in proc.stderr


def test_reload_adds_a_member_and_refuses_a_broken_file(tmp_path: Path, sqlite_url: str) -> None:
    d = Daemon(tmp_path, sqlite_url)
    d.start()
    try:
        d.members.append({"name": "Margaret New", "email": "margaret@example.net"})
        d.write()
        d.cli("reload")
        wait_for(lambda: "4 members" in d.log_text(), 10, "reload")
        onboarding = d.wait_delivered(1)[0]
        assert onboarding.to == "margaret@example.net"
        assert "/conflicts" in onboarding.text
        d.send(make_report())  # until she answers, Margaret gets no case mail
        got = by_recipient(d.wait_delivered(5))
        assert len(got["margaret@example.net"]) == 1
        good = d.config.read_text()
        d.config.write_text(good.replace('"margaret@example.net"', '"broken"'))
        assert d.cli("reload", check=False).returncode == 1  # the CLI refuses it first
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)  # a raw SIGHUP: the daemon keeps its config
        wait_for(lambda: "reload refused" in d.log_text(), 10, "refusal")
        d.send(make_report(subject="second"))
        assert len(by_recipient(d.wait_delivered(9))["margaret@example.net"]) == 1
    finally:
        d.stop()


def test_starttls_is_offered_with_a_certificate(tmp_path: Path, sqlite_url: str) -> None:
    cert, key = self_signed(tmp_path)
    d = Daemon(tmp_path, sqlite_url,
               extra={"server": {"tls_cert": str(cert), "tls_key": str(key)}})
    d.start()
    try:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
            s.ehlo()
            assert s.has_extn("starttls")
            s.starttls(context=context)
            s.ehlo()
            s.send_message(make_report(), from_addr="reporter@example.com", to_addrs=[ALIAS])
        d.wait_delivered(4)

        def served() -> bytes:
            loose = ssl.create_default_context()
            loose.check_hostname, loose.verify_mode = False, ssl.CERT_NONE
            with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
                s.starttls(context=loose)
                peer: bytes | None = s.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
                assert peer is not None
                return peer

        def der(path: Path) -> bytes:
            return ssl.PEM_cert_to_DER_cert(path.read_text())

        first = der(cert)
        assert served() == first == served()  # one context for both sessions
        (tmp_path / "renewed").mkdir()
        new_cert, new_key = self_signed(tmp_path / "renewed")  # renewed in place, no restart
        key.write_bytes(new_key.read_bytes())
        cert.write_bytes(new_cert.read_bytes())
        assert served() == der(new_cert) != first
    finally:
        d.stop()
    (tmp_path / "plain").mkdir()
    plain = Daemon(tmp_path / "plain", sqlite_url.replace("/var/", "/plain/var/"))
    plain.start()
    try:
        with plain.smtp() as s:
            s.ehlo()
            assert not s.has_extn("starttls")
    finally:
        plain.stop()


def test_inbound_dkim_is_verified_and_a_failure_is_flagged(tmp_path: Path, sqlite_url: str) -> None:
    sender_key = tmp_path / "sender.key"
    pem = generate_key(sender_key)
    record = txt_record_value(pem)
    d = Daemon(tmp_path, sqlite_url, extra={
        "dkim": {"dns_overrides": {"s1._domainkey.sender.example": record}}})
    d.start()
    try:
        report = wire(make_report(sender="Signed Sender <someone@sender.example>"))
        signed = dkim.sign(report, b"s1", b"sender.example", pem,
                           include_headers=[b"from", b"subject", b"to"]) + report
        d.send(signed, sender="someone@sender.example")
        first = next(c for c in d.wait_delivered(4) if c.to == "grace@example.net")
        assert "dkim=pass header.d=sender.example header.s=s1" in str(
            first["Authentication-Results"])
        assert "WARNING" not in first.text
        assert first.original().replace(b"\n", b"\r\n") == signed
        tampered = signed.replace(b"Report body.", b"Forged body.")
        d.send(tampered, sender="someone@sender.example")
        copies = [c for c in d.wait_delivered(8) if c.to == "grace@example.net"]
        second = next(c for c in copies if c is not first and b"Forged" in c.raw)
        assert "dkim=fail" in str(second["Authentication-Results"])
        assert "WARNING: the sender's DKIM signature did not verify" in second.text
    finally:
        d.stop()


def test_sigterm_stops_cleanly(sqlite_daemon: Daemon) -> None:
    d = sqlite_daemon
    d.send(make_report())
    d.wait_delivered(4)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0
    assert "stopped: 1 message(s) accepted" in d.log_text()
    assert not (d.var / "coc-mail.pid").exists()


def test_templates_override_file_by_file_and_check_finds_mistakes(
    tmp_path: Path, sqlite_url: str
) -> None:
    overrides = tmp_path / "templates"
    overrides.mkdir()
    (overrides / "acknowledgment.txt.j2").write_text(
        "Subject: Thanks ({{ case.code_name }})\nOur own words for {{ committee.name }}.\n")
    d = Daemon(tmp_path, sqlite_url, extra={"templates": {"directory": str(overrides)}})
    d.start()
    try:
        d.send(make_report())
        ack = by_recipient(d.wait_delivered(4))["reporter@example.com"][0]
        assert ack.text.startswith("Our own words for Test Conference")
        assert str(ack["Subject"]).startswith("Thanks (")
    finally:
        d.stop()
    assert d.cli("check").returncode == 0
    (overrides / "followup.txt.j2").write_text("{{ txet }}\n")
    bad = d.cli("check", check=False)
    assert bad.returncode == 1
    assert "followup.txt.j2: UndefinedError: 'txet' is undefined" in bad.stderr
