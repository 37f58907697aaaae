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


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sweep")
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'varsweep.db'}",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}",
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
    params = [
        tuple(sorted(t.params.items())) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
    ]
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


def test_the_held_out_comparison_and_per_sample_logs_reach_mlflow_and_the_store(sweep, tmp_path):
    import json

    from sweep.store import Store

    request, settings, outcome = sweep
    comparison = outcome.comparison
    assert comparison.n_resamples >= 2000 and comparison.n_groups == 3
    assert comparison.delta == outcome.heldout_value - outcome.baseline_heldout
    (row,) = Store(settings.database_url).best()
    assert (row.ci_low, row.ci_high, row.p_value) == (
        comparison.ci_low,
        comparison.ci_high,
        comparison.p_value,
    )

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    parent = client.get_run(outcome.mlflow_run_id)
    assert parent.data.metrics["heldout_delta"] == comparison.delta
    assert parent.data.metrics["heldout_delta_p_value"] == comparison.p_value
    folder = client.download_artifacts(outcome.mlflow_run_id, "samples", str(tmp_path / "parent"))
    for name in ("heldout-var-off.jsonl", "heldout-best.jsonl"):
        records = [
            json.loads(line) for line in (tmp_path / "parent" / "samples" / name).read_text().splitlines()
        ]
        assert len(records) == 6 and {"doc_id", "group", "question", "prediction", "correct"} <= set(
            records[0]
        )
    assert folder
    experiment = client.get_experiment_by_name(request.study_name)
    (trial,) = client.search_runs([experiment.experiment_id], filter_string="tags.varsweep.trial = '3'")
    path = client.download_artifacts(trial.info.run_id, "samples.jsonl", str(tmp_path / "trial"))
    lines = open(path).read().splitlines()
    assert len(lines) == 14  # the tuning examples the trial saw


def test_optuna_dashboard_reads_the_study_from_the_sweep_database(sweep):
    """The README's command: `optuna-dashboard <the study's database URL>`; its HTTP API lists the trials."""
    import json
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    from services import free_port, wait_until

    request, settings, outcome = sweep
    port = free_port()
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    process = subprocess.Popen(
        [str(dashboard), settings.study_url, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def studies() -> list | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                return json.loads(response.read())["study_summaries"]
        except OSError:
            return None

    try:
        wait_until(lambda: studies() is not None, timeout=60, what="optuna-dashboard")
        (summary,) = [s for s in studies() if s["study_name"] == request.study_name]
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=10
        ) as r:
            detail = json.loads(r.read())
        states = [t["state"] for t in detail["trials"]]
        assert states.count("Complete") == outcome.trials_total == 8
        assert {p["name"] for p in detail["trials"][0]["params"]} == {"tau", "rho", "p"}
    finally:
        process.terminate()
        process.wait(timeout=30)
