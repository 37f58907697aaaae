"""The command line: subcommands, one-line errors, and nothing heavy imported before a model is needed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sweep.cli import build_parser, main, varsweep

LIGHT = [
    ["--help"],
    ["tasks"],
    ["tasks", "--json"],
    ["best", "--help"],
    ["sweep", "--help"],
    ["sweep", "--task", "no-such-task"],
    ["store", "--help"],
    ["leaderboard", "--help"],
]


@pytest.mark.parametrize("argv", LIGHT, ids=" ".join)
def test_help_and_input_errors_import_no_torch_or_ray(argv):
    code = (
        "import sys\nfrom sweep.cli import varsweep\n"
        f"try:\n    varsweep({argv!r})\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'ray', 'mlflow') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stderr, out.stderr[-2000:]


def test_tasks_lists_every_benchmark_with_metric_direction_group_and_data(capsys):
    assert varsweep(["tasks", "--json"]) == 0
    rows = {r["task"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"mmvp", "pope", "cv_bench", "chair", "mme", "vqav2", "vizwiz", "gqa", "mmhal"}
    assert (rows["chair"]["metric"], rows["chair"]["direction"]) == ("chair_s", "minimize")
    assert rows["mmvp"]["group"] == "vision-centric" and "Questions.csv" in rows["mmvp"]["data"]


def test_unknown_task_and_subcommand_are_one_line(capsys):
    assert varsweep(["sweep", "--task", "no-such-task"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: unknown task 'no-such-task'. Known: chair, cv_bench, gqa, mme, mmhal, mmvp, pope, vizwiz, vqav2"
    ]
    assert varsweep(["nope"]) == 2
    assert "unknown subcommand 'nope'" in capsys.readouterr().err
    assert main(["--task", "mmvp", "--batch", "0"]) == 2  # argparse's own checks, one line too
    assert capsys.readouterr().err.startswith("error: argument --batch: 0 is not a positive integer")


def test_the_run_form_and_the_subcommand_parse_the_same_options():
    argv = [
        "--task",
        "pope",
        "--batch",
        "4",
        "--early-stop",
        "asha",
        "--device",
        "cuda",
        "--sink-dims",
        "458,2570",
    ]
    args = build_parser().parse_args(argv)
    assert (args.task, args.batch, args.early_stop, args.device, args.sink_dims) == (
        "pope",
        4,
        "asha",
        "cuda",
        (458, 2570),
    )
    assert build_parser("varsweep sweep").parse_args(argv) == args
