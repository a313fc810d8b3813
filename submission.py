#!/usr/bin/env python3
"""Kaggle entry point: serve AIMO's inference server in a rerun, else run a gateway locally.

Run ``python submission.py --help``; the logic lives in ``aimo_infer/kaggle/serve.py``.
"""

import sys

from aimo_infer.kaggle.serve import main

if __name__ == "__main__":
    sys.exit(main())
