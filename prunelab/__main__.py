"""``python -m prunelab``: the same command as ``prunelab``."""

import sys

from prunelab.cli import main

if __name__ == "__main__":
    sys.exit(main())
