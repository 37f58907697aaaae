"""Entry point: ``python sweep/main.py --task mmvp ...`` (also as ``ray job submit -- python sweep/main.py ...``)."""

import sys

from sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
