"""``python -m sweep.store upgrade``: migrate the store at VARSWEEP_DATABASE_URL to the newest schema."""

from __future__ import annotations

import argparse
import sys

from sweep.settings import Settings, redact_url
from sweep.store import StoreError, upgrade


def main(argv: list[str] | None = None, *, prog: str = "python -m sweep.store") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("command", choices=["upgrade"])
    parser.add_argument(
        "--url", help="database URL (default: VARSWEEP_DATABASE_URL, else sqlite:///varsweep.db)"
    )
    args = parser.parse_args(argv)
    url = args.url or Settings().database_url
    try:
        revision = upgrade(url)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"store at {redact_url(url)} is at revision {revision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
