"""`python -m conrwkv ...` runs the entry point of train.py (conrwkv/cli.py)."""

import sys

from .cli import main

sys.exit(main())
