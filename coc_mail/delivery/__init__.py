"""Mail leaving: the outbox that queues sealed copies in the caller's transaction, the
delivery worker that claims and sends them, the Maildir and the pipelined SMTP relay.

May import: ``app``, ``mail``, ``store``, ``config``, ``errors``. Never ``cases`` or ``smtp``.
"""
