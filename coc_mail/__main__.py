"""``python -m coc_mail``: the same as the ``coc-mail`` command."""

import sys

from coc_mail.cli import main

sys.exit(main())
