"""Attacks on the web view over real HTTP against the running daemon, from the security
review of the web view: each test is a finding fixed (or a check that held), kept so it
stays fixed.

* a form's text that starts like a quote attribution ("The reporter wrote:") is run as its
  command, never relayed to other members as a thread post; a note keeps all it was given;
* request bodies are held to the form limit however they are sent (chunked too);
* the sign-in limits cannot be flushed by spraying addresses;
* a departed member's session stays dead when they are added back;
* a database wait in one request does not stall the others;
* one link raced from many tabs gives one session; hostile attachment names and HTML are
  inert; expired sessions are refused on SQLite; a half-signed-in session reaches nothing;
  nothing of a report reaches the log.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests import helpers
from tests.helpers import (
    Daemon,
    csrf_of,
    mailed_link,
    send_as,
    sign_in,
    slug,
    wait_for,
    web_daemon,
    web_url,
)

REPORT = "SECRET-REPORT-TEXT: Sam Smith shouted at me at the party."


def open_case(d: Daemon, to: str = "conduct@example.org") -> str:
    return helpers.open_case(d, REPORT, "About it", to)


def case_address(d: Daemon, who: str, code: str) -> str:
    copy = next(c for c in d.delivered() if c.to == f"{who}@example.net"
                and code in str(c["Subject"]) and c["Reply-To"])
    return str(copy["Reply-To"].addresses[0].addr_spec)


def ongoing_with_two_cleared(d: Daemon) -> tuple[str, httpx.Client, str]:
    """A case named (Sam Smith) by Ada from the web; Grace answers /noconflict by mail:
    Ada and Grace are cleared. Ada's signed-in client and her page's CSRF token."""
    code = open_case(d)
    ada = sign_in(d, "ada@example.net")
    csrf = csrf_of(ada.get(f"/cases/{slug(code)}").text)
    r = ada.post(f"/cases/{slug(code)}/involves", data={"csrf": csrf, "name": "Sam Smith"})
    assert r.status_code == 303
    wait_for(lambda: any(c.to == "grace@example.net" and "onflict" in str(c["Subject"])
                         for c in d.delivered()), 20, "Grace's conflict check")
    send_as(d, "grace", case_address(d, "grace", code), "/noconflict\n")
    wait_for(lambda: "member cleared (no conflict)" in d.cli("audit", code).stdout, 20,
             "Grace cleared")
    return code, ada, csrf


# -- F1: a web form whose text begins like a quote attribution becomes a thread post ------
def test_a_note_that_starts_with_an_attribution_is_added_not_mailed_to_everyone(
        web: Daemon) -> None:
    """A member adds a note from the page whose text begins "The reporter wrote:" (a
    natural way to start a summary). The note must land in the document; nothing may be
    mailed. The first line "/note summary" joined with that line reads as a quote
    attribution, the command vanishes, and the whole form is relayed BY MAIL to every
    other cleared member as a thread post, and nothing is added."""
    code, ada, csrf = ongoing_with_two_cleared(web)
    before = len(web.delivered())
    r = ada.post(f"/cases/{slug(code)}/note", data={
        "csrf": csrf, "section": "summary",
        "text": "The reporter wrote:\nNOTE-SECRET-4711 details for the document only"})
    assert r.status_code == 303
    time.sleep(3)
    mailed = [c for c in web.delivered()[before:] if "NOTE-SECRET-4711" in c.text]
    page = ada.get(f"/cases/{slug(code)}").text
    assert not mailed, f"the note was mailed to {[c.to for c in mailed]}"
    assert "NOTE-SECRET-4711" in page, "the note was not added to the document"


def test_a_follow_up_that_quotes_the_reporter_goes_to_the_reporter(web: Daemon) -> None:
    """Same root cause through the follow-up forms: a follow-up beginning "In your report
    you wrote:" is, at Preview, relayed to every other cleared member by mail (a preview is
    for the author alone), and at Send, relayed to them again instead of reaching the
    reporter."""
    code, ada, csrf = ongoing_with_two_cleared(web)
    text = "In your report you wrote:\nFOLLOW-SECRET-5150 we looked into it."
    before = len(web.delivered())
    preview = ada.post(f"/cases/{slug(code)}/preview",
                       data={"csrf": csrf, "template": "followup", "text": text})
    time.sleep(3)
    leaked = [c.to for c in web.delivered()[before:] if "FOLLOW-SECRET-5150" in c.text]
    assert not leaked, f"the preview was mailed to {leaked}"
    assert "Preview (not sent)" in preview.text
    before = len(web.delivered())
    ada.post(f"/cases/{slug(code)}/followup",
             data={"csrf": csrf, "template": "followup", "text": text})
    time.sleep(3)
    got = [c.to for c in web.delivered()[before:] if "FOLLOW-SECRET-5150" in c.text]
    assert got == ["reporter@example.com"], f"the follow-up went to {got}"


# -- F2: a note's text is cut at the first line that looks like quoted mail, silently ----
def test_a_note_keeps_all_the_text_typed_in_the_form(web: Daemon) -> None:
    code = open_case(web)
    ada = sign_in(web, "ada@example.net")
    csrf = csrf_of(ada.get(f"/cases/{slug(code)}").text)
    text = ("Call with the witness.\n> They said it happened twice.\n--\n"
            "TAIL-MARKER-9 agreed next steps")
    ada.post(f"/cases/{slug(code)}/note", data={"csrf": csrf, "section": "summary",
                                                 "text": text})
    page = ada.get(f"/cases/{slug(code)}").text
    assert "Added to Summary" in page
    assert "TAIL-MARKER-9" in page and "happened twice" in page, \
        "the note was silently truncated at a quote/signature line"


# -- F3: MAX_FORM is only checked against Content-Length -----------------------------------
def test_a_chunked_form_is_held_to_the_form_limit(web: Daemon) -> None:
    """An outsider's /login form sent without Content-Length (chunked) is read whole,
    however big: the 256 KiB limit only looks at the header."""
    client = httpx.Client(base_url=web_url(web), timeout=60)
    csrf = csrf_of(client.get("/login").text)
    body = f"csrf={csrf}&email=x%40example.com&pad=".encode()

    def chunks() -> Iterator[bytes]:  # 40 fields of 900 KiB: 35 MiB, 140 times the 256 KiB limit
        yield body
        for i in range(40):
            yield f"&f{i}=".encode() + b"a" * (900 << 10)

    r = client.post("/login", content=chunks(),
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code in (403, 413), \
        f"a 35 MiB chunked form was read and accepted ({r.status_code})"


# -- httptools has no bound of its own on a request's head ------------------------------
def test_a_request_head_past_64_kib_is_refused_before_sign_in(web: Daemon) -> None:
    """A header sent in pieces, past 64 KiB: answered 431 and the connection closed (as h11
    would), not buffered without end; the web view answers the next request as ever."""
    host, _, port = web.extra["web"]["listen"].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /login HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        answer = b""
        try:
            for _ in range(64):  # up to 1 MiB, in 16 KiB pieces
                sock.sendall(b"a" * 16384)
                time.sleep(0.005)
        except OSError:
            pass  # closed on us: what is asked
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert httpx.get(web_url(web) + "/login", timeout=30).status_code == 200


def test_trailer_fields_after_a_chunked_body_are_held_to_the_same_bound(web: Daemon) -> None:
    """Header fields after a chunked body (trailers) are header fields too: past 64 KiB of
    them, 431 and closed, not kept without end."""
    host, _, port = web.extra["web"]["listen"].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
                     b"3\r\nabc\r\n0\r\nX-Trailer: ")
        answer = b""
        try:
            for _ in range(64):  # up to 1 MiB of one trailer field, in 16 KiB pieces
                sock.sendall(b"a" * 16384)
                time.sleep(0.005)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    assert b"HTTP/1.1 431 " in answer, answer[:300]


# -- F4: rate limits reset when their dict passes 10,000 keys ------------------------------
def test_the_per_address_limit_cannot_be_flushed_by_spraying_addresses(web: Daemon) -> None:
    """Three links per member in 15 minutes whatever else is asked: past it the page answers
    as ever (no 429 that would tell the address is asked for) and nothing is mailed; junk
    addresses from many client addresses (behind the trusted proxy, simulated with
    X-Forwarded-For from 127.0.0.1) do not reset it."""
    client = httpx.Client(base_url=web_url(web), timeout=30)
    csrf = csrf_of(client.get("/login").text)

    def ask(address: str, ip: str) -> int:
        return client.post("/login", data={"csrf": csrf, "email": address},
                           headers={"x-forwarded-for": ip}).status_code

    assert [ask("ada@example.net", "10.9.9.9") for _ in range(4)] == [200] * 4
    for a in range(60):
        for n in range(10):
            ask(f"junk{a}-{n}@example.com", f"10.8.{a}.1")
    assert ask("ada@example.net", "10.9.9.8") == 200
    time.sleep(2)
    links = [c for c in web.delivered() if c.to == "ada@example.net"
             and "sign-in link" in str(c["Subject"])]
    assert len(links) == 3, f"{len(links)} links mailed"


def test_a_full_rate_limiter_refuses_new_keys_rather_than_forgetting_old_ones() -> None:
    from coc_mail.web.auth import RateLimit, client_key

    limit = RateLimit(3, 900, keys=5)
    assert [limit.allow("victim") for _ in range(4)] == [True, True, True, False]
    assert all(limit.allow(f"junk{i}") for i in range(4))
    assert not limit.allow("junk-more")  # full, and nothing has aged out
    assert not limit.allow("victim")  # still limited
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff") == "2001:db8::/64"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("192.0.2.7") == "192.0.2.7"


# -- F5: a session lives on when its member is removed and then added again ----------------
def test_a_session_of_a_removed_member_stays_dead_when_they_are_added_again(
        web: Daemon) -> None:
    grace = sign_in(web, "grace@example.net")
    assert grace.get("/").status_code == 200
    everyone = [dict(m) for m in web.members]
    web.members = [m for m in web.members if m["email"] != "grace@example.net"]
    web.write()
    web.cli("reload")
    wait_for(lambda: grace.get("/").status_code == 303, 20, "the session to end")
    web.members = everyone
    web.write()
    web.cli("reload")
    time.sleep(2)
    assert grace.get("/").status_code == 303, "the old session cookie came back to life"


# -- checks that hold (kept as regression tests) ------------------------------------------
def test_one_link_raced_from_many_tabs_gives_one_session(web: Daemon) -> None:
    client = httpx.Client(base_url=web_url(web), timeout=30)
    page = client.get("/login")
    client.post("/login", data={"csrf": csrf_of(page.text), "email": "ada@example.net"})
    link = mailed_link(web, "ada@example.net")
    clients = [httpx.Client(base_url=web_url(web), timeout=30) for _ in range(8)]
    forms = [(c, csrf_of(c.get(link).text)) for c in clients]
    codes: list[int] = []
    gate = threading.Barrier(len(forms))

    def use(c: httpx.Client, token: str) -> None:
        gate.wait()
        codes.append(c.post(link, data={"csrf": token}).status_code)

    threads = [threading.Thread(target=use, args=f) for f in forms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [303] + [404] * 7, codes


def test_hostile_attachment_names_and_html_are_inert(web: Daemon) -> None:
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = "Rita <reporter@example.com>"
    msg["To"] = "conduct@example.org"
    msg["Subject"] = "About it"
    msg.set_content("plain part")
    msg.add_alternative('<p>hi<script>alert(1)</script><img src=x onerror=alert(2)></p>',
                        subtype="html")
    msg.add_attachment(b"MZ-evil", maintype="application", subtype="octet-stream",
                       filename='a"; filename=evil.html; X-Injected: 1;/../../x\u202egnp.exe')
    before = len(web.delivered())
    web.send(msg, to=["conduct@example.org"])
    subject = wait_for(lambda: next((str(c["Subject"]) for c in web.delivered()[before:]
                                     if "A new report" in str(c["Subject"])), None), 20,
                       "a notice")
    code = re.match(r"\[([a-z]+ [a-z]+)\]", subject).group(1)  # type: ignore[union-attr]
    ada = sign_in(web, "ada@example.net")
    page = ada.get(f"/cases/{slug(code)}")
    assert "<script>" not in page.text and "onerror=alert" not in page.text.replace(
        "onerror=alert(2)&gt;", "")
    files = re.findall(r'/files/(\d+)"', page.text)
    for index in files:
        r = ada.get(f"/cases/{slug(code)}/files/{index}")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/octet-stream"
        cd = r.headers["content-disposition"]
        assert cd.startswith("attachment; filename*=UTF-8''")
        assert "x-injected" not in {k.lower() for k in r.headers}
        assert '"' not in cd[len("attachment; "):] and "/" not in cd.split("''", 1)[1]


def test_expired_sessions_are_refused_on_sqlite(tmp_path: Path, sqlite_url: str) -> None:
    d = web_daemon(tmp_path, sqlite_url, web={"session_hours": 0.001}).start()  # 3.6 s
    try:
        ada = sign_in(d, "ada@example.net")
        assert ada.get("/").status_code == 200
        time.sleep(4.5)
        assert ada.get("/").status_code == 303
    finally:
        d.stop()


# -- (h) a half-signed-in session (link followed, passkey not yet answered) ---------------
def test_a_session_waiting_for_its_passkey_reaches_nothing(web: Daemon) -> None:
    import os

    from sqlmodel import Session, select

    from coc_mail import config as config_mod
    from coc_mail.app import build
    from coc_mail.store import WebPasskey
    from coc_mail.web.auth import member_key

    code = open_case(web)
    here = os.getcwd()
    os.chdir(web.root)
    try:
        app = build(config_mod.load(str(web.config)), migrate=False)
    finally:
        os.chdir(here)
    with Session(app.engine) as s:  # Ada has a passkey (its row, as registering leaves it)
        s.add(WebPasskey(credential_id="AAAAAAAAAAAAAAAAAAAAAA",
                         member_tag=member_key(app, app.settings.members[0]),
                         public_key=app.keys.seal(b"not a key", "web_passkeys.public_key")))
        s.commit()
    client = httpx.Client(base_url=web_url(web), timeout=30)
    page = client.get("/login")
    client.post("/login", data={"csrf": csrf_of(page.text), "email": "ada@example.net"})
    link = mailed_link(web, "ada@example.net")
    button = client.get(link)
    done = client.post(link, data={"csrf": csrf_of(button.text)})
    assert done.status_code == 303 and done.headers["location"] == "/passkey"
    half = client.get("/passkey")
    assert half.status_code == 200
    csrf = csrf_of(half.text) if 'name="csrf"' in half.text else re.search(
        r'data-csrf="([^"]+)"', half.text).group(1)  # type: ignore[union-attr]
    for path in ("/", f"/cases/{slug(code)}", f"/cases/{slug(code)}/files/0", "/status",
                 "/status.csv", "/status.xlsx", "/account"):
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/passkey", path
        assert "SECRET-REPORT-TEXT" not in r.text
    for path, data in ((f"/cases/{slug(code)}/note", {"section": "summary", "text": "HALF"}),
                       (f"/cases/{slug(code)}/recuse", {}),
                       ("/account/passkeys/remove", {"id": "AAAAAAAAAAAAAAAAAAAAAA"})):
        r = client.post(path, data={"csrf": csrf, **data})
        assert r.status_code == 303 and r.headers["location"] == "/passkey", path
    r = client.post("/account/passkeys/options", json={"csrf": csrf})
    assert r.status_code == 403
    r = client.post("/passkey/verify", json={"csrf": csrf, "credential": {
        "id": "AAAAAAAAAAAAAAAAAAAAAA", "rawId": "AAAAAAAAAAAAAAAAAAAAAA", "type": "public-key",
        "response": {}}})
    assert r.status_code in (400, 403)
    assert client.get("/").headers["location"] == "/passkey"  # a refused answer: still half
    with Session(app.engine) as s:
        assert s.exec(select(WebPasskey)).first() is not None  # not removed


# -- (i) nothing of a report reaches the log ----------------------------------------------
def test_no_report_text_subject_address_or_name_in_the_log(web: Daemon) -> None:
    code = open_case(web)
    ada = sign_in(web, "ada@example.net")
    csrf = csrf_of(ada.get(f"/cases/{slug(code)}").text)
    for name, data in (("note", {"section": "summary", "text": "LOGNOTE-77 Sam Smith"}),
                       ("status", {"actions": "LOGSTATUS-77"}),
                       ("involves", {"name": "Sam Smith"}),
                       ("preview", {"template": "followup", "text": "LOGFOLLOW-77"}),
                       ("followup", {"template": "followup", "text": "LOGFOLLOW-77"}),
                       ("note", {"section": "nonsense", "text": "x"}),
                       ("resolve", {"resolution": "LOGRESOLVE-77"})):
        ada.post(f"/cases/{slug(code)}/{name}", data={"csrf": csrf, **data})
    ada.get(f"/cases/{slug(code)}/files/0")
    ada.get("/status.xlsx")
    ada.get("/cases/../../etc/passwd")
    ada.post("/login", content=b"\xff\xfe" * 100,
             headers={"content-type": "application/x-www-form-urlencoded"})
    time.sleep(2)
    log = web.log_text()
    for marker in ("SECRET-REPORT-TEXT", "About it", "reporter@example.com", "Sam Smith",
                   "LOGNOTE-77", "LOGSTATUS-77", "LOGFOLLOW-77", "LOGRESOLVE-77", "/login/"):
        assert marker not in log, marker


# -- (j) async handlers do blocking database writes on the event loop ----------------------
def test_a_sign_out_waiting_for_the_database_does_not_stall_everyone(web: Daemon) -> None:
    """logout, use_link and the passkey endpoints are async handlers that run their
    (synchronous) database work on the event loop: while SQLite's write lock is held (the
    processor during a flood; here a test connection for 4 s), one member's sign-out
    freezes every other request of the web view, signed-out ones included."""
    import sqlite3

    ada = sign_in(web, "ada@example.net")
    csrf = csrf_of(ada.get("/").text)
    db = sqlite3.connect(web.database.removeprefix("sqlite:///"), timeout=1,
                         check_same_thread=False)
    db.execute("BEGIN IMMEDIATE")  # the write lock

    def release() -> None:
        time.sleep(4)
        db.rollback()

    holder = threading.Thread(target=release)
    holder.start()
    signing_out = threading.Thread(target=lambda: ada.post("/logout", data={"csrf": csrf}))
    signing_out.start()
    time.sleep(0.5)
    start = time.perf_counter()
    httpx.get(web_url(web) + "/login", timeout=30)
    waited = time.perf_counter() - start
    signing_out.join()
    holder.join()
    db.close()
    assert waited < 1, f"GET /login waited {waited:.1f} s behind another member's sign-out"


def test_many_writers_waiting_for_the_database_leave_the_pages_their_threads(
        web: Daemon) -> None:
    """Page handlers share a pool of threads as large as the database pool (8); posted forms
    have a smaller pool of their own. Twelve sign-outs waiting for SQLite's write lock (a
    test connection holds it for 5 s) must not take every thread: pages still answer."""
    import sqlite3

    ada = sign_in(web, "ada@example.net")
    csrf = csrf_of(ada.get("/").text)
    members = [httpx.Client(base_url=web_url(web), cookies=ada.cookies, timeout=30)
               for _ in range(12)]  # twelve tabs of one session, each signing out
    tokens = [csrf] * len(members)
    db = sqlite3.connect(web.database.removeprefix("sqlite:///"), timeout=1,
                         check_same_thread=False)
    db.execute("BEGIN IMMEDIATE")  # the write lock
    answers: list[int] = []
    waiting = [threading.Thread(target=lambda m=m, t=t: answers.append(
        m.post("/logout", data={"csrf": t}).status_code))
        for m, t in zip(members, tokens, strict=True)]
    for w in waiting:
        w.start()
    time.sleep(1.0)  # every sign-out is waiting for its write turn by now
    start = time.perf_counter()
    pages = [httpx.get(web_url(web) + "/login", timeout=30).status_code for _ in range(3)]
    waited = time.perf_counter() - start
    db.rollback()
    db.close()
    for w in waiting:
        w.join(30)
    assert pages == [200, 200, 200]
    assert waited < 2, f"three sign-in pages took {waited:.1f} s behind 12 waiting sign-outs"
    assert answers == [303] * len(members)  # and the sign-outs went through
    assert ada.get("/").headers.get("location") == "/login"
