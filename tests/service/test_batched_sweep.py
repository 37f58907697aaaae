"""A real sweep (``run_sweep`` on a local Ray, embedded stores) sends batches of configurations to its worker."""

from __future__ import annotations

import optuna
import pytest
import ray
from mlflow.tracking import MlflowClient
from services import REPO

from sweep.service import SweepRequest, run_sweep
from sweep.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SAMPLE = REPO / "examples" / "mmvp-sample"


@pytest.fixture()
def sweep(tmp_path):
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'varsweep.db'}", mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}"
    )
    request = SweepRequest(task="mmvp", data_dir=str(SAMPLE), trials=8, batch=4)
    try:
        yield request, settings, run_sweep(request, settings, workdir=tmp_path)
    finally:
        ray.shutdown()


def test_worker_gets_batches_of_distinct_configurations_from_thin_trials(sweep):
    request, settings, outcome = sweep
    use = outcome.utilization
    assert outcome.trials_run == 8
    # the actor counted its engine batches: several configurations per batch, never more than --batch
    assert max(use.batch_sizes) > 1 and max(use.batch_sizes) <= request.batch, use.batch_sizes
    assert sum(size * n for size, n in use.batch_sizes.items()) == 8
    assert use.torch_in_trials == 0  # each trial checked its own process: no torch there
    assert 0 < use.busy <= 1 and use.evaluations == 8 * 14
    study = optuna.load_study(study_name=request.study_name, storage=settings.study_url)
    params = [tuple(sorted(t.params.items())) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(params) == 8 and len(set(params)) == 8  # TPE's constant liar kept concurrent trials apart

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(request.study_name)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.varsweep.kind = 'trial'")
    assert sorted(int(r.data.tags["varsweep.trial"]) for r in runs) == list(range(8))
    for run in runs:  # opened when the trial started, ended when it reported
        assert run.info.status == "FINISHED" and run.info.end_time > run.info.start_time
    acted = [r for r in runs if r.data.tags["varsweep.role"] != "baseline"]
    assert all(r.data.metrics["var.selected_share"] > 0 for r in acted)
    assert any(r.data.metrics["var.mass_moved_per_row"] > 0 for r in acted)
    history = client.get_metric_history(acted[0].info.run_id, "var.layer.selected_share")
    assert [m.step for m in history] == list(range(4))  # one value per layer of the tiny preset
