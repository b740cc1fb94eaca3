"""``python -m runner``: the same as the ``apisix-python-runner`` command."""

import sys

from .cli import main

sys.exit(main())
