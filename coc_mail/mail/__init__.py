"""Mail as data: the address scheme and its tokens, what a person reads of a message (MIME
decoding, quotes, redaction), the processing budget, composing what we send, and DKIM.

May import: ``store`` (tokens and tags come from the key), ``config``, ``errors``. Knows
nothing of cases, sessions or queues.
"""
