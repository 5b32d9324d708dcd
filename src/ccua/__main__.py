"""``python -m ccua``: the command line."""

import sys

from ccua.cli import main

sys.exit(main())
