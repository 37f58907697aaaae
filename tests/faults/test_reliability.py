"""Several drivers on one study, drivers killed or stopped by signals, secrets, and inputs nobody tried.

Each test is a row of the README's faults table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from services import (
    BASE_ENV,
    REPO,
    STUDY,
    MlflowServer,
    Sweep,
    descendants,
    postgres_database,
    sweep_args,
    wait_until,
)

from sweep.store import Store

pytestmark = [pytest.mark.fault, pytest.mark.timeout(900)]

State = optuna.trial.TrialState
FAST_LEASE = {"VARSWEEP_HEARTBEAT_SECONDS": "1", "VARSWEEP_HEARTBEAT_GRACE": "6"}


def trials_of(url: str, study: str = STUDY) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=url).get_trials()


def distinct_params(trials) -> bool:
    params = [tuple(sorted(t.params.items())) for t in trials]
    return len(params) == len(set(params))


def trial_runs(uri: str, study: str = STUDY) -> list:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(study)
    return client.search_runs(
        [experiment.experiment_id], filter_string="tags.varsweep.kind = 'trial'", max_results=500
    )


def running_runs(uri: str) -> set[int]:
    """The trial numbers whose MLflow runs are RUNNING (none while the tracking database does not exist yet)."""
    try:
        return {int(r.data.tags["varsweep.trial"]) for r in trial_runs(uri) if r.info.status == "RUNNING"}
    except Exception:
        return set()


def test_a_second_driver_on_a_sqlite_study_refuses_at_once(tmp_path):
    first = Sweep(tmp_path / "work", *sweep_args(8, "--batch", "2"))
    first.wait_for(r"trial \d+ \(")
    started = time.monotonic()
    second = subprocess.run(
        [sys.executable, str(REPO / "sweep" / "main.py"), *sweep_args(8, "--batch", "2")],
        cwd=tmp_path / "work",
        env=BASE_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode != 0 and time.monotonic() - started < 60
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "SQLite cannot host two drivers" in errors[0] and "PostgreSQL" in errors[0]
    assert first.finish() == 0, first.text()[-3000:]
    db = f"sqlite:///{tmp_path / 'work' / 'varsweep.db'}"
    done = [t for t in trials_of(db) if t.state == State.COMPLETE]
    assert len(done) == 8 and distinct_params(done)
    assert [s.status for s in Store(db).sweeps(STUDY)] == ["completed"]  # the refused driver recorded nothing


def test_two_drivers_share_a_postgres_study_new_then_existing(tmp_path):
    """Two drivers on a new database (schema races), then two more extending the study: exactly --trials."""
    mlflow = MlflowServer(tmp_path / "mlflow")
    try:
        with postgres_database() as url:
            env = {"VARSWEEP_DATABASE_URL": url, "MLFLOW_TRACKING_URI": mlflow.uri}
            for trials in (8, 12):
                pair = [
                    Sweep(tmp_path / f"{name}{trials}", *sweep_args(trials, "--batch", "2"), env=env)
                    for name in ("a", "b")
                ]
                for sweep in pair:
                    assert sweep.finish() == 0, sweep.text()[-3000:]
                trials_now = trials_of(url)
                done = [t for t in trials_now if t.state == State.COMPLETE]
                assert len(done) == trials and distinct_params(done), [t.state for t in trials_now]
                assert not [t for t in trials_now if t.state == State.RUNNING]
            runs = trial_runs(mlflow.uri)
            numbers = [int(r.data.tags["varsweep.trial"]) for r in runs]
            # one run per trial, no duplicate
            assert sorted(numbers) == sorted(t.number for t in trials_of(url))
            assert [s.status for s in Store(url).sweeps(STUDY)] == ["completed"] * 4
    finally:
        mlflow.stop()


def test_a_driver_killed_outright_is_reaped_and_its_trials_run_again(tmp_path):
    work = tmp_path / "work"
    sweep = Sweep(work, *sweep_args(8, "--batch", "2"), env=FAST_LEASE)
    sweep.wait_for(r"trial \d+ \(")
    mlruns = f"sqlite:///{work / 'mlruns.db'}"
    wait_until(lambda: running_runs(mlruns), timeout=60, what="a trial's MLflow run RUNNING", interval=0.1)
    family = descendants(sweep.process.pid)
    sweep.process.send_signal(signal.SIGKILL)
    sweep.finish(timeout=60)
    left_running = running_runs(mlruns)  # the MLflow runs the killed driver left RUNNING
    assert left_running
    for pid in family:  # the driver's local Ray dies with it, as on a lost node
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    db = f"sqlite:///{work / 'varsweep.db'}"
    # the trials the killed driver left running with a configuration (sampled, or taken from the queue); one just
    # asked for has none to run again
    running = [
        t.number
        for t in trials_of(db)
        if t.state == State.RUNNING and (t.params or t.system_attrs.get("fixed_params"))
    ]
    assert running
    time.sleep(7)  # its lease runs out (grace 6 s here)

    rerun = Sweep(work, *sweep_args(8, "--batch", "2"), env=FAST_LEASE)
    assert rerun.finish() == 0, rerun.text()[-3000:]
    assert "stopped renewing its lease: recorded as killed" in rerun.text()
    trials = trials_of(db)
    done = [t for t in trials if t.state == State.COMPLETE]
    assert len(done) == 8 and distinct_params(done) and not [t for t in trials if t.state == State.RUNNING]
    retried = {t.user_attrs.get("retry_of") for t in done} - {None}
    assert retried == set(running)  # every trial it was running was queued again, and ran
    killed, completed = [s.status for s in Store(db).sweeps(STUDY)]
    assert (killed, completed) == ("killed", "completed")
    runs = trial_runs(mlruns)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    killed_runs = {int(r.data.tags["varsweep.trial"]) for r in runs if r.info.status == "KILLED"}
    assert killed_runs >= left_running
    # a trial it left running has no run (its start was still queued for MLflow when it died) or a KILLED one
    run_of = {int(r.data.tags["varsweep.trial"]): r.info.status for r in runs}
    assert all(run_of.get(number, "KILLED") == "KILLED" for number in running)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_cleanly_and_running_trials_run_on_the_next_sweep(tmp_path, signum):
    work = tmp_path / "work"
    sweep = Sweep(work, *sweep_args(8, "--batch", "2"))
    sweep.wait_for(r"trial \d+ \(")
    sweep.process.send_signal(signum)
    assert sweep.finish(timeout=120) == 128 + signum, sweep.text()[-3000:]
    name = signal.Signals(signum).name
    text = sweep.text()
    assert f"interrupted ({name}): the study is consistent" in text and "Traceback" not in text
    db = f"sqlite:///{work / 'varsweep.db'}"
    trials = trials_of(db)
    assert not [t for t in trials if t.state == State.RUNNING]
    failed = {t.number for t in trials if t.state == State.FAIL}
    queued = {t.user_attrs.get("retry_of") for t in trials if t.state == State.WAITING}
    assert failed and queued == failed  # the running trials were failed and really queued again
    (record,) = Store(db).sweeps(STUDY)
    assert (record.status, record.message) == ("interrupted", name)

    rerun = Sweep(work, *sweep_args(8, "--batch", "2"))
    assert rerun.finish() == 0, rerun.text()[-3000:]
    done = [t for t in trials_of(db) if t.state == State.COMPLETE]
    assert len(done) == 8 and distinct_params(done)
    assert {t.user_attrs.get("retry_of") for t in done} >= failed


@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_secrets_reach_no_file_log_tag_or_page(tmp_path, form):
    secret = "Pa55-never-on-disk"
    ray_tmp = Path(tempfile.mkdtemp(prefix="vsr-", dir="/tmp"))  # short: Ray's socket paths are limited
    try:
        with postgres_database() as url:
            if form == "userinfo":
                with_secret = url.replace("postgres@", f"postgres:{secret}@")
            else:
                with_secret = f"{url}?password={secret}"
            env = {"VARSWEEP_DATABASE_URL": with_secret, "RAY_TMPDIR": str(ray_tmp)}
            sweep = Sweep(tmp_path / "work", *sweep_args(2, "--batch", "2"), env=env)
            assert sweep.finish() == 0, sweep.text()[-3000:]
            page = subprocess.run(
                [sys.executable, "-m", "dashboards.leaderboard", "--out", str(tmp_path / "board.html")],
                cwd=tmp_path / "work",
                env=BASE_ENV | env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert page.returncode == 0, page.stderr
        leaks = []
        for root in (tmp_path, ray_tmp):
            for path in root.rglob("*"):
                if path.is_file() and secret.encode() in path.read_bytes():
                    leaks.append(str(path))
        assert not leaks, leaks  # working folder (Tune's pickles included), Ray's session folder, logs, page
        runs = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'work' / 'mlruns.db'}").search_runs(
            [
                MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'work' / 'mlruns.db'}")
                .get_experiment_by_name(STUDY)
                .experiment_id
            ]
        )
        blob = json.dumps([{"params": r.data.params, "tags": r.data.tags} for r in runs])
        assert secret not in blob and "***" in blob
    finally:
        subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)


def test_a_study_refuses_a_sweep_that_optimises_something_else(tmp_path):
    work = tmp_path / "work"
    assert Sweep(work, *sweep_args(2, "--batch", "2")).finish() == 0
    for extra, difference in (
        (["--metric", "accuracy"], "metric 'pair_accuracy' (this sweep: 'accuracy')"),
        (["--convention", "official", "--study", STUDY], "convention 'paper' (this sweep: 'official')"),
        (["--holdout", "0.4"], "holdout 0.3 (this sweep: 0.4)"),
    ):
        out = subprocess.run(
            [sys.executable, str(REPO / "sweep" / "main.py"), *sweep_args(3, *extra)],
            cwd=work,
            env=BASE_ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert out.returncode != 0 and len(errors) == 1, out.stderr[-2000:]
        assert difference in errors[0] and "--study" in errors[0], errors[0]
    db = f"sqlite:///{work / 'varsweep.db'}"
    assert len(trials_of(db)) == 2 and len(Store(db).sweeps(STUDY)) == 1  # nothing was added


def test_workers_the_machine_cannot_hold_fail_at_once(tmp_path):
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(REPO / "sweep" / "main.py"), *sweep_args(3, "--workers", "3")],
        cwd=tmp_path,
        env=BASE_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode != 0 and len(errors) == 1 and time.monotonic() - started < 120, out.stderr[-2000:]
    assert "3 cpu worker(s) need 3 CPU but this Ray has" in errors[0] and "--workers" in errors[0]
    db = f"sqlite:///{tmp_path / 'varsweep.db'}"
    assert not [t for t in trials_of(db) if t.state == State.RUNNING]
    assert [s.status for s in Store(db).sweeps(STUDY)] == ["failed"]


def test_long_and_unicode_study_names(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "sweep" / "main.py"), *sweep_args(2, "--study", "s" * 300)],
        cwd=tmp_path,
        env=BASE_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0 and "error: --study is 300 characters long: at most 200" in out.stderr
    assert not (tmp_path / "varsweep.db").exists()
    name = "研究éàü" * 19 + "研究"  # 135 characters, far more bytes than a file name may have
    sweep = Sweep(tmp_path / "work", *sweep_args(2, "--batch", "2", "--study", name))
    assert sweep.finish() == 0, sweep.text()[-3000:]
    db = f"sqlite:///{tmp_path / 'work' / 'varsweep.db'}"
    assert len([t for t in trials_of(db, name) if t.state == State.COMPLETE]) == 2
    assert [s.status for s in Store(db).sweeps(name)] == ["completed"]


def test_a_math_like_study_name_keeps_the_plots(tmp_path):
    name = "cost $\\foo{$ study"
    sweep = Sweep(tmp_path / "work", *sweep_args(4, "--batch", "4", "--study", name))
    assert sweep.finish() == 0, sweep.text()[-3000:]
    assert "unreachable" not in sweep.text()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'work' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name(name)
    (study,) = client.search_runs([experiment.experiment_id], filter_string="tags.varsweep.kind = 'study'")
    files = {a.path for a in client.list_artifacts(study.info.run_id, "sweep")}
    assert "sweep/history.png" in files, files


def test_a_permanent_database_error_fails_at_once_with_its_cause(tmp_path):
    store = tmp_path / "work" / "store"
    store.mkdir(parents=True)
    probe = subprocess.run(["chattr", "+i", str(store)], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(
            f"chattr is not permitted here (it makes the store's folder read-only, even for root): {probe.stderr}"
        )
    subprocess.run(["chattr", "-i", str(store)], check=True)
    try:
        env = {"VARSWEEP_DATABASE_URL": f"sqlite:///{store / 'varsweep.db'}"}
        sweep = Sweep(tmp_path / "work", *sweep_args(8, "--batch", "2"), env=env)
        sweep.wait_for(r"trial \d+ \(")
        subprocess.run(["chattr", "+i", str(store)], check=True)  # the folder turns read-only mid-sweep
        started = time.monotonic()
        code = sweep.finish(timeout=300)
        assert code != 0 and time.monotonic() - started < 120  # not the 600 s outage wait
        errors = [line for line in sweep.text().splitlines() if line.startswith("error:")]
        # SQLite's own words ("unable to open database file"), or ours when it calls the file "locked"
        cause = ("unable to open database file", "its folder is read-only")
        assert len(errors) == 1 and any(c in errors[0] for c in cause), sweep.text()[-3000:]
        assert "database unreachable" not in sweep.text()  # a permanent error is not waited out
    finally:
        subprocess.run(["chattr", "-i", str(store)], check=False)


def test_a_metric_that_is_not_a_number_fails_each_trial_once(tmp_path):
    from task_fixtures import pope_record, write_pope

    # every label "no": recall = TP / (TP + FN) is 0 / 0 for any answers
    records = [pope_record(i, (i + 1) // 2, f"thing{i}", "no") for i in range(1, 21)]
    data = write_pope(tmp_path / "pope", {"random": records})
    sweep = Sweep(
        tmp_path / "work",
        "--task",
        "pope",
        "--split",
        "random",
        "--data-dir",
        str(data),
        "--metric",
        "recall",
        "--trials",
        "3",
        "--batch",
        "3",
    )
    assert sweep.finish() != 0
    text = sweep.text()
    assert "Traceback" not in text
    for number in (0, 1, 2):
        assert text.count(f"trial {number} failed: recall is nan") == 1, text[-3000:]
    db = f"sqlite:///{tmp_path / 'work' / 'varsweep.db'}"
    assert [t.state for t in trials_of(db, "tiny-llava:pope:paper")] == [
        State.FAIL
    ] * 3  # once each, no retry
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert errors == ["error: no trial saw every tuning example; see the errors above"]


def test_a_local_sweep_listens_on_loopback_only(tmp_path):
    sweep = Sweep(tmp_path / "work", *sweep_args(6, "--batch", "2"))
    try:
        sweep.wait_for(r"trial \d+ \(")
        family = descendants(sweep.process.pid) | {sweep.process.pid}
        listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
        ours = [line for line in listening.splitlines() if any(f"pid={pid}," in line for pid in family)]
        assert ours, listening
        addresses = {line.split()[3].rsplit(":", 1)[0] for line in ours}
        assert addresses <= {"127.0.0.1", "[::1]", "[::ffff:127.0.0.1]"}, ours
    finally:
        assert sweep.finish() == 0, sweep.text()[-3000:]


def test_two_local_checkpoints_never_share_a_key(tmp_path):
    from workers.models import build_tiny_llava, check_model, save_model

    model, processor = build_tiny_llava()
    first = save_model(model, processor, tmp_path / "runA" / "checkpoint")
    second = save_model(model, processor, tmp_path / "runB" / "checkpoint")
    keys = {check_model(str(first)).key, check_model(str(second)).key}
    assert len(keys) == 2 and all(k.startswith("checkpoint@") for k in keys)
    assert check_model(str(first)).key == check_model(str(first)).key  # stable: the same folder, the same key


def test_the_lease_marks_a_silent_sweep_killed(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    alive = store.start_sweep(key="k", model="m", task="t", convention="paper", host="h", pid=1)
    silent = store.start_sweep(key="k", model="m", task="t", convention="paper", host="h", pid=2)
    time.sleep(1.2)
    store.beat(alive)
    assert [r.id for r in store.live("k", grace=1.0)] == [alive]
    (dead,) = store.reap("k", grace=1.0)
    assert dead.id == silent and dead.describe().startswith("host h, pid 2, started ")
    statuses = {r.id: (r.status, r.message) for r in store.sweeps("k")}
    assert statuses[silent][0] == "killed" and "no heartbeat since" in statuses[silent][1]
    assert statuses[alive] == ("running", None)
    wait_until(lambda: not store.live("k", grace=0.5), timeout=5, what="the live lease to run out")
