"""The members' web view (SPEC 10): case documents that never need to live in a mailbox,
served to members signed in by a one-time mailed link, with their standing checked on every
request; case commands run through the same command table as mail.

May import: ``cases``, ``delivery``, ``app``, ``mail``, ``store``, ``config``, ``errors``.
Nothing imports it but the top (``workers``, ``cli``).
"""
