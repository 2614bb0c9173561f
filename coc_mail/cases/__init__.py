"""Cases: what an accepted message means (routing), the case and member standings, the
conflict rules, members' commands, the case document, audit, status sheet and reminders.

May import: ``delivery`` (the outbox), ``app``, ``mail``, ``store``, ``config``, ``errors``.
Never ``smtp``: a case changes only from a committed message, never during a session.
"""
