"""``python -m aimo_infer``: the same as the ``aimo-infer`` command."""

import sys

from aimo_infer.cli import main

sys.exit(main())
