"""``python -m afr``: the command line of :mod:`afr.cli`."""
import sys

from afr.cli import main

if __name__ == "__main__":
    sys.exit(main())
