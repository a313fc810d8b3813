"""``python -m sandbox exec|close|doctor``: see sandbox/cli.py."""

import sys

from sandbox.cli import main

sys.exit(main())
