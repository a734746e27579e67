"""``python -m torchship``: the same as the ``torchship`` command."""

import sys

from torchship.cli import main

sys.exit(main())
