"""The command line.

``varsweep`` (the console script) has subcommands: ``sweep`` (run or resume a sweep), ``best`` (the stored best
settings), ``tasks`` (the benchmarks), ``store upgrade`` (migrate the settings database) and ``leaderboard`` (the
page). ``python sweep/main.py --task T ...`` is the same as ``varsweep sweep --task T ...``, with no subcommand,
so that ``ray job submit -- python sweep/main.py --task mmvp`` works as written; ``python sweep/main.py best``
lists the stored settings.

Kept thin and light: ``--help`` and every error that needs no model import no torch, transformers, Ray or MLflow.
Errors varsweep expects (bad input, unreachable services) print one line on stderr and exit non-zero; ``--debug``
adds the traceback. Subcommands return an int; only CLIUsageError (exit 2) is caught as a usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from sweep.store import BestRecord

__all__ = ["main", "varsweep", "build_parser", "CLIUsageError"]

EPILOG = """\
environment:
  VARSWEEP_DATABASE_URL  best-settings store and Optuna study (default sqlite:///varsweep.db in this folder;
                         postgresql+psycopg://user:password@host/db in production)
  VARSWEEP_OPTUNA_URL    put the Optuna study in another database (default: VARSWEEP_DATABASE_URL)
  MLFLOW_TRACKING_URI    MLflow tracking (default sqlite:///mlruns.db in this folder; a server URL in production)
  RAY_ADDRESS            Ray cluster to join (default: start a local Ray; set by `ray job submit`)

examples:
  python sweep/main.py --task mmvp --data-dir examples/mmvp-sample --trials 12
  ray job submit --working-dir . -- python sweep/main.py --task pope --data-dir /data/pope --model llava-hf/llava-1.5-7b-hf
  python sweep/main.py best --task mmvp
"""


class CLIUsageError(Exception):
    """A command-line value is wrong (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line on stderr (no usage dump), like every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        raise CLIUsageError(f"{message} (see {self.prog} --help)")


def _dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of dimensions") from None
    if not dims or min(dims) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give non-negative dimensions, e.g. 1415,2533")
    return dims


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def build_parser(prog: str = "python sweep/main.py") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description=(
            "Tune VAR (Visual Attention Redistribution: tau, rho, p) for one model and one benchmark task. "
            "Runs an Optuna (TPE) search through Ray Tune on a pool of model workers, logs every trial to MLflow, "
            "confirms the best settings on a held-out split and keeps them in the settings database. Re-running "
            "the same command resumes the study; raising --trials extends it."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = parser.add_argument_group("the sweep")
    run.add_argument("--task", help="benchmark: mmvp, pope, cv_bench, chair, mme, vqav2, gqa, vizwiz, mmhal")
    run.add_argument(
        "--model",
        default="tiny-llava",
        help="hub id, local folder, or offline preset tiny-llava / tiny-qwen2-vl (default: tiny-llava)",
    )
    run.add_argument(
        "--trials",
        type=_positive_int,
        default=20,
        help="total trials of the study, counting the baseline and the paper's defaults (default 20)",
    )
    run.add_argument(
        "--workers", type=_positive_int, default=None, help="model workers (default: one per GPU, else 1)"
    )
    run.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where the model workers run: cuda = one GPU each (num_gpus=1), waiting up to "
        "VARSWEEP_PLACEMENT_TIMEOUT seconds for the cluster (or its autoscaler) to offer them; "
        "cpu = CPU workers; auto = cuda when the cluster has GPUs at start, else cpu "
        "(default auto)",
    )
    run.add_argument(
        "--batch",
        type=_positive_int,
        default=16,
        help="configurations evaluated together per worker call, i.e. trials run at once (default "
        "16; fewer gives TPE more feedback per proposal, more keeps the workers busier)",
    )
    run.add_argument(
        "--early-stop",
        choices=["off", "asha"],
        default="off",
        help="asha: every trial sees the tuning groups in rungs (1/8, 1/4, 1/2, all) and Ray Tune's "
        "ASHA stops those that fall behind; they count as trials, but never as the best "
        "(default off)",
    )
    run.add_argument(
        "--warm-start",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a new study first tries the stored best settings of this model on other tasks and of "
        "this task on other models (default on)",
    )
    dims = run.add_mutually_exclusive_group()
    dims.add_argument(
        "--sink-dims",
        type=_dims,
        metavar="D1,D2",
        help="the model's sink dimensions (default: the base LLM's, from var_core's table)",
    )
    dims.add_argument(
        "--discover-sink-dims",
        action="store_true",
        help="find the sink dimensions from the model's activations on a few prompts",
    )
    run.add_argument(
        "--worker-cpus",
        type=_positive_int,
        default=None,
        help="CPUs (torch threads) of each CPU worker (default: a local Ray's cores / workers; "
        "1 on a cluster)",
    )
    run.add_argument("--data-dir", help="folder that directly holds the benchmark's files")
    run.add_argument("--split", help="benchmark split or file (e.g. POPE: random, popular, adversarial)")
    run.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        help="keep the first K groups (MMVP pairs, POPE images) before splitting",
    )
    run.add_argument("--study", help="Optuna study name (default <model>:<task>:<convention>)")
    run.add_argument("--seed", type=int, default=0, help="seed of the split and the sampler (default 0)")
    run.add_argument("--holdout", type=float, default=0.3, help="fraction of groups held out (default 0.3)")
    run.add_argument("--metric", help="metric to optimise (default: the task's headline metric)")
    run.add_argument(
        "--convention",
        choices=["paper", "official"],
        default="paper",
        help="VAR convention of the searched parameters (default paper; see docs/method.md)",
    )
    run.add_argument("--search-summ", action="store_true", help="also search summ (default: fixed at 0.2)")
    for name, default in (("tau", "5 40"), ("rho", "by task group"), ("p", "0 1")):
        run.add_argument(
            f"--{name}-range",
            nargs=2,
            type=float,
            metavar=("LOW", "HIGH"),
            help=f"search range of {name}, in --convention's terms (default {default})",
        )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def build_best_parser(prog: str = "python sweep/main.py best") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="List the best VAR settings kept in the settings database.")
    parser.add_argument("--model")
    parser.add_argument("--task")
    parser.add_argument("--convention", choices=["paper", "official"])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("ray", "ray.tune", "alembic", "mlflow", "transformers", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_best(argv: Sequence[str], prog: str = "python sweep/main.py best") -> int:
    from sweep.settings import Settings
    from sweep.store import Store

    args = build_best_parser(prog).parse_args(argv)
    store = Store(Settings().database_url, retry_seconds=5)
    rows = store.best(model=args.model, task=args.task, convention=args.convention)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return 0
    if not rows:
        print("no best settings stored yet")
        return 0
    header = [
        "model",
        "task",
        "convention",
        "tau",
        "rho",
        "p",
        "summ",
        "metric",
        "held-out",
        "VAR off",
        "delta [95% CI]",
        "p-value",
        "tuning",
        "gap",
        "groups (tune/held)",
        "updated",
    ]
    table = [
        [
            r.model,
            r.task,
            r.convention,
            f"{r.tau:.2f}",
            f"{r.rho:.3f}",
            f"{r.p:.3f}",
            f"{r.summ:.2f}",
            r.metric,
            f"{r.heldout_value:.4f}",
            f"{r.baseline_heldout:.4f}",
            _interval(r),
            "-" if r.p_value is None else f"{r.p_value:.2g}",
            f"{r.tuning_value:.4f}",
            f"{r.tuning_value - r.heldout_value:+.4f}",
            f"{r.n_tuning}/{r.n_heldout}",
            r.updated_at.strftime("%Y-%m-%d %H:%M") if r.updated_at else "",
        ]
        for r in rows
    ]
    _print_table(header, table)
    return 0


def _interval(row: BestRecord) -> str:
    """``+0.031 [+0.004, +0.058]``; the interval is missing on rows of older releases."""
    if row.ci_low is None or row.ci_high is None:
        return f"{row.delta:+.3f}"
    return f"{row.delta:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}]"


def _pair(values: list[float] | None) -> tuple[float, float] | None:
    return None if values is None else (values[0], values[1])


def cmd_run(args: argparse.Namespace) -> int:
    from sweep.service import NothingToRun, SweepRequest, run_sweep
    from sweep.settings import Settings

    if not args.task:
        raise CLIUsageError("--task is required (e.g. --task mmvp)")
    settings = Settings()
    request = SweepRequest(
        task=args.task,
        model=args.model,
        trials=args.trials,
        workers=args.workers,
        data_dir=args.data_dir,
        split=args.split,
        limit=args.limit,
        study=args.study,
        seed=args.seed,
        holdout=args.holdout,
        metric=args.metric,
        convention=args.convention,
        search_summ=args.search_summ,
        tau_range=_pair(args.tau_range),
        rho_range=_pair(args.rho_range),
        p_range=_pair(args.p_range),
        batch=args.batch,
        worker_cpus=args.worker_cpus,
        early_stop=args.early_stop,
        warm_start=args.warm_start,
        device=args.device,
        sink_dims=args.sink_dims,
        discover_sink_dims=args.discover_sink_dims,
    )
    outcome = run_sweep(request, settings)
    print()
    if isinstance(outcome, NothingToRun):
        print(
            f"study {outcome.study}: all {outcome.trials_total} trials are done; nothing was run "
            f"(raise --trials to extend it)"
        )
        if outcome.best is not None:
            r = outcome.best
            print(
                f"stored best: tau {r.tau:.2f}  rho {r.rho:.3f}  p {r.p:.3f}  summ {r.summ:.2f}; {r.metric} "
                f"held-out {r.heldout_value:.4f} vs VAR off {r.baseline_heldout:.4f}: varsweep best"
            )
        return 0
    p = outcome.best_params
    print(f"study {outcome.study}: {outcome.trials_total} trials ({outcome.trials_run} run now)")
    print(
        f"best ({outcome.best_role}): tau {p['tau']:.2f}  rho {p['rho']:.3f}  p {p['p']:.3f}  summ {p['summ']:.2f}"
        f"  [{args.convention} convention]"
    )
    print(
        f"{outcome.metric}: tuning {outcome.tuning_value:.4f}; held-out {outcome.heldout_value:.4f} "
        f"vs VAR off {outcome.baseline_heldout:.4f} (tuning - held-out gap "
        f"{outcome.tuning_value - outcome.heldout_value:+.4f})"
    )
    print(f"VAR vs off on held-out: {outcome.comparison.describe()}")
    print(
        "best settings "
        + ("stored" if outcome.stored else "not stored (the stored ones are at least as good)")
        + ": varsweep best"
    )
    uri = settings.mlflow_tracking_uri
    if uri.startswith("http"):
        print(f"MLflow: {outcome.mlflow_url}")
    else:
        print(f"MLflow UI: mlflow ui --backend-store-uri {uri}  then open {outcome.mlflow_url}")
    if outcome.unlogged_runs:
        print(f"warning: {outcome.unlogged_runs} trial run(s) not logged to MLflow (kept in .varsweep/)")
    return 0


def cmd_tasks(argv: Sequence[str]) -> int:
    parser = _Parser(prog="varsweep tasks", description="The benchmarks a sweep can tune on (docs/tasks.md).")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    from workers.tasks import task_catalog

    catalog = task_catalog()
    rows = [
        {
            "task": name,
            "metric": info.spec.metric,
            "direction": info.spec.direction,
            "group": info.spec.group,
            "answers": info.spec.answer_mode,
            "data": info.data,
        }
        for name, info in catalog.items()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = list(rows[0])
    _print_table(header, [[str(row[k]) for k in header] for row in rows])
    return 0


def cmd_store(argv: Sequence[str]) -> int:
    from sweep.store.__main__ import main as store_main

    return store_main(list(argv), prog="varsweep store")


def cmd_leaderboard(argv: Sequence[str]) -> int:
    from dashboards.leaderboard import main as leaderboard_main

    return leaderboard_main(list(argv), prog="varsweep leaderboard")


def _print_table(header: Sequence[str], table: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *table, strict=True)]
    for line in [header, ["-" * w for w in widths], *table]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())


SUBCOMMANDS = {
    "sweep": "run, resume or extend a sweep (python sweep/main.py does the same)",
    "best": "the best settings stored per model, task and convention",
    "tasks": "the benchmarks, their headline metrics and where their data comes from",
    "store": "store upgrade: migrate the settings database to this release's schema",
    "leaderboard": "an HTML page of the best settings (a file, or served on 127.0.0.1)",
}


def varsweep(argv: Sequence[str] | None = None) -> int:
    """The ``varsweep`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: varsweep {" + ",".join(SUBCOMMANDS) + "} ...\n")
        print(
            "Tune VAR (Visual Attention Redistribution) on multimodal models: Ray workers, an Optuna search,"
        )
        print("MLflow tracking and a best-settings store.\n\nsubcommands:")
        for name, what in SUBCOMMANDS.items():
            print(f"  {name:<12} {what}")
        print("\n`varsweep <subcommand> --help` says more.")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(
            f"error: unknown subcommand {command!r}: one of {', '.join(SUBCOMMANDS)} (see varsweep --help)",
            file=sys.stderr,
        )
        return 2
    if command == "sweep":
        return main(rest, prog="varsweep sweep")
    handlers: dict[str, Callable[[Sequence[str]], int]] = {
        "best": lambda a: cmd_best(a, prog="varsweep best"),
        "tasks": cmd_tasks,
        "store": cmd_store,
        "leaderboard": cmd_leaderboard,
    }
    return _guarded(lambda: handlers[command](rest), debug="--debug" in rest)


def main(argv: Sequence[str] | None = None, *, prog: str = "python sweep/main.py") -> int:
    """``python sweep/main.py ...``: a sweep (no subcommand), or ``best``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["best"]:
        return _guarded(lambda: cmd_best(argv[1:]), debug="--debug" in argv)

    def run() -> int:
        args = build_parser(prog).parse_args(argv)
        _setup_logging()
        return cmd_run(args)

    return _guarded(run, debug="--debug" in argv)


def _guarded(command: Callable[[], int], *, debug: bool) -> int:
    """Run a subcommand; what varsweep expects to fail prints one line (a traceback only with ``--debug``)."""
    try:
        return command()
    except KeyboardInterrupt as e:  # sweep.signals.Interrupted (SIGINT, SIGTERM) or a Ctrl-C outside a sweep
        name, code = getattr(e, "name", "SIGINT"), getattr(e, "exit_code", 130)
        print(
            f"interrupted ({name}): the study is consistent; run the same command again to resume",
            file=sys.stderr,
        )
        return code
    except CLIUsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from var_core.errors import VarsweepError

        if debug or not isinstance(e, VarsweepError | OSError):
            raise
        from sweep.settings import first_line

        print(f"error: {first_line(e)}", file=sys.stderr)
        return 1
