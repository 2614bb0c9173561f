"""Members' commands (SPEC 4.2-4.7): one table of commands, each registered once beside its code.

A command is a function in one of the modules below, registered with
:func:`~coc_mail.cases.commands.table.case_command` or
:func:`~coc_mail.cases.commands.table.general_command` together with its usage line and help
text. Importing this package imports every command module, in the order of ``/help``, and so
fills :data:`TABLE`; ``/help``, the parser and the dispatch (and any form for a command) read
that table. Adding a command touches one place: its module (and the import below if it is a
new one). The command modules import :mod:`.table` and :mod:`coc_mail.cases.work`, never this
package.
"""

# Importing a command module registers its commands: these lines are the order of /help.
# isort: off
from coc_mail.cases.commands import conflict_check  # noqa: F401
from coc_mail.cases.commands import followup  # noqa: F401
from coc_mail.cases.commands import note  # noqa: F401
from coc_mail.cases.commands import status  # noqa: F401
from coc_mail.cases.commands import doc  # noqa: F401
from coc_mail.cases.commands import discard  # noqa: F401
from coc_mail.cases.commands import general  # noqa: F401
# isort: on
from coc_mail.cases.commands.table import (
    TABLE,
    Command,
    Spec,
    UnknownCommand,
    case_command,
    general_command,
    help_text,
    parse,
    run,
    usage,
)

__all__ = [
    "TABLE",
    "Command",
    "Spec",
    "UnknownCommand",
    "case_command",
    "general_command",
    "help_text",
    "parse",
    "run",
    "usage",
]
