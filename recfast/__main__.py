"""``python -m recfast`` is the ``recfast`` command."""

import sys

from .cli import main

sys.exit(main())
