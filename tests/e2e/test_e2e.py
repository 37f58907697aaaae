"""The sweep service end to end: on the embedded defaults, and on a real Ray head + MLflow server + PostgreSQL."""

from __future__ import annotations

import os
import re

import optuna
import pytest
from mlflow.tracking import MlflowClient
from services import REPO, MlflowServer, RayHead, postgres_database, run_python

from sweep.store import Store

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

SAMPLE = REPO / "examples" / "mmvp-sample"
STUDY = "tiny-llava:mmvp:paper"
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("VARSWEEP_", "MLFLOW_", "RAY_ADDRESS"))}


def sweep_command(trials: int) -> list[str]:
    return [
        "python",
        "sweep/main.py",
        "--task",
        "mmvp",
        "--data-dir",
        "examples/mmvp-sample",
        "--trials",
        str(trials),
    ]


def check_study(url: str, trials: int) -> list[dict[str, float]]:
    study = optuna.load_study(study_name=STUDY, storage=url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == trials, [t.state for t in study.trials]
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == len(params), "a configuration was evaluated twice"
    roles = [t.user_attrs.get("role") for t in complete[:2]]
    assert roles == ["baseline", "paper-defaults"]
    return [dict(p) for p in params]


def check_mlflow(uri: str, *, children: int, invocations: int, git: bool = True) -> None:
    """One top-level run for the study, continued by every invocation that ran trials; a child run per trial.

    ``git``: the code ran from a git checkout (``ray job submit`` runs a copy of the working folder, without
    .git: the commit tag is then absent, unless an image sets VARSWEEP_GIT_COMMIT)."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (study,) = [r for r in runs if r.data.tags.get("varsweep.kind") == "study"]
    trials = [r for r in runs if r.data.tags.get("varsweep.kind") == "trial"]
    assert len(trials) == children and len(runs) == children + 1
    assert sum(k.startswith("varsweep.invocation.") for k in study.data.tags) == invocations
    sweep_ids = {r.data.tags["varsweep.sweep_id"] for r in trials}
    assert len(sweep_ids) == invocations  # each trial says which invocation ran it
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == study.info.run_id
        assert "pair_accuracy" in run.data.metrics and "var.selected_share" in run.data.metrics
        assert set(run.data.params) >= {"tau", "rho", "p"}
        assert run.info.status == "FINISHED" and run.info.end_time > run.info.start_time  # a real duration
        assert run.data.tags.get("mlflow.user") and run.data.tags.get("mlflow.source.name") == "main.py"
        assert bool(run.data.tags.get("mlflow.source.git.commit")) == git
    assert any(r.data.tags.get("varsweep.role") == "baseline" for r in trials)
    acted = [r for r in trials if r.data.tags.get("varsweep.role") != "baseline"]  # VAR acted in them
    assert acted and all(r.data.metrics["var.selected_share"] > 0 for r in acted)
    assert any(r.data.metrics["var.mass_moved_per_row"] > 0 for r in acted)
    assert [r.data.tags.get("varsweep.best") for r in trials].count("true") >= 1
    assert study.info.status == "FINISHED" and "best_heldout" in study.data.metrics
    assert study.data.params.get("data_fingerprint") and study.data.params.get("n_heldout_groups")
    assert "limit" not in study.data.params  # unset: not logged as the string "None"


def test_embedded_defaults_no_servers(tmp_path):
    """sweep/main.py with nothing configured: SQLite store and study, SQLite MLflow, a local Ray."""
    env = CLEAN_ENV | {"PYTHONUNBUFFERED": "1"}
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "examples").symlink_to(REPO / "examples")

    def run(trials: int) -> str:
        return run_python(str(REPO / "sweep" / "main.py"), *sweep_command(trials)[2:], cwd=workdir, env=env)

    first = run(4)
    assert re.search(r"4 trials \(4 run now\)", first), first[-2000:]
    assert "MLflow UI: mlflow ui --backend-store-uri sqlite:///mlruns.db" in first
    db = f"sqlite:///{workdir / 'varsweep.db'}"
    before = check_study(db, 4)
    (row,) = Store(db).best()
    assert (row.model, row.task, row.convention, row.metric) == (
        "tiny-llava",
        "mmvp",
        "paper",
        "pair_accuracy",
    )
    assert row.n_tuning + row.n_heldout == 10 and row.data_fingerprint

    again = run(4)  # the same command: the study is complete, nothing is repeated and no run is created
    assert "all 4 trials are done; nothing was run" in again, again[-2000:]
    extended = run(7)  # raising --trials extends the study by exactly the missing trials
    assert re.search(r"7 trials \(3 run now\)", extended), extended[-2000:]
    after = check_study(db, 7)
    assert after[:4] == before
    uri = f"sqlite:///{workdir / 'mlruns.db'}"
    check_mlflow(uri, children=7, invocations=2)
    # the study's best is tagged and has its figures whichever invocation ran it (here the first one)
    best = optuna.load_study(study_name=STUDY, storage=db).best_trial.number
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(STUDY).experiment_id], "tags.varsweep.best = 'true'"
    )
    assert [r.data.tags["varsweep.trial"] for r in runs] == [str(best)] and best < 4
    assert "var/layer_head.png" in [a.path for a in client.list_artifacts(runs[0].info.run_id, "var")]
    assert [s.status for s in Store(db).sweeps(STUDY)] == ["completed"] * 3


@pytest.fixture()
def cluster(tmp_path):
    head = RayHead()
    mlflow = None
    try:
        mlflow = MlflowServer(tmp_path / "mlflow")
        with postgres_database() as database:
            yield head, mlflow, database
    finally:
        if mlflow is not None:
            mlflow.stop()
        head.stop()


def test_ray_job_submit_with_mlflow_server_and_postgres(cluster):
    head, mlflow, database = cluster
    env_vars = {"VARSWEEP_DATABASE_URL": database, "MLFLOW_TRACKING_URI": mlflow.uri, "PYTHONUNBUFFERED": "1"}
    first = head.submit(sweep_command(4), env_vars=env_vars)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    assert "succeeded" in first.stdout and "4 trials (4 run now)" in first.stdout
    check_study(database, 4)
    (row,) = Store(database).best()
    assert row.task == "mmvp" and row.mlflow_run_id

    second = head.submit(sweep_command(4), env_vars=env_vars)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "all 4 trials are done; nothing was run" in second.stdout
    check_study(database, 4)
    check_mlflow(mlflow.uri, children=4, invocations=1, git=False)
