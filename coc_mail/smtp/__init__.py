"""The SMTP edge: RCPT verdicts, the aiosmtpd handler, client limits, and the spool that
commits accepted mail durably (group commit) before ``250``.

May import: ``mail``, ``store``, ``config``, ``errors``. Never ``cases`` or ``delivery``:
intake gives verdicts and commits; the slow work happens after ``250``, elsewhere.
"""
