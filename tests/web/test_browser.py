"""The web view in a real headless browser (Debian's chromium, driven by Selenium through
Debian's chromedriver; nothing is downloaded): a report in notice mode, a member signs in
with the mailed link, reads the case, adds a note and sends a follow-up after its preview;
another member recuses by mail and their open page stops working at once; no member's
Maildir holds the reporter's address or the report's text.

Set ``COC_MAIL_SCREENSHOTS=docs`` to keep the screenshots of the case page and the status
sheet in ``docs/`` (they are taken on every run)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Daemon, mailed_link, make_report, send_as, wait_for, web_url

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)")

REPORT = "BROWSER-REPORT-TEXT: at the party Jordan Roe grabbed my phone."
REPORTER = "reporter@example.com"


@pytest.fixture
def browsers() -> Iterator[list]:  # type: ignore[type-arg]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a browser
    made: list = []  # type: ignore[type-arg]

    def make() -> webdriver.Chrome:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--window-size=1100,1400", "--disable-gpu"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
        driver.implicitly_wait(10)  # a submitted form's page may still be loading
        made.append(driver)
        return driver

    yield [make]
    for driver in made:
        driver.quit()


def shows(driver, by: str, value: str, text: str) -> None:  # type: ignore[no-untyped-def]
    """Wait until the element shows ``text`` (a submitted form's page may still be loading,
    and the element found first may belong to the page it replaces)."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        WebDriverException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    def seen(d) -> bool:  # type: ignore[no-untyped-def]
        try:
            return text in d.find_element(by, value).text
        except WebDriverException as e:
            # Chromium reports an element of the page being replaced under the form's
            # navigation this way, not always as a stale element; anything else is a failure.
            if "does not belong to the document" in (e.msg or ""):
                return False
            raise

    WebDriverWait(driver, 15, ignored_exceptions=(
        StaleElementReferenceException, NoSuchElementException)).until(seen)


def sign_in(d: Daemon, driver, address: str, seen: int = 0) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    driver.get(web_url(d) + "/login")
    driver.find_element(By.NAME, "email").send_keys(address)
    driver.find_element(By.CSS_SELECTOR, "form button").click()
    shows(driver, By.TAG_NAME, "h1", "Check your mail")
    driver.get(mailed_link(d, address, seen))
    driver.find_element(By.ID, "sign-in").click()
    shows(driver, By.TAG_NAME, "h1", "Your cases")


def test_a_case_in_the_browser(web: Daemon, browsers: list, tmp_path: Path) -> None:  # type: ignore[type-arg]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    (make,) = browsers
    web.send(make_report(body=REPORT + "\n", subject="Jordan Roe at the party"))
    notice = wait_for(lambda: next((c for c in web.delivered() if c.to == "ada@example.net"),
                                   None), 20, "Ada's notice")
    code = re.match(r"\[([a-z]+ [a-z]+)\]", str(notice["Subject"])).group(1)  # type: ignore[union-attr]

    ada = make()
    sign_in(web, ada, "ada@example.net")
    ada.find_element(By.LINK_TEXT, code).click()
    shows(ada, By.ID, "code-name", code)
    assert REPORT in ada.find_element(By.ID, "report-text").text
    assert ada.find_element(By.ID, "reporter").text == REPORTER

    note = ada.find_element(By.ID, "form-note")
    Select(note.find_element(By.NAME, "section")).select_by_value("summary")
    note.find_element(By.NAME, "text").send_keys("Spoke with the reporter by phone.")
    note.find_element(By.TAG_NAME, "button").click()
    shows(ada, By.CLASS_NAME, "answer", "Added to Summary")
    shows(ada, By.ID, "section-summary", "Spoke with the reporter by phone.")

    followup = ada.find_element(By.ID, "form-followup")
    Select(followup.find_element(By.NAME, "template")).select_by_visible_text("followup")
    followup.find_element(By.NAME, "text").send_keys("Thank you.\nWe are looking into it.")
    ada.find_element(By.ID, "preview-followup").click()
    shows(ada, By.ID, "preview", "Preview (not sent)")
    assert not any(c.to == REPORTER and "looking into it" in c.text for c in web.delivered())
    ada.find_element(By.ID, "send-followup").click()
    shows(ada, By.CLASS_NAME, "answer", "Sent to the reporter")
    wait_for(lambda: any(c.to == REPORTER and "Thank you.\nWe are looking into it." in c.text
                         for c in web.delivered()), 20, "the follow-up at the reporter")
    shots = [tmp_path / "web-case.png", tmp_path / "web-status.png"]
    ada.save_screenshot(str(shots[0]))
    ada.find_element(By.LINK_TEXT, "Status sheet").click()
    shows(ada, By.CLASS_NAME, "sheet", code)
    ada.save_screenshot(str(shots[1]))
    problems = [e["message"] for e in ada.get_log("browser")
                if "Content Security Policy" in e["message"] or e["level"] == "SEVERE"]
    assert not problems, problems  # the pages work under their strict policy

    grace = make()
    sign_in(web, grace, "grace@example.net")
    grace.find_element(By.LINK_TEXT, code).click()
    shows(grace, By.ID, "report-text", REPORT)
    mine = next(c for c in web.delivered() if c.to == "grace@example.net"
                and code in str(c["Subject"]))
    send_as(web, "grace", mine["Reply-To"].addresses[0].addr_spec, "/recuse\n")

    def closed() -> bool:
        grace.refresh()
        return "Not found" in grace.find_element(By.TAG_NAME, "h1").text

    wait_for(closed, 20, "Grace's open page to stop working")
    assert REPORT not in grace.page_source
    grace.get(web_url(web) + "/")
    assert code not in grace.find_element(By.TAG_NAME, "main").text

    for copy in web.delivered():
        if copy.to.endswith("@example.net"):
            assert b"BROWSER-REPORT-TEXT" not in copy.raw, copy["Subject"]
            assert REPORTER.encode() not in copy.raw, copy["Subject"]
    keep = os.environ.get("COC_MAIL_SCREENSHOTS")
    if keep:
        for shot in shots:
            shutil.copy(shot, Path(keep) / shot.name)


def authenticator(driver) -> None:  # type: ignore[no-untyped-def]
    """A virtual platform authenticator (Chrome's WebAuthn testing API): a passkey that
    verifies its user."""
    from selenium.webdriver.common.virtual_authenticator import (
        Protocol,
        Transport,
        VirtualAuthenticatorOptions,
    )

    options = VirtualAuthenticatorOptions(
        protocol=Protocol.CTAP2, transport=Transport.INTERNAL, has_resident_key=True,
        has_user_verification=True, is_user_verified=True)
    driver.add_virtual_authenticator(options)


def localhost_web(tmp_path: Path, sqlite_url: str, **web: object) -> Daemon:
    """A web view at http://localhost:PORT (passkeys need a domain name, not 127.0.0.1)."""
    from tests.helpers import free_port, web_daemon

    port = free_port()
    return web_daemon(tmp_path, sqlite_url, web={
        "listen": f"127.0.0.1:{port}", "base_url": f"http://localhost:{port}", **web})


def test_a_passkey_is_asked_for_after_the_link(tmp_path: Path, sqlite_url: str,
                                               browsers: list) -> None:  # type: ignore[type-arg]
    """Ada adds a passkey on her account page; from then on the mailed link alone signs in
    nobody: the session waits for the passkey (every page sends it there), and the passkey
    finishes the sign-in."""
    import httpx
    from selenium.webdriver.common.by import By

    from tests.helpers import csrf_of

    d = localhost_web(tmp_path, sqlite_url).start()
    try:
        base = web_url(d).replace("127.0.0.1", "localhost")
        (make,) = browsers
        ada = make()
        authenticator(ada)
        ada.get(base + "/login")
        ada.find_element(By.NAME, "email").send_keys("ada@example.net")
        ada.find_element(By.CSS_SELECTOR, "form button").click()
        shows(ada, By.TAG_NAME, "h1", "Check your mail")
        ada.get(mailed_link(d, "ada@example.net"))
        ada.find_element(By.ID, "sign-in").click()
        shows(ada, By.TAG_NAME, "h1", "Your cases")
        ada.find_element(By.LINK_TEXT, "Account").click()
        shows(ada, By.ID, "no-passkeys", "No passkey yet")
        ada.find_element(By.ID, "passkey").click()
        shows(ada, By.CLASS_NAME, "answer", "Passkey added")
        assert ada.find_elements(By.CSS_SELECTOR, "table.passkeys tbody tr")
        ada.find_element(By.CSS_SELECTOR, "header form button").click()  # sign out
        shows(ada, By.TAG_NAME, "h1", "Sign in")

        # The link alone: every page sends the half-signed-in session to its passkey step.
        client = httpx.Client(base_url=base, timeout=30)
        page = client.get("/login")
        client.post("/login", data={"csrf": csrf_of(page.text), "email": "ada@example.net"})
        link = mailed_link(d, "ada@example.net", seen=1)
        button = client.get(link)
        r = client.post(link, data={"csrf": csrf_of(button.text)})
        assert r.status_code == 303 and r.headers["location"] == "/passkey"
        for path in ("/", "/status", "/cases/any-thing", "/account"):
            r = client.get(path)
            assert r.status_code == 303 and r.headers["location"] == "/passkey", path
        assert "script-src 'self'" in client.get("/passkey").headers["content-security-policy"]
        forged = client.post("/passkey/verify", json={"csrf": "x", "credential": {}})
        assert forged.status_code == 403

        ada.get(base + "/login")
        ada.find_element(By.NAME, "email").send_keys("ada@example.net")
        ada.find_element(By.CSS_SELECTOR, "form button").click()
        shows(ada, By.TAG_NAME, "h1", "Check your mail")
        ada.get(mailed_link(d, "ada@example.net", seen=2))
        ada.find_element(By.ID, "sign-in").click()
        shows(ada, By.TAG_NAME, "h1", "Confirm with your passkey")
        ada.find_element(By.ID, "passkey").click()
        shows(ada, By.TAG_NAME, "h1", "Your cases")
        problems = [e["message"] for e in ada.get_log("browser") if e["level"] == "SEVERE"]
        assert not problems, problems
    finally:
        d.stop()


def test_require_passkey_enrols_at_the_first_sign_in(tmp_path: Path, sqlite_url: str,
                                                     browsers: list) -> None:  # type: ignore[type-arg]
    from selenium.webdriver.common.by import By

    d = localhost_web(tmp_path, sqlite_url, require_passkey=True).start()
    try:
        base = web_url(d).replace("127.0.0.1", "localhost")
        (make,) = browsers
        grace = make()
        authenticator(grace)
        grace.get(base + "/login")
        grace.find_element(By.NAME, "email").send_keys("grace@example.net")
        grace.find_element(By.CSS_SELECTOR, "form button").click()
        shows(grace, By.TAG_NAME, "h1", "Check your mail")
        grace.get(mailed_link(d, "grace@example.net"))
        grace.find_element(By.ID, "sign-in").click()
        shows(grace, By.CLASS_NAME, "refusal", "asks every member for a passkey")
        grace.get(base + "/")  # nothing else until a passkey is added
        shows(grace, By.TAG_NAME, "h1", "Your account")
        grace.find_element(By.ID, "passkey").click()
        shows(grace, By.CLASS_NAME, "answer", "Passkey added")
        grace.get(base + "/")
        shows(grace, By.TAG_NAME, "h1", "Your cases")
    finally:
        d.stop()
