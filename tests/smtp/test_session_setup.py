"""The intake's shortcuts around aiosmtpd's per-session work answer as aiosmtpd does."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from coc_mail.smtp.handler import BoundedSMTP, IntakeHandler

ADDRESSY = st.text(alphabet='<>@."\\ ()a-z,:;+=~' + "abcxyz09", max_size=40)


@settings(max_examples=500, deadline=None)
@given(arg=ADDRESSY, limit=st.sampled_from([0, 3, 64]))
def test_mail_and_rcpt_addresses_are_parsed_as_aiosmtpd_parses_them(arg: str, limit: int) -> None:
    """The same answer, or the same exception (the stdlib's parser raises IndexError on a
    few inputs, such as a lone quote: aiosmtpd answers those 500, and so do we)."""
    session = types.SimpleNamespace(local_part_limit=limit)

    def outcome(parse: Callable[[Any, str], object]) -> object:
        try:
            return parse(session, arg)
        except Exception as exc:  # noqa: BLE001 - compared, not handled
            return type(exc)

    assert outcome(BoundedSMTP._getaddr) == outcome(SMTP._getaddr)


def test_the_members_aiosmtpd_looks_for_are_the_same_from_the_cache() -> None:
    import inspect

    cached = vars(aiosmtpd.smtp)["inspect"]
    assert cached is not inspect  # the intake's cache is what aiosmtpd.smtp sees
    for obj in (BoundedSMTP.__new__(BoundedSMTP), IntakeHandler.__new__(IntakeHandler)):
        want = [(n, v) for n, v in inspect.getmembers(obj) if n.startswith("auth_")]
        assert cached.getmembers(obj) == want
        assert cached.getmembers(obj) == want  # and again, from the cache
    hook = BoundedSMTP.__new__(BoundedSMTP).smtp_EHLO
    assert cached.signature(hook) == inspect.signature(hook)
    assert cached.signature(hook) is cached.signature(hook)
