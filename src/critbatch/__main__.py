"""`python -m critbatch`: the same command line as the `critbatch` script."""

import sys

from critbatch.cli import main

if __name__ == "__main__":
    sys.exit(main())
