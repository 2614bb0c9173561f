"""Passkeys (WebAuthn, with the ``webauthn`` package) as an optional second factor: a member
registers them on their account page; a member who has one (or everyone, with
``web.require_passkey``) must answer with it after following the mailed link.

The relying party is the host of ``web.base_url`` (a domain name: browsers refuse an IP
address as an RP ID, so passkeys need ``base_url``, e.g. ``http://localhost:8080`` to try them
locally). One challenge at a time is kept in the session's row; public keys are sealed.
"""

from __future__ import annotations

import json
import secrets
from urllib.parse import urlsplit

import webauthn
from sqlmodel import Session, select
from webauthn.helpers import bytes_to_base64url
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from coc_mail.app import App
from coc_mail.config import Member
from coc_mail.store import WebPasskey, WebSession
from coc_mail.web.auth import member_key

MAX_PASSKEYS = 10  # per member


def relying_party(app: App) -> tuple[str, str]:
    """The RP ID (host of ``web.url``) and the origin the browser reports."""
    parts = urlsplit(app.settings.web.url)
    return parts.hostname or "localhost", f"{parts.scheme}://{parts.netloc}"


def usable(app: App) -> bool:
    """Passkeys need a domain name in ``web.base_url`` (not an IP address)."""
    host = relying_party(app)[0]
    return not host.replace(".", "").isdigit() and ":" not in host


def of(app: App, session: Session, member: Member) -> list[WebPasskey]:
    tag = member_key(app, member)
    return list(session.exec(select(WebPasskey).where(WebPasskey.member_tag == tag)).all())


def needs_second_factor(app: App, session: Session, member: Member) -> bool:
    return app.settings.web.require_passkey or bool(of(app, session, member))


def _challenge(row: WebSession) -> bytes:
    challenge = secrets.token_bytes(32)
    row.challenge = bytes_to_base64url(challenge)
    return challenge


def registration_options(app: App, session: Session, row: WebSession, member: Member) -> str:
    rp_id, _ = relying_party(app)
    options = webauthn.generate_registration_options(
        rp_id=rp_id, rp_name=app.settings.committee.name, user_name=member.email,
        user_id=bytes.fromhex(member_key(app, member)), user_display_name=member.name,
        challenge=_challenge(row),
        exclude_credentials=[PublicKeyCredentialDescriptor(
            id=webauthn.base64url_to_bytes(p.credential_id)) for p in of(app, session, member)],
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.PREFERRED),
    )
    session.add(row)
    return webauthn.options_to_json(options)


def register(app: App, session: Session, row: WebSession, member: Member,
             credential: dict[str, object]) -> str:
    """Verify and keep a new passkey; an empty string, or why it was refused."""
    if not row.challenge:
        return "no registration was started: reload the page and try again"
    if len(of(app, session, member)) >= MAX_PASSKEYS:
        return f"at most {MAX_PASSKEYS} passkeys per member"
    rp_id, origin = relying_party(app)
    challenge, row.challenge = webauthn.base64url_to_bytes(row.challenge), None
    session.add(row)
    try:
        verified = webauthn.verify_registration_response(
            credential=json.dumps(credential), expected_challenge=challenge,
            expected_rp_id=rp_id, expected_origin=origin)
    except Exception as exc:  # noqa: BLE001 - the library's InvalidRegistrationResponse & co.
        return f"the passkey could not be verified ({type(exc).__name__})"
    credential_id = bytes_to_base64url(verified.credential_id)
    if session.get(WebPasskey, credential_id) is not None:
        return "this passkey is registered already"
    session.add(WebPasskey(
        credential_id=credential_id, member_tag=member_key(app, member),
        public_key=app.keys.seal(verified.credential_public_key, "web_passkeys.public_key"),
        sign_count=verified.sign_count))
    return ""


def authentication_options(app: App, session: Session, row: WebSession, member: Member) -> str:
    rp_id, _ = relying_party(app)
    options = webauthn.generate_authentication_options(
        rp_id=rp_id, challenge=_challenge(row),
        allow_credentials=[PublicKeyCredentialDescriptor(
            id=webauthn.base64url_to_bytes(p.credential_id)) for p in of(app, session, member)],
        user_verification=UserVerificationRequirement.PREFERRED)
    session.add(row)
    return webauthn.options_to_json(options)


def authenticate(app: App, session: Session, row: WebSession, member: Member,
                 credential: dict[str, object]) -> str:
    """Check the passkey's answer; on success the session is verified. An empty string, or
    why it was refused."""
    if not row.challenge:
        return "no sign-in was started: reload the page and try again"
    challenge, row.challenge = webauthn.base64url_to_bytes(row.challenge), None
    session.add(row)
    mine = {p.credential_id: p for p in of(app, session, member)}
    key = mine.get(str(credential.get("id", "")))
    if key is None:
        return "this passkey is not one of yours"
    rp_id, origin = relying_party(app)
    try:
        verified = webauthn.verify_authentication_response(
            credential=json.dumps(credential), expected_challenge=challenge,
            expected_rp_id=rp_id, expected_origin=origin,
            credential_public_key=app.keys.open(key.public_key, "web_passkeys.public_key"),
            credential_current_sign_count=key.sign_count)
    except Exception as exc:  # noqa: BLE001 - InvalidAuthenticationResponse & co.
        return f"the passkey's answer could not be verified ({type(exc).__name__})"
    key.sign_count = verified.new_sign_count
    row.verified = True
    session.add(key)
    return ""


def remove(app: App, session: Session, member: Member, credential_id: str) -> str:
    """Remove one of the member's passkeys: an empty string, or why not. Under
    ``web.require_passkey`` the last one stays; two removals at once cannot both pass that
    check (the member's rows are locked on PostgreSQL, and the count is taken after the
    delete, inside SQLite's one writer)."""
    tag = member_key(app, member)
    mine = session.exec(select(WebPasskey).where(WebPasskey.member_tag == tag)
                        .with_for_update()).all()
    key = next((k for k in mine if k.credential_id == credential_id), None)
    if key is None:
        return "no such passkey"
    session.delete(key)
    session.flush()
    left = session.exec(select(WebPasskey.credential_id).where(
        WebPasskey.member_tag == tag)).all()
    if app.settings.web.require_passkey and not left:
        session.rollback()
        return "this committee requires a passkey; add another one first"
    return ""
