"""Con-RWKV's one entry point: `python train.py --task lm|asr --op train|eval|predict|merge ...`.

The commands, their flags and --dry_run are in src/conrwkv/cli.py (`python -m conrwkv` is the
same); `python train.py --task asr --op eval --help` lists what a command reads.
"""

import sys

from conrwkv.cli import main

if __name__ == "__main__":
    sys.exit(main())
