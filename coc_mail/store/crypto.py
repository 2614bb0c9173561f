"""The storage key: at-rest encryption of sensitive columns, and keyed tokens and tags."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from coc_mail.errors import StorageKeyError

ENV_KEY = "COC_MAIL_KEY"
_VERSION = b"\x01"
_PADDED = b"\x02"  # the plaintext was padded (ISO/IEC 7816-4: 0x80, then zeros) to a block
# Short values whose length alone would tell something (a standing "asked" from
# "conflicted", one member's handle from another's, an action's kind) are sealed padded to a
# multiple of this many bytes, so that their ciphertexts are all of a few lengths.
PADDED: dict[str, int] = {
    "case_members.state": 32,
    "audit_log.action": 64,
    "audit_log.actor": 64,
    "doc_entries.section": 32,
    "doc_entries.author": 64,
    "sent_copies.role": 64,
    "cases.reported": 64,
    "cases.reporter": 64,
    "cases.sheet": 64,
    "member_records.conflicts": 64,
}
BIG = 1 << 20  # a "big" value: from this size on, values are sealed, stored, sent and
#                 received in pieces or one at a time, never copied whole (one threshold)


def _derive(master: bytes, purpose: bytes) -> bytes:
    kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"coc-mail " + purpose)
    return kdf.derive(master)


class Keyring:
    """Keys derived from one 32-byte master key: encryption, address tokens, lookup tags."""

    def __init__(self, master: bytes) -> None:
        if len(master) != 32:
            raise StorageKeyError("the storage key must be 32 bytes (44 base64 characters)")
        self._key = _derive(master, b"encrypt")
        self._aead = AESGCM(self._key)
        self._token_key = _derive(master, b"token")
        self._tag_key = _derive(master, b"tag")

    # -- encryption -------------------------------------------------------------------------
    def seal(self, plain: bytes, context: str, *, padded: bool = True) -> bytes:
        """Encrypt ``plain``; ``context`` (table.column) binds the ciphertext to its place.
        Values of the contexts in :data:`PADDED` are padded first (unless ``padded`` is
        false: for a downgrade to a release that cannot read padding)."""
        block = PADDED.get(context) if padded else None
        if block:
            filled = plain + b"\x80"
            filled += b"\x00" * (-len(filled) % block)
            nonce = os.urandom(12)
            return _PADDED + nonce + self._aead.encrypt(nonce, filled, context.encode())
        if len(plain) < BIG:
            nonce = os.urandom(12)
            return _VERSION + nonce + self._aead.encrypt(nonce, plain, context.encode())
        return self.seal_parts([plain], context)

    def seal_parts(self, parts: Sequence[bytes], context: str) -> bytes:
        """:meth:`seal` of the parts joined, without ever joining them: the ciphertext is
        written straight into its one buffer (a 25 MiB report is not copied on the way)."""
        size = sum(len(p) for p in parts)
        nonce = os.urandom(12)
        encryptor = Cipher(algorithms.AES(self._key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(context.encode())
        out = bytearray(13 + size + 16 + 15)  # update_into wants a block of slack
        out[0:1], out[1:13] = _VERSION, nonce
        view, at = memoryview(out), 13
        for part in parts:
            at += encryptor.update_into(part, view[at:])
        encryptor.finalize()
        view[at:at + 16] = encryptor.tag
        view.release()
        del out[at + 16:]
        return out  # type: ignore[return-value]  # a bytearray: bytes-like wherever used

    def open(self, sealed: bytes, context: str) -> bytes:
        """Decrypt what :meth:`seal` produced; a wrong key or a moved value raises."""
        version = bytes(sealed[:1])
        if version not in (_VERSION, _PADDED):
            raise StorageKeyError(f"{context}: not a coc-mail ciphertext")
        try:
            view = memoryview(sealed)  # no copy of a big ciphertext
            plain = self._aead.decrypt(view[1:13], view[13:], context.encode())
        except InvalidTag:
            raise StorageKeyError(
                f"{context}: cannot decrypt: this is not the key the database was written with"
            ) from None
        if version == _PADDED:
            end = plain.rstrip(b"\x00")
            if not end.endswith(b"\x80"):
                raise StorageKeyError(f"{context}: bad padding")
            return end[:-1]
        return plain

    def seal_text(self, plain: str, context: str) -> bytes:
        return self.seal(plain.encode("utf-8"), context)

    def open_text(self, sealed: bytes, context: str) -> str:
        return self.open(sealed, context).decode("utf-8")

    # -- tokens and tags --------------------------------------------------------------------
    def token(self, *parts: str) -> str:
        """An address token: HMAC over the parts, 80 bits, lowercase base32 (16 characters)."""
        mac = hmac.new(self._token_key, "\x00".join(parts).encode(), hashlib.sha256).digest()
        return base64.b32encode(mac[:10]).decode().lower()

    def check_token(self, token: str, *parts: str) -> bool:
        return hmac.compare_digest(token.lower(), self.token(*parts))

    def tag(self, *parts: str) -> str:
        """A keyed lookup tag (hex): equal inputs, equal tags; nothing readable without the key."""
        mac = hmac.new(self._tag_key, "\x00".join(parts).encode(), hashlib.sha256).hexdigest()
        return mac[:32]


def generate_key() -> str:
    """A new master key as it is written to the key file."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _decode(text: str, where: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text.strip().encode())
    except ValueError:
        raise StorageKeyError(
            f"{where}: not base64; the key is 32 random bytes in urlsafe base64"
        ) from None
    if len(raw) != 32:
        raise StorageKeyError(f"{where}: must decode to 32 bytes, got {len(raw)}")
    return raw


def load_keyring(key_file: str, *, create: bool = False) -> tuple[Keyring, bool]:
    """Load the master key from ``$COC_MAIL_KEY`` or ``key_file``.

    With ``create`` a missing key file is written (mode 0600). Returns the keyring and whether
    the key was created now.
    """
    env = os.environ.get(ENV_KEY)
    if env:
        return Keyring(_decode(env, f"${ENV_KEY}")), False
    path = Path(key_file)
    if path.exists():
        try:
            text = path.read_text()
        except OSError as exc:
            raise StorageKeyError(f"storage.key_file {path}: {exc.strerror}") from None
        return Keyring(_decode(text, f"storage.key_file {path}")), False
    if not create:
        raise StorageKeyError(
            f"storage.key_file {path} does not exist and ${ENV_KEY} is not set; "
            "`coc-mail serve` creates it on first start"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(generate_key() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return load_keyring(key_file)[0], True
