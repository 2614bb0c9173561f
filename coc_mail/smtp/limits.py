"""Per-client limits at the SMTP edge: connections per address, session length, and a penalty
box for clients that try many unknown addresses (token guessing). The MTAs in front of
coc-mail (``intake.trusted_relays``) are exempt, as Postfix exempts
``smtpd_client_event_limit_exceptions``: they carry everyone's mail, and limiting them would
limit everyone."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field


def _nobody(ip: str) -> bool:
    return False


@dataclass
class Limits:
    """Counters shared by every SMTP session of one daemon (the asyncio loop is single-threaded)."""

    max_per_ip: int
    unknown_per_window: int
    trusted: Callable[[str], bool] = _nobody  # exempt client addresses
    window_seconds: float = 600.0
    per_ip: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    misses: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))

    def open(self, ip: str) -> bool:
        """Count a new connection from ``ip``; False when it has too many already."""
        if self.per_ip[ip] >= self.max_per_ip and not self.trusted(ip):
            return False
        self.per_ip[ip] += 1
        return True

    def close(self, ip: str) -> None:
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]

    def _recent(self, ip: str, now: float) -> deque[float]:
        q = self.misses[ip]
        while q and now - q[0] > self.window_seconds:
            q.popleft()
        if not q:
            del self.misses[ip]
            q = self.misses[ip]
        return q

    def penalised(self, ip: str) -> bool:
        """Has ``ip`` tried too many unknown addresses lately?"""
        if ip not in self.misses or self.trusted(ip):
            return False
        return len(self._recent(ip, time.monotonic())) >= self.unknown_per_window

    def miss(self, ip: str) -> None:
        """Record one refused unknown address from ``ip`` (never for a trusted relay)."""
        if self.trusted(ip):
            return
        now = time.monotonic()
        self._recent(ip, now).append(now)
