"""Wait until the database named by an environment variable accepts connections.

Used by the init containers in deploy/k8s (Ray head before the store migrations, MLflow before it starts):

    python /app/deploy/scripts/wait_for_db.py --url-env VARSWEEP_DATABASE_URL [--timeout 600]

Exit 0 once `SELECT 1` succeeds, 1 when the deadline passes, 2 on bad usage (variable unset or not a URL).
The URL holds the password, so it is never printed: messages name the variable, the host and the error class.
Needs only SQLAlchemy and the driver of the URL (both in the varsweep image), not the varsweep package.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _log(message: str) -> None:
    sys.stderr.write(f"wait_for_db: {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url-env",
        default="VARSWEEP_DATABASE_URL",
        help="environment variable holding the SQLAlchemy URL (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="give up after this many seconds (default: %(default)s)"
    )
    parser.add_argument(
        "--interval", type=float, default=3.0, help="seconds between attempts (default: %(default)s)"
    )
    args = parser.parse_args(argv)

    raw = os.environ.get(args.url_env, "").strip()
    if not raw:
        _log(f"{args.url_env} is not set")
        return 2

    import sqlalchemy as sa
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(raw)
    except ArgumentError:
        _log(f"{args.url_env} is not a database URL")
        return 2
    where = f"{url.get_backend_name()} at {url.host or 'local'}:{url.port or 'default port'}"

    # Short connect timeout per attempt so the overall deadline is honoured; pre-ping is pointless for one check.
    connect_args = {"connect_timeout": 5} if url.get_backend_name() == "postgresql" else {}
    engine = sa.create_engine(url, connect_args=connect_args, poolclass=sa.pool.NullPool)
    deadline = time.monotonic() + args.timeout
    attempt = 0
    try:
        while True:
            attempt += 1
            try:
                with engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
            except Exception as exc:  # noqa: BLE001 - any failure means "not yet"; only its class is shown
                if time.monotonic() + args.interval > deadline:
                    _log(
                        f"{where} ({args.url_env}) not reachable after {attempt} attempts: "
                        f"{type(exc).__name__}"
                    )
                    return 1
                if attempt == 1 or attempt % 10 == 0:
                    _log(f"waiting for {where} ({args.url_env}): {type(exc).__name__}")
                time.sleep(args.interval)
            else:
                _log(f"{where} is up ({args.url_env})")
                return 0
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
