"""The web view over real HTTP against the running daemon: sign-in, pages, commands, and
every refusal (signed out, wrong member, used or expired link, missing CSRF token, another
member's download, a non-member at /login, too many sign-ins)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from tests import helpers
from tests.helpers import (
    Daemon,
    Mail,
    by_recipient,
    csrf_of,
    mailed_link,
    make_report,
    send_as,
    sign_in,
    slug,
    wait_for,
    web_daemon,
    web_url,
)

REPORT = "SECRET-REPORT-TEXT: Jordan Roe shouted at me at the party."
REPORTER = "reporter@example.com"


def open_case(d: Daemon, to: str = "conduct@example.org") -> str:
    return helpers.open_case(d, REPORT, "About Jordan Roe", to)


def test_notice_mode_keeps_the_report_out_of_every_mailbox(web: Daemon) -> None:
    code = open_case(web)
    ada = sign_in(web, "ada@example.net")
    page = ada.get(f"/cases/{slug(code)}")
    assert page.status_code == 200
    assert "SECRET-REPORT-TEXT" in page.text and REPORTER in page.text
    csrf = csrf_of(page.text)
    assert ada.post(f"/cases/{slug(code)}/doc", data={"csrf": csrf}).status_code == 404
    notice = next(c for c in web.delivered() if c.to == "ada@example.net")
    send_as(web, "ada", notice["Reply-To"].addresses[0].addr_spec, "/doc\n")
    wait_for(lambda: any("Case document" in str(c["Subject"]) for c in web.delivered()), 20,
             "the /doc answer")
    for copy in web.delivered():
        if copy.to.endswith("@example.net"):  # every member's mail
            assert b"SECRET-REPORT-TEXT" not in copy.raw, copy["Subject"]
            assert REPORTER.encode() not in copy.raw, copy["Subject"]
            assert b"Jordan Roe" not in copy.raw, copy["Subject"]


def test_signed_out_requests_go_to_the_sign_in_page(web: Daemon) -> None:
    code = open_case(web)
    anon = httpx.Client(base_url=web_url(web), timeout=30)
    for path in ("/", f"/cases/{slug(code)}", f"/cases/{slug(code)}/files/0", "/status",
                 "/status.csv"):
        r = anon.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    r = anon.post(f"/cases/{slug(code)}/note", data={"section": "summary", "text": "x"})
    assert r.status_code == 303
    fake = httpx.Client(base_url=web_url(web), cookies={"coc_session": "forged"}, timeout=30)
    assert fake.get("/").status_code == 303


def test_a_member_who_does_not_receive_a_case_gets_404_everywhere(web: Daemon) -> None:
    """Grace is excluded from the case (the reporter wrote to conduct+without.grace): the
    case, its downloads and its forms answer 404, as a case that does not exist does."""
    code = open_case(web, to="conduct+without.grace@example.org")
    grace = sign_in(web, "grace@example.net")
    home = grace.get("/")
    assert code not in home.text
    csrf = csrf_of(home.text)
    missing = grace.get("/cases/no-such")
    for r in (grace.get(f"/cases/{slug(code)}"), grace.get(f"/cases/{slug(code)}/files/0"),
              grace.get(f"/cases/{slug(code)}/files/1"),
              grace.post(f"/cases/{slug(code)}/note",
                         data={"csrf": csrf, "section": "summary", "text": "mine"})):
        assert r.status_code == 404
        assert r.text == missing.text  # nothing tells an excluded case from none
        assert "SECRET-REPORT-TEXT" not in r.text
    ada = sign_in(web, "ada@example.net")
    assert "mine" not in ada.get(f"/cases/{slug(code)}").text


def test_a_link_works_once_and_not_after_its_minutes(tmp_path: Path, sqlite_url: str) -> None:
    d = web_daemon(tmp_path, sqlite_url, web={"link_minutes": 0.05}).start()  # 3 seconds
    try:
        client = httpx.Client(base_url=web_url(d), timeout=30)
        page = client.get("/login")
        client.post("/login", data={"csrf": csrf_of(page.text), "email": "ada@example.net"})
        link = mailed_link(d, "ada@example.net")
        button = client.get(link)
        assert client.post(link, data={"csrf": csrf_of(button.text)}).status_code == 303
        again = httpx.Client(base_url=web_url(d), timeout=30)
        assert again.get(link).status_code == 404
        page = again.get("/login")
        assert again.post(link, data={"csrf": csrf_of(page.text)}).status_code == 404
        assert again.get("/").status_code == 303  # not signed in by the used link
        # a fresh link left for longer than its minutes
        again.post("/login", data={"csrf": csrf_of(page.text), "email": "ada@example.net"})
        late = mailed_link(d, "ada@example.net", seen=1)
        button = again.get(late)
        assert button.status_code == 200
        time.sleep(3.5)
        r = again.post(late, data={"csrf": csrf_of(button.text)})
        assert r.status_code == 404 and "expired" in r.text
        assert again.get("/").status_code == 303
    finally:
        d.stop()


def test_forms_without_their_csrf_token_change_nothing(web: Daemon) -> None:
    code = open_case(web)
    ada = sign_in(web, "ada@example.net")
    for data in ({"section": "summary", "text": "FORGED"},
                 {"section": "summary", "text": "FORGED", "csrf": "0" * 32}):
        r = ada.post(f"/cases/{slug(code)}/note", data=data)
        assert r.status_code == 403
    assert "FORGED" not in ada.get(f"/cases/{slug(code)}").text
    assert ada.post("/logout", data={}).status_code == 403
    assert ada.get("/").status_code == 200  # still signed in
    anon = httpx.Client(base_url=web_url(web), timeout=30)
    assert anon.post("/login", data={"email": "ada@example.net"}).status_code == 403


def test_a_non_member_at_login_gets_the_same_answer_and_no_mail(web: Daemon) -> None:
    mail = Mail(web)
    client = httpx.Client(base_url=web_url(web), timeout=30)
    page = client.get("/login")
    stranger = client.post("/login", data={"csrf": csrf_of(page.text),
                                           "email": "mallory@example.com"})
    mail.nothing_more()
    member = client.post("/login", data={"csrf": csrf_of(page.text), "email": "ada@example.net"})
    assert stranger.status_code == member.status_code == 200
    assert stranger.text == member.text
    (link,) = mail.next(1)
    assert link.to == "ada@example.net"


def test_sign_in_is_rate_limited(web: Daemon) -> None:
    """Three links per member in 15 minutes (past it the same answer, and no mail); ten
    requests per client address in 10 minutes (429)."""
    client = httpx.Client(base_url=web_url(web), timeout=30)
    csrf = csrf_of(client.get("/login").text)

    def ask(address: str) -> int:
        return client.post("/login", data={"csrf": csrf, "email": address}).status_code

    assert [ask("ada@example.net") for _ in range(4)] == [200] * 4  # the 4th mails nothing
    assert [ask(f"x{i}@example.com") for i in range(7)] == [200] * 6 + [429]
    Mail(web).next(3)  # three links for Ada, nothing for the rest


def test_every_response_carries_the_security_headers(web: Daemon) -> None:
    code = open_case(web)
    ada = sign_in(web, "ada@example.net")
    for r in (ada.get("/"), ada.get(f"/cases/{slug(code)}"), ada.get("/cases/nothing"),
              ada.get("/login"), ada.get("/no/such/page"), ada.get("/status.xlsx")):
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src" not in csp  # no script may run at all
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-store"
    cookie = [v for k, v in ada.get(f"/cases/{slug(code)}").headers.multi_items()
              if k == "set-cookie"]
    assert not cookie  # the session cookie is set once, at sign-in
    download = ada.get(f"/cases/{slug(code)}/files/0")
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["content-disposition"].startswith("attachment;")
    assert b"SECRET-REPORT-TEXT" in download.content


def test_the_session_cookie_is_httponly_and_strict(web: Daemon) -> None:
    client = httpx.Client(base_url=web_url(web), timeout=30)
    page = client.get("/login")
    client.post("/login", data={"csrf": csrf_of(page.text), "email": "ada@example.net"})
    link = mailed_link(web, "ada@example.net")
    button = client.get(link)
    r = client.post(link, data={"csrf": csrf_of(button.text)})
    cookie = next(v for k, v in r.headers.multi_items()
                  if k == "set-cookie" and v.startswith("coc_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # http://127.0.0.1: a Secure cookie would never come back


def test_commands_from_the_page_are_the_mail_commands(web: Daemon) -> None:
    """A note, the status sheet, /involves and a follow-up with its preview, from forms;
    each answered on the page, audited as by mail; the follow-up reaches the reporter."""
    code = open_case(web)
    ada = sign_in(web, "ada@example.net")
    page = ada.get(f"/cases/{slug(code)}")
    csrf = csrf_of(page.text)
    r = ada.post(f"/cases/{slug(code)}/note", data={"csrf": csrf, "section": "summary",
                                                    "text": "We met on Monday."})
    assert r.status_code == 303
    page = ada.get(f"/cases/{slug(code)}")
    assert "We met on Monday." in page.text and "Added to Summary" in page.text
    r = ada.post(f"/cases/{slug(code)}/status", data={"csrf": csrf, "safety": "no",
                                                      "repeat": "maybe", "actions": "talk"})
    page = ada.get(f"/cases/{slug(code)}")
    assert "Status sheet updated" in page.text and ">Maybe<" in page.text
    r = ada.post(f"/cases/{slug(code)}/note", data={"csrf": csrf, "section": "nonsense",
                                                    "text": "x"})
    page = ada.get(f"/cases/{slug(code)}")
    assert "Usage: /note" in page.text or "not a section" in page.text.lower()
    preview = ada.post(f"/cases/{slug(code)}/preview", data={
        "csrf": csrf, "template": "followup", "text": "We have spoken with them."})
    assert preview.status_code == 200 and "Preview (not sent)" in preview.text
    assert not any(c.to == REPORTER and "spoken" in c.text for c in web.delivered())
    sent = ada.post(f"/cases/{slug(code)}/followup", data={
        "csrf": csrf, "template": "followup", "text": "We have spoken with them."})
    assert sent.status_code == 303
    wait_for(lambda: any(c.to == REPORTER and "spoken with them" in c.text
                         for c in web.delivered()), 20, "the follow-up at the reporter")
    page = ada.get(f"/cases/{slug(code)}")
    assert "Sent to the reporter" in page.text
    audit = web.cli("audit", code).stdout
    assert "follow-up sent" in audit and "status sheet updated" in audit


def previewed_follow_up(member: httpx.Client, code: str, text: str) -> dict[str, str]:
    """The send form of a follow-up's preview page, as the member's browser would post it
    (its one-time mark included)."""
    csrf = csrf_of(member.get(f"/cases/{slug(code)}").text)
    preview = member.post(f"/cases/{slug(code)}/preview", data={
        "csrf": csrf, "template": "followup", "text": text})
    found = re.search(r'name="once" value="([^"]+)"', preview.text)
    assert found is not None, "the preview's form carries no one-time mark"
    return {"csrf": csrf, "template": "followup", "text": text, "once": found.group(1)}


def test_a_follow_up_sent_twice_from_its_preview_goes_once(web: Daemon) -> None:
    """A double click (or a reload that posts again) on the preview's Send button: the
    reporter gets the follow-up once; the second post is answered on the page."""
    code = open_case(web)
    ada = sign_in(web, "ada@example.net")
    form = previewed_follow_up(ada, code, "Once only, please.")
    assert [ada.post(f"/cases/{slug(code)}/followup", data=form).status_code
            for _ in range(2)] == [303, 303]
    wait_for(lambda: any(c.to == REPORTER and "Once only" in c.text for c in web.delivered()),
             20, "the follow-up at the reporter")
    time.sleep(2)  # a second copy would be delivered by now
    assert sum(c.to == REPORTER and "Once only" in c.text for c in web.delivered()) == 1
    assert "sent already" in ada.get(f"/cases/{slug(code)}").text
    audit = web.cli("audit", code).stdout
    assert audit.count("follow-up sent") == 1


def test_recusing_by_mail_ends_the_open_page_at_once(web: Daemon) -> None:
    code = open_case(web)
    ada = sign_in(web, "ada@example.net")
    assert ada.get(f"/cases/{slug(code)}").status_code == 200
    address = next(c for c in web.delivered() if c.to == "ada@example.net"
                   and code in str(c["Subject"]))["Reply-To"].addresses[0].addr_spec
    send_as(web, "ada", address, "/recuse\n")
    wait_for(lambda: ada.get(f"/cases/{slug(code)}").status_code == 404, 20,
             "the page to close")
    assert ada.get(f"/cases/{slug(code)}/files/0").status_code == 404
    assert code not in ada.get("/").text


def test_leaving_the_configuration_ends_the_session(web: Daemon) -> None:
    code = open_case(web)
    grace = sign_in(web, "grace@example.net")
    assert grace.get(f"/cases/{slug(code)}").status_code == 200
    web.members = [m for m in web.members if m["email"] != "grace@example.net"]
    web.write()
    web.cli("reload")
    wait_for(lambda: grace.get(f"/cases/{slug(code)}").status_code == 303, 20,
             "the session to end")


def test_check_refuses_notice_mode_without_the_web_view(tmp_path: Path,
                                                        sqlite_url: str) -> None:
    d = Daemon(tmp_path, sqlite_url, extra={"intake": {"deliver": "notice"}})
    result = d.cli("check", check=False)
    assert result.returncode != 0
    assert "intake.deliver" in result.stderr and "web.listen" in result.stderr


def test_a_copy_mode_daemon_still_sends_the_report_inline(tmp_path: Path,
                                                           sqlite_url: str) -> None:
    d = web_daemon(tmp_path, sqlite_url, intake={"deliver": "copy"}).start()
    try:
        d.send(make_report(body=REPORT + "\n"))
        copies = by_recipient(d.wait_delivered(4))
        assert REPORT in copies["ada@example.net"][0].text
    finally:
        d.stop()


def test_the_status_sheet_waits_for_onboarding(web: Daemon) -> None:
    """A member added to the file gets onboarding mail; until they answer it the status
    sheet (page and downloads) is refused and no case is theirs; after /conflicts none it
    opens."""
    code = open_case(web)
    web.members.append({"name": "Hal Newcomer", "email": "hal@example.net"})
    web.write()
    web.cli("reload")
    onboarding = wait_for(lambda: next((c for c in web.delivered()
                                        if c.to == "hal@example.net"), None), 20, "onboarding")
    hal = sign_in(web, "hal@example.net")
    for path in ("/status", "/status.csv", "/status.xlsx"):
        r = hal.get(path)
        assert r.status_code == 403 and "onboarding" in r.text, path
    assert hal.get(f"/cases/{slug(code)}").status_code == 404
    send_as(web, "hal", onboarding["Reply-To"].addresses[0].addr_spec, "/conflicts none")
    wait_for(lambda: hal.get("/status").status_code == 200, 20, "the sheet to open")
    assert code in hal.get("/status.csv").text


def test_bodies_beyond_the_form_limit_are_refused_unread(web: Daemon) -> None:
    client = httpx.Client(base_url=web_url(web), timeout=60)
    big = b"{" + b" " * (1 << 20) + b"}"
    r = client.post("/passkey/options", content=big,
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = client.post("/login", content=b"a" * (300 << 10),
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413


def test_the_stylesheet_is_served_and_the_view_goes_on(web: Daemon) -> None:
    """A static file (streamed by the server, which listens for the client's disconnect
    meanwhile) leaves the web view answering: a body replayed forever once spun its
    process."""
    client = httpx.Client(base_url=web_url(web), timeout=10)
    for _ in range(3):
        r = client.get("/static/style.css")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    assert client.get("/login").status_code == 200
    assert client.get("/static/nothing.css").status_code == 404


def test_check_refuses_notice_mode_without_an_operator(tmp_path: Path, sqlite_url: str) -> None:
    """Mail to postmaster@ and abuse@ goes to the operators, or with none to every member,
    whole: in notice mode that would put a report sent there in every mailbox."""
    members = [{"name": "Grace Sample", "email": "grace@example.net"}]
    d = web_daemon(tmp_path, sqlite_url)
    d.members = members
    d.write()
    result = d.cli("check", check=False)
    assert result.returncode != 0 and "needs an operator" in result.stderr


def test_a_follow_up_that_failed_to_send_can_be_sent_again(web: Daemon) -> None:
    """The one-time mark is only spent by a follow-up that went: when the database refuses
    the first post (its write lock held past the 10 s busy timeout), the same form sent
    again goes to the reporter, once."""
    import sqlite3
    import threading

    code = open_case(web)
    ada = sign_in(web, "ada@example.net")
    form = previewed_follow_up(ada, code, "After the outage.")
    db = sqlite3.connect(web.database.removeprefix("sqlite:///"), timeout=1,
                         check_same_thread=False)
    db.execute("BEGIN IMMEDIATE")  # the write lock, past the daemon's busy timeout
    release = threading.Timer(13, db.rollback)
    release.start()
    try:
        first = ada.post(f"/cases/{slug(code)}/followup", data=form, timeout=60)
    finally:
        release.join()
        db.close()
    assert first.status_code == 500
    assert not any(c.to == REPORTER and "After the outage" in c.text for c in web.delivered())
    assert ada.post(f"/cases/{slug(code)}/followup", data=form).status_code == 303
    wait_for(lambda: any(c.to == REPORTER and "After the outage" in c.text
                         for c in web.delivered()), 20, "the follow-up at the reporter")
    assert "sent already" not in ada.get(f"/cases/{slug(code)}").text
