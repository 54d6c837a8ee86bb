"""``python -m trioqueue`` is the ``trioqueue`` command."""

import sys

from .cli import main

sys.exit(main())
