"""The leaderboard page: the best VAR settings of every (model, task, convention) in the settings store.

:func:`render_leaderboard` turns ``Store.best()`` rows into one self-contained HTML page (inline CSS, no
JavaScript, every value escaped). The command line reads the store and writes or serves that page::

    python -m dashboards.leaderboard [--database-url URL] [--mlflow-ui URL] [--out leaderboard.html]
    python -m dashboards.leaderboard --serve [--port 8000]     # http://127.0.0.1:8000/, re-read on every load

The database defaults to ``VARSWEEP_DATABASE_URL``, else ``sqlite:///varsweep.db`` (the sweep's own
default). A SQLite file that does not exist yet is shown as an empty leaderboard and is not created.
Database URLs are only ever shown with their password replaced by ``***``.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from sweep.settings import redact_url

if TYPE_CHECKING:
    from sweep.store import BestRecord, Store

__all__ = ["render_leaderboard", "mlflow_run_url", "main", "DEFAULT_DATABASE_URL"]

DEFAULT_DATABASE_URL = "sqlite:///varsweep.db"
_HOST = "127.0.0.1"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5rem; color: #1f2328; }
h1 { margin-bottom: 0.2rem; }
th.model { text-align: left; background: #ffffff; padding-top: 1.1rem; font-size: 1.05rem;
           font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
.meta, footer { color: #59636e; font-size: 0.9rem; }
table { border-collapse: collapse; font-size: 0.9rem; }
.scroll { overflow-x: auto; }
th, td { border-bottom: 1px solid #d1d9e0; padding: 0.3rem 0.45rem; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; font-weight: 600; }
th.text, td.text { text-align: left; }
td.num { font-variant-numeric: tabular-nums; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
td.better { color: #1a7f37; background: #dafbe1; font-weight: 600; }
td.worse { color: #cf222e; background: #ffebe9; font-weight: 600; }
td.same { color: #59636e; }
.empty { padding: 1.5rem; background: #f6f8fa; border: 1px dashed #d1d9e0; border-radius: 6px;
         max-width: 48rem; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
small { color: #59636e; }
"""

_COLUMNS = (
    ("task", "text", None),
    (
        "convention",
        "text",
        "paper or official (docs/method.md section 4): tau, rho and p mean different things",
    ),
    ("metric", "text", None),
    ("held-out", None, "VAR on: the best configuration on the held-out split"),
    ("VAR off", None, "the baseline (VAR off) on the same held-out split"),
    (
        "delta [95% CI]",
        None,
        "held-out minus VAR off on the same groups, with its clustered bootstrap interval; "
        "green or red only when the interval and the paired test (p < 0.05) say it is more than noise",
    ),
    ("p-value", None, "paired randomisation test of VAR on against VAR off (two-sided)"),
    ("tuning", None, "the best trial on the tuning split"),
    (
        "gap",
        None,
        "tuning minus held-out: how much the best of many trials flattered itself (winner's curse)",
    ),
    ("tau", None, "sink threshold on phi"),
    ("rho", None, "image-centric head threshold"),
    ("p", None, "attention fraction parameter of the convention"),
    ("summ", None, "minimum visual attention mass of a row"),
    ("first layer", None, None),
    ("groups", None, "groups (MMVP pairs, POPE images, ...) in the tuning / held-out splits"),
    ("updated", "text", "when the row was last written, UTC"),
    ("MLflow", "text", "the sweep's MLflow run"),
)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _decimals(*values: float) -> int:
    """4 decimals for metrics on a 0-1 scale, 2 for percentages and scores like MME's."""
    return 4 if max(abs(v) for v in values) < 10 else 2


def _metric_value(value: float | None) -> str:
    if value is None or value != value:  # None or NaN
        return "&mdash;"
    return f"{value:.{_decimals(value)}f}"


def _delta(record: BestRecord) -> tuple[str, str, str]:
    """(text, css class, tooltip) of held-out minus VAR off and its interval; coloured only beyond noise."""
    held, base = record.heldout_value, record.baseline_heldout
    if held is None or base is None or held != held or base != base:
        return "&mdash;", "same", "no value"
    places = _decimals(held, base)
    text = f"{record.delta:+.{places}f}"
    sign = {"maximize": 1, "minimize": -1}.get(record.direction)
    if sign is None:
        return _e(text), "same", f"unknown direction {record.direction!r}"
    if record.ci_low is None or record.ci_high is None or record.p_value is None:
        return _e(text), "same", "no interval: stored by an older release"
    text += f" [{record.ci_low:+.{places}f}, {record.ci_high:+.{places}f}]"
    low, high = sorted((sign * record.ci_low, sign * record.ci_high))
    if low > 0 and record.p_value < 0.05:
        return _e(text), "better", "better than VAR off, beyond noise"
    if high < 0 and record.p_value < 0.05:
        return _e(text), "worse", "worse than VAR off, beyond noise"
    return _e(text), "same", "no evidence of a difference from VAR off"


def _check_mlflow_ui(mlflow_ui: str) -> str:
    parts = urlsplit(mlflow_ui)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"mlflow_ui must be an http(s) URL such as http://127.0.0.1:5000, got {mlflow_ui!r}")
    return mlflow_ui.rstrip("/")


def mlflow_run_url(mlflow_ui: str, run_id: str) -> str:
    """The MLflow UI page of a run: ``{mlflow_ui}/#/runs/{run_id}`` (the UI finds the run's experiment)."""
    return f"{_check_mlflow_ui(mlflow_ui)}/#/runs/{quote(run_id, safe='')}"


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "&mdash;"
    if moment.tzinfo is None:  # SQLite hands back naive datetimes; the store writes UTC
        moment = moment.replace(tzinfo=UTC)
    return _e(moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M"))


def _row(record: BestRecord, mlflow_ui: str | None) -> str:
    arrow = {"maximize": "&uarr;", "minimize": "&darr;"}.get(record.direction, "?")
    better = {"maximize": "higher is better", "minimize": "lower is better"}.get(
        record.direction, record.direction
    )
    delta, delta_class, delta_tip = _delta(record)
    if mlflow_ui and record.mlflow_run_id:
        run = record.mlflow_run_id
        href = _e(mlflow_run_url(mlflow_ui, run))
        link = f'<a href="{href}" title="MLflow run {_e(run)}">{_e(run[:8])}</a>'
    else:
        link = "&mdash;"
    provenance = (
        f"study {record.study}, sweep {record.sweep_id}, commit {record.git_commit or 'unknown'}, "
        + (f"data {record.data_fingerprint}")
    )
    cells = [
        f'<td class="text" title="{_e(provenance)}">{_e(record.task)}</td>',
        f'<td class="text">{_e(record.convention)}</td>',
        f'<td class="text" title="{_e(better)}">{_e(record.metric)} {arrow}</td>',
        f'<td class="num">{_metric_value(record.heldout_value)}</td>',
        f'<td class="num">{_metric_value(record.baseline_heldout)}</td>',
        f'<td class="num {delta_class}" title="{_e(delta_tip)}">{delta}</td>',
        f'<td class="num">{"&mdash;" if record.p_value is None else _e(f"{record.p_value:.2g}")}</td>',
        f'<td class="num">{_metric_value(record.tuning_value)}</td>',
        f'<td class="num">{_e(f"{record.tuning_value - record.heldout_value:+.{_decimals(record.tuning_value)}f}")}</td>',
        f'<td class="num">{record.tau:.2f}</td>',
        f'<td class="num">{record.rho:.3f}</td>',
        f'<td class="num">{record.p:.3f}</td>',
        f'<td class="num">{record.summ:.3f}</td>',
        f'<td class="num">{int(record.first_layer)}</td>',
        f'<td class="num">{int(record.n_tuning)} / {int(record.n_heldout)}</td>',
        f'<td class="text">{_when(record.updated_at)}</td>',
        f'<td class="text">{link}</td>',
    ]
    return f'<tr data-model="{_e(record.model)}" data-task="{_e(record.task)}">' + "".join(cells) + "</tr>"


def _header() -> str:
    cells = []
    for label, css, tip in _COLUMNS:
        attributes = (f' class="{css}"' if css else "") + (f' title="{_e(tip)}"' if tip else "")
        cells.append(f"<th{attributes}>{_e(label)}</th>")
    return "<thead><tr>" + "".join(cells) + "</tr></thead>"


def render_leaderboard(
    rows: Sequence[BestRecord], *, mlflow_ui: str | None, source: str | None = None
) -> str:
    """A self-contained HTML page of the best settings, one table per model, one row per (task, convention).

    Args:
        rows: records from ``Store.best()``.
        mlflow_ui: base URL of the MLflow UI (e.g. ``http://127.0.0.1:5000``); when given, rows with an
            ``mlflow_run_id`` link to that run. None: no links.
        source: where the rows came from, shown in the header (a database URL is shown without its password).

    Raises:
        ValueError: ``mlflow_ui`` is not an http(s) URL.
    """
    if mlflow_ui is not None:
        mlflow_ui = _check_mlflow_ui(mlflow_ui)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    ordered = sorted(rows, key=lambda r: (r.model, r.task, r.convention))
    models = sorted({r.model for r in ordered})
    meta = [f"generated {generated}"]
    if source is not None:
        meta.append(f"store <code>{_e(redact_url(source))}</code>")
    if mlflow_ui is not None:
        meta.append(f'MLflow <a href="{_e(mlflow_ui)}/">{_e(mlflow_ui)}</a>')

    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        "<title>varsweep leaderboard</title>",
        f"<style>{_CSS}</style></head><body>",
        "<header><h1>varsweep leaderboard</h1>",
    ]
    if not ordered:
        parts.append(f'<p class="meta">{" &middot; ".join(meta)}</p></header>')
        parts.append(
            '<div class="empty" id="empty"><strong>No sweeps yet.</strong> Run a sweep, for example '
            "<code>python sweep/main.py --task mmvp --model tiny-llava --trials 20</code>; the best settings "
            "it confirms on the held-out split will appear here.</div>"
        )
    else:
        counts = f"{len(ordered)} best setting{'s' if len(ordered) != 1 else ''} across {len(models)} " + (
            f"model{'s' if len(models) != 1 else ''}"
        )
        parts.append(f'<p class="meta">{counts} &middot; {" &middot; ".join(meta)}</p></header>')
        parts.append(f'<div class="scroll"><table id="leaderboard">{_header()}')
        for model, records in groupby(ordered, key=lambda r: r.model):
            parts.append(
                f'<tbody class="model"><tr><th class="model" colspan="{len(_COLUMNS)}">{_e(model)}</th></tr>'
            )
            parts.extend(_row(record, mlflow_ui) for record in records)
            parts.append("</tbody>")
        parts.append("</table></div>")
        parts.append(
            "<footer><p>Held-out: the best tuning configuration re-evaluated on groups the search never saw. "
            "Delta is held-out minus the VAR-off baseline on the same groups, with its 95% clustered bootstrap "
            "interval and a paired randomisation test; it is green when the interval and p &lt; 0.05 say VAR "
            "is better in the metric's direction (&uarr; higher is better, &darr; lower is better), red when "
            "worse, grey when the data cannot tell. Gap is tuning minus held-out. tau, rho "
            "and p are in the row's convention (official rho = 1 &minus; paper rho, official p = 1 &minus; "
            "paper p). Hover a task for its study, sweep and commit.</p></footer>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------- command line


def _sqlite_file_missing(url: str) -> bool:
    """True for a SQLite URL whose file does not exist (reading it must not create it)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return False
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return False
    return not Path(database).exists()


class _Rows:
    """Reads the store on demand; opens it on first use, and never creates a missing SQLite file."""

    def __init__(self, url: str, retry_seconds: float) -> None:
        self.url = url
        self.retry_seconds = retry_seconds
        self._store: Store | None = None
        self._lock = threading.Lock()  # --serve answers requests on several threads

    def __call__(self) -> list[BestRecord]:
        with self._lock:
            if self._store is None:
                if _sqlite_file_missing(self.url):
                    return []
                from sweep.store import Store

                self._store = Store(self.url, retry_seconds=self.retry_seconds)
            store = self._store
        return store.best()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _handler(page: Callable[[], str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "varsweep-leaderboard"

        def _respond(self, *, body: bool) -> None:
            if self.path.split("?", 1)[0] not in ("/", "/index.html", "/leaderboard.html"):
                self._send(404, "text/plain; charset=utf-8", b"not found\n", body=body)
                return
            from sweep.store import StoreError

            try:
                content = page().encode("utf-8")
            except StoreError as e:
                message = f"the settings store cannot be read: {redact_url(str(e))}\n"
                self._send(503, "text/plain; charset=utf-8", message.encode("utf-8"), body=body)
                return
            self._send(200, "text/html; charset=utf-8", content, body=body)

        def _send(self, status: int, content_type: str, content: bytes, *, body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(content)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if body:
                self.wfile.write(content)

        def do_GET(self) -> None:  # http.server calls do_<METHOD>
            self._respond(body=True)

        def do_HEAD(self) -> None:
            self._respond(body=False)

    return Handler


def _parser(prog: str = "python -m dashboards.leaderboard") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Write (or serve) an HTML leaderboard of the best VAR settings in the varsweep store.",
    )
    parser.add_argument(
        "--database-url",
        help=f"the settings store (default: $VARSWEEP_DATABASE_URL, else {DEFAULT_DATABASE_URL})",
    )
    parser.add_argument("--mlflow-ui", help="MLflow UI base URL for run links, e.g. http://127.0.0.1:5000")
    parser.add_argument(
        "--out", type=Path, help="HTML file to write (default: leaderboard.html; with --serve, none)"
    )
    parser.add_argument("--serve", action="store_true", help=f"serve the page on http://{_HOST}:PORT/")
    parser.add_argument(
        "--port", type=int, default=8000, help="port for --serve (default 8000; 0: any free port)"
    )
    parser.add_argument(
        "--retry-seconds", type=float, default=10.0, help="how long to wait for an unreachable database (10)"
    )
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m dashboards.leaderboard") -> int:
    """The command line (see the module docstring); returns the exit code."""
    parser = _parser(prog)
    args = parser.parse_args(argv)
    url = args.database_url or os.environ.get("VARSWEEP_DATABASE_URL") or DEFAULT_DATABASE_URL
    if args.mlflow_ui is not None:
        try:
            _check_mlflow_ui(args.mlflow_ui)
        except ValueError as e:
            parser.error(str(e))
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in 0..65535, got {args.port}")

    from sqlalchemy.exc import ArgumentError

    from sweep.store import StoreError

    rows = _Rows(url, args.retry_seconds)

    def page() -> str:
        return render_leaderboard(rows(), mlflow_ui=args.mlflow_ui, source=url)

    try:
        out = args.out if args.out is not None else (None if args.serve else Path("leaderboard.html"))
        if out is not None:
            records = rows()
            out.write_text(
                render_leaderboard(records, mlflow_ui=args.mlflow_ui, source=url), encoding="utf-8"
            )
            sys.stderr.write(f"wrote {out}: {len(records)} best settings from {redact_url(url)}\n")
        if args.serve:
            return _serve(page, args.port)
        return 0
    except StoreError as e:
        sys.stderr.write(f"error: {redact_url(str(e))}\n")
        return 1
    except ArgumentError as e:  # not a database URL SQLAlchemy can use
        first_line = redact_url(str(e)).splitlines()[0]
        sys.stderr.write(f"error: cannot use the database URL {redact_url(url)}: {first_line}\n")
        return 1
    except OSError as e:
        sys.stderr.write(f"error: {redact_url(str(e))}\n")
        return 1
    finally:
        rows.close()


def _serve(page: Callable[[], str], port: int) -> int:
    try:
        server = ThreadingHTTPServer((_HOST, port), _handler(page))
    except OSError as e:
        sys.stderr.write(f"error: cannot listen on {_HOST}:{port}: {e.strerror or e}\n")
        return 1
    server.daemon_threads = True
    with server:
        sys.stdout.write(
            f"serving the leaderboard at http://{_HOST}:{server.server_address[1]}/ (Ctrl-C stops)\n"
        )
        sys.stdout.flush()
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
