"""Sealing at rest (store/crypto.py): values open only with their key and their column."""

from __future__ import annotations

import os

import pytest

from coc_mail.errors import StorageKeyError
from coc_mail.store.crypto import Keyring

KEYS = Keyring(b"k" * 32)


def test_seal_and_open() -> None:
    sealed = KEYS.seal(b"secret report", "cases.report")
    assert b"secret" not in sealed
    assert KEYS.open(sealed, "cases.report") == b"secret report"
    assert KEYS.seal(b"x", "a") != KEYS.seal(b"x", "a"), "random nonces"
    with pytest.raises(StorageKeyError):
        KEYS.open(sealed, "cases.reporter")  # moved to another column
    with pytest.raises(StorageKeyError):
        Keyring(os.urandom(32)).open(sealed, "cases.report")  # another key
    with pytest.raises(StorageKeyError):
        Keyring(b"short")
