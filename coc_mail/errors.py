"""The exceptions coc-mail raises: one small hierarchy; third-party errors are translated."""

from __future__ import annotations

import traceback


class CocMailError(Exception):
    """Base class of every error coc-mail raises on purpose."""


class ConfigError(CocMailError):
    """The TOML configuration is missing, unreadable or invalid; the message names key and line."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: invalid configuration\n{lines}")


class StorageKeyError(CocMailError):
    """The storage key is missing, malformed, or does not open this database."""


class StoreUnavailable(CocMailError):
    """The database cannot be reached or written right now (a temporary condition)."""


class DeliveryError(CocMailError):
    """A copy could not be handed to the relay or Maildir.

    ``permanent`` tells whether retrying can help (SMTP 5xx) or not (4xx, network).
    """

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class TemplateProblem(CocMailError):
    """A Jinja template is missing, does not parse, or uses an undefined variable."""


def where(exc: BaseException) -> str:
    """Where an exception was raised (file:line of the last frame) — never its message."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"
