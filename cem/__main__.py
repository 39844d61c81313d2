"""``python -m cem <command> ...``: the same as ``cem <command> ...`` (also for
``torchrun -m cem train ...``)."""

import sys

from cem.cli import main

if __name__ == "__main__":
    sys.exit(main())
