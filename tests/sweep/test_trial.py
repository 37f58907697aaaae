"""The thin trial: the same group slices for every trial, rung by rung, one report per rung, no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import ray
from ray import tune

from sweep.fidelity import Rungs
from sweep.trial import COMPLETE, EXAMPLES_SEEN, FIDELITY, OBJECTIVE, TrialReport, run_trial
from var_core.stats import VARStats
from workers.results import ConfigResult
from workers.synthetic import write_mmvp_folder
from workers.tasks import get_task


class FakeWorker:
    """Answers every question with option A and counts one selected row per example; records its calls."""

    def __init__(self, task, examples):
        self.task, self.examples, self.calls = task, examples, []
        self.evaluate = self  # so that worker.evaluate.remote(...) reads like a Ray actor call

    def remote(self, configs, split, groups):
        self.calls.append((split, tuple(groups)))
        mine = [e for e in self.examples if e.group in set(groups)]
        stats = VARStats.empty(1, 2, 3)
        stats.rows[:] = len(mine)
        stats.selected[0, 0] = len(mine)
        return [ConfigResult(config=configs[0], answers={e.id: e.options[0] for e in mine}, stats=stats)]


@pytest.fixture()
def task(tmp_path):
    return get_task("mmvp", data_dir=str(write_mmvp_folder(tmp_path, pairs=8)))


def test_every_trial_asks_for_the_same_slices_in_order_and_reports_each_rung(task, monkeypatch):
    reports = []
    monkeypatch.setattr(ray, "get", lambda refs: list(refs))
    monkeypatch.setattr(tune, "report", reports.append)
    groups = list(task.groups)
    workers = [FakeWorker(task, [e for e in task.examples if groups.index(e.group) % 2 == k]) for k in (0, 1)]
    rungs = Rungs.geometric(groups, seed=3)
    for number in (0, 1):
        config = {"tau": 20.0, "rho": 0.9, "p": 0.4, "trial_number": number, "role": "search"}
        run_trial(config, actors=workers, task=task, metric="accuracy", convention="paper", rungs=rungs)
    expected = [("tuning", rungs.new_groups(r)) for r in range(len(rungs))]
    # both trials, both workers: the same slices, in order
    assert all(w.calls == expected * 2 for w in workers)
    assert len(reports) == 2 * len(rungs)
    first = [TrialReport.from_result(r) for r in reports[: len(rungs)]]
    assert [r.examples_seen for r in first] == [2 * end for end in rungs.ends]  # two questions per pair
    assert [r[FIDELITY] for r in reports[: len(rungs)]] == list(rungs.clock)
    assert [r[COMPLETE] for r in reports[: len(rungs)]] == [False] * (len(rungs) - 1) + [True]
    assert all(r[OBJECTIVE] == r["report"]["metrics"]["accuracy"] and r[EXAMPLES_SEEN] for r in reports)
    last = first[-1]
    assert last.var_stats["rows"] == 2 * 3 * len(task.examples)  # statistics summed over workers and rungs
    assert np.asarray(last.layer_head["selected_share"]).shape == (2, 3)


def test_the_trial_module_imports_no_torch():
    code = (
        "import sys, sweep.trial, sweep.search, workers.results, workers.tasks; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
