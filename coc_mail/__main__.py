"""``python -m coc_mail``: the same as the ``coc-mail`` command."""

import sys

from .cli import main

sys.exit(main())
