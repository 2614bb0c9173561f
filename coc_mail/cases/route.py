"""What an accepted message is, decided in one place: a table from the address kind to its handler.

An accepted message is routed by the distinct addresses it was accepted for (the envelope's
RCPT TO, parsed by :mod:`coc_mail.mail.addresses`). Each row of :data:`ROUTES` takes the
addresses of its kinds, in the table's order, and each kind is handled by a module of its
own. Every target (a case, a member address, the alias) is handled once per message,
however many of its addresses lead to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from coc_mail.cases import alias, bounce, member, postmaster, report, reporter
from coc_mail.cases.unit import Unit
from coc_mail.mail.addresses import Kind, Recipient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """One kind of accepted message: the address kinds that make it, and who handles it."""

    kinds: frozenset[Kind]
    what: str
    handle: Callable[[Unit, list[Recipient]], None]
    drop_automatic: bool = False  # out-of-office replies and responders: never relayed


ROUTES: tuple[Route, ...] = (
    Route(frozenset({Kind.ALIAS, Kind.WITHOUT}),
          "a new report, or mail answering a copy that went to a reporter", alias.arrived),
    Route(frozenset({Kind.REPORTER}), "the reporter's correspondence to a case",
          reporter.arrived, drop_automatic=True),
    Route(frozenset({Kind.CASE, Kind.MEMBER}), "a member's command or thread post",
          member.arrived, drop_automatic=True),
    Route(frozenset({Kind.BOUNCE}), "a delivery status notification for one of our copies",
          bounce.arrived),
    Route(frozenset({Kind.POSTMASTER}), "mail for the operators (postmaster@, abuse@)",
          postmaster.arrived),
)


def handle(unit: Unit) -> None:
    """Route one message: every row of :data:`ROUTES` that its addresses reach, in order."""
    seen: set[tuple[Kind, str, str]] = set()
    recipients: list[Recipient] = []
    for address in unit.msg.envelope.rcpt_tos:
        r = unit.app.addresses.parse(address)
        if r is not None and (r.kind, r.value, r.token) not in seen:
            seen.add((r.kind, r.value, r.token))
            recipients.append(r)
    if any(r.kind not in (Kind.ALIAS, Kind.WITHOUT) for r in recipients):
        report.forget(unit.session)  # member mail may change the members' state
    auto = unit.msg.auto_reply()
    for route in ROUTES:
        mine = [r for r in recipients if r.kind in route.kinds]
        if not mine:
            continue
        if auto and route.drop_automatic:
            log.info("automatic reply (%s) to a %s address: dropped", auto,
                     mine[0].kind.value)
            continue
        if Kind.ALIAS not in route.kinds:  # it may read a case the alias's route opened
            unit.outbox.write_rows(unit.session)
        route.handle(unit, mine)
