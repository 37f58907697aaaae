"""Multi-fidelity (``--early-stop asha``) and warm starts, on a real sweep (local Ray, embedded stores)."""

from __future__ import annotations

import optuna
import pytest
import ray
from mlflow.tracking import MlflowClient
from services import REPO

from sweep.fidelity import Rungs
from sweep.search import space_for
from sweep.service import SweepRequest, run_sweep, split_groups
from sweep.settings import Settings
from sweep.store import BestRecord, Store
from workers.tasks import get_task

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SAMPLE = REPO / "examples" / "mmvp-sample"
State = optuna.trial.TrialState


def settings_in(folder) -> Settings:
    return Settings(
        database_url=f"sqlite:///{folder / 'varsweep.db'}",
        mlflow_tracking_uri=f"sqlite:///{folder / 'mlruns.db'}",
    )


def test_stopped_trials_are_pruned_never_best_and_rungs_are_shared(tmp_path):
    settings = settings_in(tmp_path)
    # one trial at a time: ASHA's decisions, and TPE's random start-up, are then the same on every run
    request = SweepRequest(
        task="mmvp", data_dir=str(SAMPLE), trials=10, batch=1, early_stop="asha", metric="accuracy"
    )
    try:
        outcome = run_sweep(request, settings, workdir=tmp_path)
    finally:
        ray.shutdown()
    study = optuna.load_study(study_name=request.study_name, storage=settings.study_url)
    pruned = [t for t in study.trials if t.state == State.PRUNED]
    complete = [t for t in study.trials if t.state == State.COMPLETE]
    assert pruned and len(pruned) + len(complete) == 10 == outcome.trials_total
    task = get_task("mmvp", data_dir=str(SAMPLE))
    tuning, _ = split_groups(task.groups, holdout=request.holdout, seed=request.seed)
    n_tuning = len(task.select(tuning).examples)
    for trial in pruned:  # its value is its last intermediate value, on fewer than all tuning examples
        assert max(trial.intermediate_values) < n_tuning
        assert trial.value == trial.intermediate_values[max(trial.intermediate_values)]
    assert all(max(t.intermediate_values) == n_tuning for t in complete)
    assert study.best_trial.state == State.COMPLETE and study.best_trial.number not in {
        t.number for t in pruned
    }
    (row,) = Store(settings.database_url).best()
    assert (row.tau, row.rho, row.p) == tuple(study.best_trial.params[k] for k in ("tau", "rho", "p"))
    assert row.tuning_value == study.best_trial.value and 0 <= row.heldout_value <= 1

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(request.study_name)
    runs = {
        int(r.data.tags["varsweep.trial"]): r
        for r in client.search_runs([experiment.experiment_id], filter_string="tags.varsweep.kind = 'trial'")
    }
    rungs = Rungs.geometric(tuning, seed=request.seed)
    for trial in pruned:
        run = runs[trial.number]
        assert run.data.tags["varsweep.pruned"] == "true"
        assert int(run.data.tags["varsweep.examples_seen"]) == max(trial.intermediate_values)
        curve = client.get_metric_history(run.info.run_id, "accuracy")
        # the rung curve, step = examples seen
        assert [m.step for m in curve] == sorted(trial.intermediate_values)
        assert [m.value for m in curve] == [
            trial.intermediate_values[s] for s in sorted(trial.intermediate_values)
        ]
    assert all("varsweep.pruned" not in runs[t.number].data.tags for t in complete)
    # every complete trial reported after the same rungs (tests/sweep/test_trial.py: the same groups, in order)
    assert {tuple(sorted(t.intermediate_values)) for t in complete} == {
        tuple(len(task.select(rungs.seen(r)).examples) for r in range(len(rungs)))
    }


def test_warm_start_queues_stored_settings_of_other_tasks_converted_and_deduplicated(tmp_path):
    settings = settings_in(tmp_path)
    store = Store(settings.database_url)
    base = dict(
        model="tiny-llava",
        summ=0.2,
        first_layer=2,
        direction="maximize",
        tuning_value=0.5,
        baseline_heldout=0.3,
        n_tuning=7,
        n_heldout=3,
        sweep_id="s",
        study="x",
        mlflow_run_id="r",
        git_commit="c",
        data_fingerprint="f",
    )
    store.upsert_best(
        BestRecord(
            task="pope", convention="paper", tau=14.0, rho=0.7, p=0.5, metric="f1", heldout_value=0.61, **base
        )
    )
    # official convention: rho 0.2 -> paper 0.8, p 0.3 -> paper 0.7
    store.upsert_best(
        BestRecord(
            task="cv_bench",
            convention="official",
            tau=30.0,
            rho=0.2,
            p=0.3,
            metric="accuracy",
            heldout_value=0.55,
            **base,
        )
    )
    # the paper's vision-centric defaults again: dropped as a duplicate
    store.upsert_best(
        BestRecord(
            task="gqa",
            convention="paper",
            tau=20.0,
            rho=0.9,
            p=0.4,
            metric="accuracy",
            heldout_value=0.4,
            **base,
        )
    )
    request = SweepRequest(task="mmvp", data_dir=str(SAMPLE), trials=4, batch=4)
    try:
        run_sweep(request, settings, workdir=tmp_path)
    finally:
        ray.shutdown()
    study = optuna.load_study(study_name=request.study_name, storage=settings.study_url)
    first = sorted(study.trials, key=lambda t: t.number)
    space = space_for("vision-centric", "paper")
    assert [t.user_attrs["role"] for t in first] == ["baseline", "paper-defaults", "warm-start", "warm-start"]
    assert first[0].params == space.baseline() and first[1].params == space.paper_defaults()
    assert first[2].params == pytest.approx({"tau": 30.0, "rho": 0.8, "p": 0.7})  # cv_bench, converted
    assert first[3].params == pytest.approx({"tau": 14.0, "rho": 0.7, "p": 0.5})  # pope
    assert first[2].user_attrs["source"].startswith("tiny-llava:cv_bench:official")
    assert first[3].user_attrs["source"].startswith("tiny-llava:pope:paper")
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(request.study_name)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.varsweep.role = 'warm-start'")
    assert sorted(r.data.tags["varsweep.warm_start_from"].split(" ")[0] for r in runs) == [
        "tiny-llava:cv_bench:official",
        "tiny-llava:pope:paper",
    ]
