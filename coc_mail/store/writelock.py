"""SQLite writers take turns through a lock file, so a waiting writer starts the moment the
file is free instead of sleeping in SQLite's retry loop.

SQLite lets one connection write at a time; a second one polls, sleeping 1, 2, 5 ... up to
100 ms between tries. With the intake, the processor and several delivery processes writing
the same files, those sleeps, not the work, set the pace. Every connection coc-mail opens on
a SQLite file is a :class:`LockingConnection`: before its first write statement of a
transaction it takes an exclusive ``flock`` on ``<file>.writers`` (the kernel wakes the next
waiter at once, across processes and threads), and it lets go when the transaction commits or
rolls back. Readers never take it (WAL readers do not block writers).

A thread that already writes through one connection and starts writing through a second
one to the same file would wait for itself; that is refused at once with ``RuntimeError``.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from typing import Any

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
_holders: dict[str, int] = {}  # lock file -> thread id holding it in this process
_holders_lock = threading.Lock()


def _is_write(sql: str) -> bool:
    return sql.lstrip()[:7].upper().startswith(_WRITES)


class LockingCursor(sqlite3.Cursor):
    """A cursor that takes its connection's write turn before a write statement."""

    def execute(self, sql: str, parameters: Any = (), /) -> LockingCursor:
        if _is_write(sql):
            self.connection._take_turn()  # type: ignore[attr-defined]
        super().execute(sql, parameters)
        return self

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> LockingCursor:
        if _is_write(sql):
            self.connection._take_turn()  # type: ignore[attr-defined]
        super().executemany(sql, seq_of_parameters)
        return self


class LockingConnection(sqlite3.Connection):
    """A connection that holds ``<database>.writers`` from its first write to commit."""

    lock_path = ""  # set on the subclass :func:`connection_class` makes for one file

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fd: int | None = None
        self._held = False

    def cursor(self, factory: Any = None) -> Any:
        return super().cursor(factory or LockingCursor)

    def _take_turn(self) -> None:
        if self._held:
            return
        me = threading.get_ident()
        with _holders_lock:
            if _holders.get(self.lock_path) == me:
                raise RuntimeError(
                    f"a second write transaction on {self.lock_path} in the same thread"
                )
        if self._fd is None:
            self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # blocks without the GIL until it is our turn
        self._held = True
        with _holders_lock:
            _holders[self.lock_path] = me

    def _end_turn(self) -> None:
        if not self._held or self._fd is None:
            return
        self._held = False
        with _holders_lock:
            _holders.pop(self.lock_path, None)
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._end_turn()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._end_turn()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._end_turn()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def connection_class(database: str) -> type[LockingConnection]:
    """The connection class for one SQLite file (its lock file is ``<file>.writers``)."""
    return type("LockingConnection", (LockingConnection,), {"lock_path": database + ".writers"})
