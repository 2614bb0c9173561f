"""The web view's routes (Starlette): sign-in, the member's cases, a case page with its
command forms, downloads and the status sheet; every request asks the standing again.

Every handler is a plain function (Starlette runs it in its thread pool) that opens its own
database session. Refusals are precise: 303 to ``/login`` when signed out, 403 for a form
without its CSRF token, 404 for any case, page or download the member does not receive now
(the same answer as for a case that does not exist), 429 when sign-in is asked too often.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import anyio
import anyio.to_thread
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy import func, select
from sqlmodel import Session
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coc_mail.app import App
from coc_mail.cases import document
from coc_mail.cases import status as sheet
from coc_mail.cases.commands.followup import INTERNAL_TEMPLATES
from coc_mail.config import Member
from coc_mail.delivery.outbox import Outbox
from coc_mail.store import Case
from coc_mail.web import access, actions, auth, passkeys, view

log = logging.getLogger(__name__)

SESSION_COOKIE = "coc_session"  # under https: "__Host-coc_session" (no other host may set it)
PRE_COOKIE = "coc_pre"  # before sign-in: what the sign-in forms' CSRF tokens are tied to
STATIC = Path(__file__).parent / "static"
HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
     b"frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cache-control", b"no-store"),  # case documents never stay in a browser's cache
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
SCRIPT_CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; "
              "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SHOWN = 100  # cases on the case list and rows on the status page (downloads hold them all)
MAX_FORM = 256 << 10  # bytes of one form (a follow-up's or note's text fits many times)
SHEET_SECONDS = 1.0  # the status sheet's table is rendered at most this often for everyone
MARKS = 10_000  # follow-up forms' one-time marks remembered (the oldest go first)
WRITERS = 4  # threads at once for posted forms and mailed links (they may wait to write)


class SecurityHeaders:
    """Adds the headers above to every response, refusals included."""

    def __init__(self, app: ASGIApp, secure: bool) -> None:
        self.app = app
        self.extra = [*HEADERS, *([(b"strict-transport-security", b"max-age=31536000")]
                                  if secure else [])]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in self.extra if k not in names]
            await send(message)

        await self.app(scope, receive, with_headers)


BODY = "coc_mail.body"  # the scope key of a request's buffered body


class BodyLimit:
    """Reads every request's body before the app sees it, at most ``limit`` bytes (``413``
    beyond, whatever Content-Length says or chunked transfer hides), into the scope: the
    handlers then parse it without awaiting, so they can all run in the thread pool and a
    database wait never holds the event loop."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length", b"0")
        chunks, size, more = [], 0, declared.isdigit() and int(declared) <= self.limit
        if not more:
            await _too_big(send)
            return
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _too_big(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        scope[BODY] = b"".join(chunks)
        given = False

        async def replay() -> Message:
            """The body once, then the client's own messages (its disconnect)."""
            nonlocal given
            if given:
                return await receive()
            given = True
            return {"type": "http.request", "body": scope[BODY], "more_body": False}

        await self.app(scope, replay, send)


async def _too_big(send: Send) -> None:
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "http.response.body", "body": b"Request too large.\n"})


def _body(request: Request) -> bytes:
    return bytes(request.scope.get(BODY, b""))


class Web:
    """The web view of one daemon: its routes, templates, rate limits and flash answers."""

    def __init__(self, app: App, on_queued: Callable[[], None] = lambda: None) -> None:
        self.app = app
        self.on_queued = on_queued
        self.env = Environment(loader=PackageLoader("coc_mail.web", "templates"),
                               autoescape=select_autoescape(["html"], default=True),
                               auto_reload=False)  # packaged templates: read once
        self.by_ip = auth.RateLimit(10, 600)  # sign-in requests per client address
        self.by_address = auth.RateLimit(3, 900)  # links mailed per address
        self.links_in_use = auth.RateLimit(30, 600)  # link pages per client address
        self.flash: dict[str, list[str]] = {}  # session hash -> answers to show once
        self.lock = threading.Lock()
        self.issued: dict[str, float] = {}  # follow-up forms' one-time marks given out
        self.sent: set[str] = set()  # ... and those of them sent
        self._sheet: tuple[float, Markup] | None = None  # (rendered at, the sheet's table)
        self._sheet_generation = 0  # moved on by each command: a table read before is stale
        self._writers: anyio.CapacityLimiter | None = None  # made in the event loop

    def writing(self, handler: Callable[[Request], Response]
                ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` run in a thread of its own pool of :data:`WRITERS`: a write waits for
        SQLite's write turn (the processor's batch may hold it for seconds), and waiting
        writers must not take every thread the pages share."""
        async def endpoint(request: Request) -> Response:
            response: Response = await self.in_writer(handler, request)
            return response
        return endpoint

    async def in_writer(self, func: Callable[..., Any], *args: Any) -> Any:
        if self._writers is None:
            self._writers = anyio.CapacityLimiter(WRITERS)
        return await anyio.to_thread.run_sync(func, *args, limiter=self._writers)

    # -- plumbing -------------------------------------------------------------------------
    @property
    def secure(self) -> bool:
        return self.app.settings.web.secure

    @property
    def cookie(self) -> str:
        """The session cookie's name: with the ``__Host-`` prefix under https, so a page of a
        sibling subdomain can neither set nor shadow it."""
        return f"__Host-{SESSION_COOKIE}" if self.secure else SESSION_COOKIE

    def page(self, template: str, request: Request, status: int = 200,
             **context: Any) -> Response:
        html = self.env.get_template(template).render(
            committee=self.app.settings.committee.name, request=request, **context)
        return HTMLResponse(html, status)

    def not_found(self, request: Request, member: Member | None = None) -> Response:
        return self.page("not_found.html", request, 404, member=member,
                         csrf=self._csrf(request))

    def _cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/", httponly=True,
                            samesite="strict", secure=self.secure)

    def _csrf(self, request: Request) -> str:
        cookie = request.cookies.get(self.cookie, "")
        return auth.csrf_token(self.app, cookie) if cookie else ""

    def member(self, request: Request) -> Member | None:
        """The fully signed-in member (link, and passkey where one is asked for)."""
        token = request.cookies.get(self.cookie, "")
        if not token:
            return None
        with Session(self.app.engine) as session:
            member = auth.session_member(self.app, session, token)
            if (member is not None and self.app.settings.web.require_passkey
                    and not passkeys.of(self.app, session, member)):
                return None  # required since this session began: enrol first
            return member

    def form(self, request: Request, cookie: str | None = None) -> dict[str, str] | None:
        """The posted form (``application/x-www-form-urlencoded``: ours have no files) when
        its CSRF token belongs to ``cookie``'s value (the session cookie unless named), or
        None."""
        if not request.headers.get("content-type", "").startswith(
                "application/x-www-form-urlencoded"):
            return None
        try:
            fields = dict(parse_qsl(_body(request).decode("utf-8"), keep_blank_values=True,
                                    max_num_fields=50))
        except (UnicodeDecodeError, ValueError):
            return None
        tied = request.cookies.get(cookie or self.cookie, "")
        return fields if auth.csrf_ok(self.app, tied, fields.get("csrf", "")) else None

    def csrf_refused(self, request: Request) -> Response:
        return self.page("refused.html", request, 403, member=None, csrf="",
                         why="This form has expired or did not come from this site. Go back, "
                             "reload the page and send it again.")

    # -- sign-in --------------------------------------------------------------------------
    def _pre(self, request: Request) -> tuple[str, bool]:
        pre = request.cookies.get(PRE_COOKIE, "")
        return (pre, False) if pre else (secrets.token_urlsafe(24), True)

    def _with_pre(self, response: Response, pre: str, new: bool) -> Response:
        if new:
            self._cookie(response, PRE_COOKIE, pre, 3600)
        return response

    def login_form(self, request: Request) -> Response:
        pre, new = self._pre(request)
        return self._with_pre(self.page("login.html", request, csrf=auth.csrf_token(
            self.app, pre), member=None), pre, new)

    def login(self, request: Request) -> Response:
        fields = self.form(request, PRE_COOKIE)
        if fields is None:
            return self.csrf_refused(request)
        ip = auth.client_key(request.client.host if request.client else "?")
        address = parseaddr(fields.get("email", "")[:320])[1].strip().lower()
        if not self.by_ip.allow(ip):
            return self.page("refused.html", request, 429, member=None, csrf="",
                             why="Too many sign-in requests. Wait a few minutes and try again.")
        member = self.app.settings.member_by_email(address) if address else None
        if member is not None and not self.by_address.allow(address):
            # The same answer as ever (a 429 here would tell anyone that this address is
            # asked for), and no more mail to it for a while.
            log.warning("web: sign-in links for one member asked too often; none mailed")
            member = None
        # The answer is the same, and as fast, for a member and for anyone else: the link
        # is queued after the response has gone.
        response = self.page("login_sent.html", request, member=None, csrf="")
        if member is not None:
            response.background = BackgroundTask(self.in_writer, self._send_link, member)
        return response

    def _send_link(self, member: Member) -> None:
        app = self.app
        with Session(app.engine) as session:
            auth.sweep(session)
            token = auth.new_link(app, session, member)
            outbox = Outbox(app, session)
            minutes = int(app.settings.web.link_minutes)
            outbox.to_member(
                member, None, "Your sign-in link",
                f"Someone (we hope you) asked to sign in to the web view of the "
                f"{app.settings.committee.name}.\n\nSign in within {minutes} minutes, "
                f"once:\n\n  {app.settings.web.url}/login/{token}\n\n"
                "If you did not ask for it, ignore this message: nobody can use the link "
                "without your mailbox.\n")
            outbox.write(session)
            session.commit()
        log.info("web: a sign-in link was mailed")
        self.on_queued()

    def link_page(self, request: Request) -> Response:
        token = request.path_params["token"]
        ip = auth.client_key(request.client.host if request.client else "?")
        if not self.links_in_use.allow(ip):
            return self.page("refused.html", request, 429, member=None, csrf="",
                             why="Too many sign-in attempts. Wait a few minutes.")
        with Session(self.app.engine) as session:
            member = auth.link_member(self.app, session, token)
        if member is None:
            return self.page("refused.html", request, 404, member=None, csrf="",
                             why="This sign-in link is not valid: it was used already, it "
                                 "expired, or it is not complete. Ask for a new one.")
        pre, new = self._pre(request)
        return self._with_pre(self.page("link.html", request, member=None, csrf=auth.csrf_token(
            self.app, pre), name=member.name, token=token), pre, new)

    def use_link(self, request: Request) -> Response:
        fields = self.form(request, PRE_COOKIE)
        if fields is None:
            return self.csrf_refused(request)
        second = False
        with Session(self.app.engine) as session:
            member = auth.use_link(self.app, session, request.path_params["token"])
            if member is not None:
                second = passkeys.needs_second_factor(self.app, session, member)
            token = auth.new_session(self.app, session, member,
                                     verified=not second) if member else ""
            session.commit()
        if member is None:
            return self.page("refused.html", request, 404, member=None, csrf="",
                             why="This sign-in link is not valid: it was used already, it "
                                 "expired, or it is not complete. Ask for a new one.")
        log.info("web: a member signed in%s", " (passkey next)" if second else "")
        response = RedirectResponse("/passkey" if second else "/", 303)
        self._cookie(response, self.cookie, token,
                     int(self.app.settings.web.session_hours * 3600))
        response.delete_cookie(PRE_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    def logout(self, request: Request) -> Response:
        fields = self.form(request)
        if fields is None:
            return self.csrf_refused(request)
        with Session(self.app.engine) as session:
            auth.end_session(session, request.cookies.get(self.cookie, ""))
            session.commit()
        response = RedirectResponse("/login", 303)
        response.delete_cookie(self.cookie, path="/")
        return response

    # -- pages ----------------------------------------------------------------------------
    def _signed_out(self, request: Request) -> Response:
        """Where a request without a full session goes: its passkey step when the link was
        followed already, else the sign-in page."""
        found = self._half(request)
        return RedirectResponse("/passkey" if found is not None else "/login", 303)

    # -- passkeys -------------------------------------------------------------------------
    def _half(self, request: Request) -> tuple[Any, Member] | None:
        """A session that may be waiting for its passkey (None: signed out)."""
        with Session(self.app.engine) as session:
            return auth.session_of(self.app, session, request.cookies.get(self.cookie, ""))

    def _json(self, request: Request) -> dict[str, Any] | None:
        """A posted JSON object whose ``csrf`` is right, or None."""
        body = _body(request)
        if not request.headers.get("content-type", "").startswith("application/json"):
            return None
        try:
            data = json.loads(body)
        except ValueError:
            return None
        cookie = request.cookies.get(self.cookie, "")
        if not isinstance(data, dict) or not auth.csrf_ok(self.app, cookie,
                                                          str(data.get("csrf", ""))):
            return None
        return data

    def _script_page(self, template: str, request: Request, **context: Any) -> Response:
        response = self.page(template, request, **context)
        response.headers["content-security-policy"] = SCRIPT_CSP
        return response

    def passkey_page(self, request: Request) -> Response:
        found = self._half(request)
        if found is None:
            return self._signed_out(request)
        row, member = found
        if row.verified:
            return RedirectResponse("/", 303)
        with Session(self.app.engine) as session:
            keys = passkeys.of(self.app, session, member)
        if not keys:  # web.require_passkey and none registered yet: register one first
            return RedirectResponse("/account", 303)
        return self._script_page("passkey.html", request, member=None, name=member.name,
                                 csrf=self._csrf(request))

    def passkey_options(self, request: Request) -> Response:
        data = self._json(request)
        found = self._half(request)
        if data is None or found is None:
            return JSONResponse({"error": "sign in again"}, 403)
        with Session(self.app.engine) as session:
            row, member = auth.session_of(self.app, session, request.cookies[self.cookie]) \
                or found
            options = passkeys.authentication_options(self.app, session, row, member)
            session.commit()
        return Response(options, media_type="application/json")

    def passkey_verify(self, request: Request) -> Response:
        data = self._json(request)
        if data is None or not isinstance(data.get("credential"), dict):
            return JSONResponse({"error": "sign in again"}, 403)
        with Session(self.app.engine) as session:
            found = auth.session_of(self.app, session, request.cookies.get(self.cookie, ""))
            if found is None:
                return JSONResponse({"error": "sign in again"}, 403)
            row, member = found
            why = passkeys.authenticate(self.app, session, row, member, data["credential"])
            session.commit()
        if why:
            log.warning("web: a passkey answer was refused")
            return JSONResponse({"error": why}, 400)
        log.info("web: a member confirmed with a passkey")
        return self._new_session_cookie(request, JSONResponse({"ok": True}))

    def _new_session_cookie(self, request: Request, response: Response) -> Response:
        """A session that just became fully signed in gets a new cookie (the half-signed-in
        one it had is ended): a cookie seen before the second factor is worth nothing."""
        old = request.cookies.get(self.cookie, "")
        with Session(self.app.engine) as session:
            found = auth.session_of(self.app, session, old)
            if found is None:
                return response
            auth.end_session(session, old)
            token = auth.new_session(self.app, session, found[1])
            session.commit()
        self._cookie(response, self.cookie, token, int(self.app.settings.web.session_hours * 3600))
        self._move_flash(old, token)
        return response

    def _account_session(self, request: Request) -> tuple[Any, Member, bool] | None:
        """The session allowed on the account page, and whether it is there to enrol (a
        committee that requires passkeys, a member who has none yet)."""
        found = self._half(request)
        if found is None:
            return None
        row, member = found
        if row.verified:
            return row, member, False
        with Session(self.app.engine) as session:
            none_yet = not passkeys.of(self.app, session, member)
        if self.app.settings.web.require_passkey and none_yet:
            return row, member, True
        return None

    def account(self, request: Request) -> Response:
        found = self._account_session(request)
        if found is None:
            return self._signed_out(request)
        _, member, enrol = found
        with Session(self.app.engine) as session:
            keys = passkeys.of(self.app, session, member)
        return self._script_page(
            "account.html", request, member=None if enrol else member, name=member.name,
            email=member.email, csrf=self._csrf(request), passkeys=keys, enrol=enrol,
            usable=passkeys.usable(self.app), flash=self._take_flash(request))

    def passkey_register_options(self, request: Request) -> Response:
        data = self._json(request)
        found = self._account_session(request)
        if data is None or found is None or not passkeys.usable(self.app):
            return JSONResponse({"error": "sign in again"}, 403)
        with Session(self.app.engine) as session:
            again = auth.session_of(self.app, session, request.cookies[self.cookie])
            if again is None:
                return JSONResponse({"error": "sign in again"}, 403)
            options = passkeys.registration_options(self.app, session, *again)
            session.commit()
        return Response(options, media_type="application/json")

    def passkey_register(self, request: Request) -> Response:
        data = self._json(request)
        found = self._account_session(request)
        if data is None or found is None or not isinstance(data.get("credential"), dict):
            return JSONResponse({"error": "sign in again"}, 403)
        with Session(self.app.engine) as session:
            again = auth.session_of(self.app, session, request.cookies[self.cookie])
            if again is None:
                return JSONResponse({"error": "sign in again"}, 403)
            row, member = again
            why = passkeys.register(self.app, session, row, member, data["credential"])
            session.commit()
        if why:
            return JSONResponse({"error": why}, 400)
        log.info("web: a member added a passkey")
        self._put_flash(request, ["Passkey added: it is asked for at every sign-in."])
        response = JSONResponse({"ok": True})
        if found[2]:  # enrolled: signed in with the link and the new passkey
            return self._new_session_cookie(request, response)
        return response

    def passkey_remove(self, request: Request) -> Response:
        member = self.member(request)
        if member is None:
            return self._signed_out(request)
        fields = self.form(request)
        if fields is None:
            return self.csrf_refused(request)
        with Session(self.app.engine) as session:
            why = passkeys.remove(self.app, session, member, fields.get("id", ""))
            if not why:
                session.commit()
        self._put_flash(request, [f"Not removed: {why}." if why else "Passkey removed."])
        return RedirectResponse("/account", 303)

    def _move_flash(self, old: str, new: str) -> None:
        with self.lock:
            waiting = self.flash.pop(auth._hash(old), [])
            if waiting:
                self.flash[auth._hash(new)] = waiting

    def _take_flash(self, request: Request) -> list[str]:
        key = auth._hash(request.cookies.get(self.cookie, ""))
        with self.lock:
            return self.flash.pop(key, [])

    def _put_flash(self, request: Request, answers: list[str]) -> None:
        key = auth._hash(request.cookies.get(self.cookie, ""))
        with self.lock:
            if len(self.flash) > 1000:
                self.flash.clear()
            self.flash.setdefault(key, []).extend(answers)

    def home(self, request: Request) -> Response:
        member = self.member(request)
        if member is None:
            return self._signed_out(request)
        with Session(self.app.engine) as session:
            rows = access.cases_of(self.app, session, member, SHOWN + 1)
            onboarded = access.onboarded(self.app, session, member)
        more = len(rows) > SHOWN
        rows = rows[:SHOWN]
        return self.page("cases.html", request, member=member, csrf=self._csrf(request),
                         cases=rows, more=more, onboarded=onboarded,
                         flash=self._take_flash(request))

    def case_page(self, request: Request) -> Response:
        member = self.member(request)
        if member is None:
            return self._signed_out(request)
        with Session(self.app.engine) as session:
            case = access.case_of(self.app, session, member, request.path_params["code"])
            if case is None:
                return self.not_found(request, member)
            shown = view.case_view(self.app, session, case)
        return self.page("case.html", request, member=member, csrf=self._csrf(request),
                         v=shown, slug=case.code_name.replace(" ", "-"),
                         sections=document.SECTIONS, templates=self._templates(),
                         flash=self._take_flash(request))

    def _templates(self) -> list[str]:
        return [n for n in self.app.templates.names() if n not in INTERNAL_TEMPLATES]

    def download(self, request: Request) -> Response:
        member = self.member(request)
        if member is None:
            return self._signed_out(request)
        with Session(self.app.engine) as session:
            case = access.case_of(self.app, session, member, request.path_params["code"])
            found = view.attachment(self.app, case, request.path_params["index"]) if case else None
        if found is None:
            return self.not_found(request, member)
        name, data = found
        safe = "".join(c for c in name if c.isprintable() and c not in '"\\/;') or "attachment"
        return Response(data, media_type="application/octet-stream", headers={
            "content-disposition": f"attachment; filename*=UTF-8''{quote(safe)}"})

    def command(self, request: Request) -> Response:
        member = self.member(request)
        if member is None:
            return self._signed_out(request)
        fields = self.form(request)
        if fields is None:
            return self.csrf_refused(request)
        name = request.path_params["command"]
        code = request.path_params["code"]
        with Session(self.app.engine) as session:
            case = access.case_of(self.app, session, member, code)
            code_name = case.code_name if case else ""
        if case is None or name not in actions.WEB_COMMANDS:
            return self.not_found(request, member)
        if name == "followup" and not self._first_send(fields.get("once", "")):
            self._put_flash(request, ["This follow-up was sent already (the form was sent "
                                      "twice): it went to the reporter once."])
            return RedirectResponse(f"/cases/{code_name.replace(' ', '-')}", 303)
        try:
            outcome = actions.run(self.app, member, code_name, name, fields, self.on_queued)
        except BaseException:
            with self.lock:  # nothing was sent: the same form may be sent again
                self.sent.discard(fields.get("once", ""))
            raise
        with self.lock:
            self._sheet = None  # the command may have changed the sheet: render it anew
            self._sheet_generation += 1
        if name == "preview":
            return self._preview(request, member, code_name, fields, outcome.answers)
        self._put_flash(request, outcome.answers)
        with Session(self.app.engine) as session:
            still = access.case_of(self.app, session, member, code_name) is not None
        slug = code_name.replace(" ", "-")
        return RedirectResponse(f"/cases/{slug}" if still else "/", 303)

    def _first_send(self, once: str) -> bool:
        """Whether the preview page's one-time mark ``once`` comes for the first time: a
        follow-up form sent twice (a double click, a reload that posts again) is sent once.
        Only marks this process gave out count (made-up ones cannot crowd real ones out);
        a form without one (none before this release) goes as it is."""
        with self.lock:
            if once not in self.issued:
                return True
            if once in self.sent:
                return False
            self.sent.add(once)
        return True

    def _issue_mark(self) -> str:
        mark = secrets.token_urlsafe(16)
        with self.lock:
            self.issued[mark] = time.monotonic()
            while len(self.issued) > MARKS:  # the oldest first (dicts keep their order)
                old = next(iter(self.issued))
                del self.issued[old]
                self.sent.discard(old)
        return mark

    def _preview(self, request: Request, member: Member, code_name: str,
                 fields: dict[str, str], answers: list[str]) -> Response:
        with Session(self.app.engine) as session:
            case = access.case_of(self.app, session, member, code_name)
            if case is None:
                return self.not_found(request, member)
            shown = view.case_view(self.app, session, case)
        return self.page("case.html", request, member=member, csrf=self._csrf(request),
                         v=shown, slug=code_name.replace(" ", "-"), sections=document.SECTIONS,
                         templates=self._templates(), flash=[], preview=answers,
                         draft={"template": fields.get("template", ""),
                                "text": fields.get("text", "")},
                         once=self._issue_mark())

    def status_page(self, request: Request) -> Response:
        member = self.member(request)
        if member is None:
            return self._signed_out(request)
        fmt = request.path_params.get("fmt", "")
        with Session(self.app.engine) as session:
            if not access.onboarded(self.app, session, member):
                return self.page("refused.html", request, 403, member=member,
                                 csrf=self._csrf(request),
                                 why="Answer your onboarding mail first (/conflicts ...): "
                                     "the status sheet is for onboarded members.")
            if fmt in ("csv", "xlsx"):
                table = [sheet.row_of(c) for c in sheet.cases(self.app, session)]
                media = {"csv": "text/csv; charset=utf-8", "xlsx": "application/vnd."
                         "openxmlformats-officedocument.spreadsheetml.sheet"}[fmt]
                return Response(sheet.render(table, fmt), media_type=media, headers={
                    "content-disposition": f'attachment; filename="status.{fmt}"'})
        if fmt:
            return self.not_found(request, member)
        return self.page("status.html", request, member=member, csrf=self._csrf(request),
                         sheet=self._sheet_table())

    def _sheet_table(self) -> Markup:
        """The status sheet's newest :data:`SHOWN` rows and its warnings, rendered at most
        once every :data:`SHEET_SECONDS` for every member who reads it: the sheet is the
        same for all onboarded members (who may read it is asked on every request), and
        rendering its hundred rows was half the web view's CPU with 50 members reading.
        A command run from the page renders it anew."""
        now = time.monotonic()
        with self.lock:
            if self._sheet is not None and now - self._sheet[0] < SHEET_SECONDS:
                return self._sheet[1]
            generation = self._sheet_generation
        with Session(self.app.engine) as session:
            chosen = sheet.cases(self.app, session, newest=SHOWN)
            total = session.execute(select(func.count()).select_from(Case)).scalar_one()
            warnings = sheet.warnings(self.app, session, chosen)
        html = Markup(self.env.get_template("status_table.html").render(  # noqa: S704 - autoescaped
            columns=sheet.COLUMNS, rows=[sheet.row_of(c) for c in chosen], total=total,
            warnings=warnings))
        with self.lock:
            if generation == self._sheet_generation:  # no command came while it was read
                self._sheet = (now, html)
        return html

    def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ("style.css", "passkey.js"):
            return Response("", 404)
        return FileResponse(STATIC / name, media_type="text/css" if name.endswith(".css")
                            else "text/javascript",
                            headers={"cache-control": "max-age=3600"})

    def asgi(self) -> ASGIApp:
        routes = [
            Route("/", self.home),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.writing(self.login), methods=["POST"]),
            Route("/login/{token}", self.link_page, methods=["GET"]),
            Route("/login/{token}", self.writing(self.use_link), methods=["POST"]),
            Route("/logout", self.writing(self.logout), methods=["POST"]),
            Route("/cases/{code}", self.case_page),
            Route("/cases/{code}/files/{index:int}", self.download),
            Route("/cases/{code}/{command}", self.writing(self.command), methods=["POST"]),
            Route("/passkey", self.passkey_page, methods=["GET"]),
            Route("/passkey/options", self.writing(self.passkey_options), methods=["POST"]),
            Route("/passkey/verify", self.writing(self.passkey_verify), methods=["POST"]),
            Route("/account", self.account, methods=["GET"]),
            Route("/account/passkeys/options", self.writing(self.passkey_register_options),
                  methods=["POST"]),
            Route("/account/passkeys", self.writing(self.passkey_register), methods=["POST"]),
            Route("/account/passkeys/remove", self.writing(self.passkey_remove), methods=["POST"]),
            Route("/status", self.status_page),
            Route("/status.{fmt}", self.status_page),
            Route("/static/{name}", self.static),
            Route("/favicon.ico", lambda request: Response(status_code=204)),
        ]
        return SecurityHeaders(BodyLimit(Starlette(routes=routes), MAX_FORM),
                               self.app.settings.web.secure)
