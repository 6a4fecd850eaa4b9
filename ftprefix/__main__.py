"""`python -m ftprefix`: the `ftprefix` command, where its script is not on PATH."""

import sys

from ftprefix.cli import main

if __name__ == "__main__":
    sys.exit(main())
