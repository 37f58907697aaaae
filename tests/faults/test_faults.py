"""Faults injected into running sweeps, and bad input, with the outcomes the README's table reports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from services import (
    BASE_ENV,
    REPO,
    SAMPLE,
    STUDY,
    MlflowServer,
    Sweep,
    ThrowawayPostgres,
    postgres_database,
    sweep_args,
    wait_until,
)

from sweep.store import Store

pytestmark = [pytest.mark.fault, pytest.mark.timeout(900)]


def study_trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=STUDY, storage=url).get_trials()


def complete(url: str) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study_trials(url) if t.state == optuna.trial.TrialState.COMPLETE]


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_worker_killed_mid_trial_same_best_as_undisturbed(tmp_path):
    # batches of 2: the kill lands in a later batch. Ten trials or fewer are TPE's random start-up, so both
    # sweeps propose the same configurations whatever the order their results come back in.
    calm = Sweep(tmp_path / "calm", *sweep_args(6, "--batch", "2"))
    assert calm.finish() == 0, calm.text()[-3000:]
    calm_db = f"sqlite:///{tmp_path / 'calm' / 'varsweep.db'}"

    hit = Sweep(tmp_path / "hit", *sweep_args(6, "--batch", "2"))
    hit.wait_for(r"trial 1 \(")
    (victim,) = hit.worker_pids()
    # kill while the worker computes (a trial's evaluation), not while it idles between trials
    before = cpu_ticks(victim)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = cpu_ticks(victim)
        if now - before >= 2:
            break
        before = now
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: any(p != victim for p in hit.worker_pids()), timeout=60, what="restarted worker")
    assert hit.finish() == 0, hit.text()[-3000:]
    hit_db = f"sqlite:///{tmp_path / 'hit' / 'varsweep.db'}"

    calm_trials, hit_trials = complete(calm_db), complete(hit_db)
    assert len(hit_trials) == 6 and not [
        t for t in study_trials(hit_db) if t.state != optuna.trial.TrialState.COMPLETE
    ]
    assert [t.params for t in hit_trials] == [t.params for t in calm_trials]
    assert [t.value for t in hit_trials] == [t.value for t in calm_trials]
    (calm_best,), (hit_best,) = Store(calm_db).best(), Store(hit_db).best()
    assert (hit_best.tau, hit_best.rho, hit_best.p, hit_best.heldout_value) == (
        calm_best.tau,
        calm_best.rho,
        calm_best.p,
        calm_best.heldout_value,
    )


def test_postgres_stopped_and_restarted_mid_sweep(tmp_path):
    socket_dir = Path(tempfile.mkdtemp(prefix="vspg-", dir="/tmp"))  # short: unix socket paths are limited
    server = ThrowawayPostgres(socket_dir)
    try:
        env = {"VARSWEEP_DATABASE_URL": server.url}
        sweep = Sweep(tmp_path / "work", *sweep_args(6, "--batch", "2"), env=env)
        sweep.wait_for(r"trial 1 \(")
        server.stop("immediate")
        time.sleep(8)
        server.start()
        assert sweep.finish() == 0, sweep.text()[-3000:]
        log = sweep.text()
        assert "database unreachable" in log  # the sweep noticed, waited, and went on
        assert len(complete(server.url)) == 6
        (row,) = Store(server.url).best()
        assert row.task == "mmvp"
        assert [s.status for s in Store(server.url).sweeps(STUDY)] == ["completed"]
    finally:
        server.close()
        shutil.rmtree(socket_dir, ignore_errors=True)


def test_mlflow_unreachable_mid_sweep_then_back(tmp_path):
    root = tmp_path / "mlflow"
    server = MlflowServer(root)
    port = server.port
    sweep = Sweep(tmp_path / "work", *sweep_args(6, "--batch", "2"), env={"MLFLOW_TRACKING_URI": server.uri})
    try:
        sweep.wait_for(r"trial 1 \(")
        server.stop()
        sweep.wait_for(r"trial 3 \(")
        server = MlflowServer(root, port=port)
        assert sweep.finish() == 0, sweep.text()[-3000:]
    finally:
        server.stop()
        if sweep.process.poll() is None:
            sweep.process.kill()
    log = sweep.text()
    assert log.count("is unreachable") == 1, log  # one clear warning, not one per call
    assert "trial results stay in the study" in log
    assert len(complete(f"sqlite:///{tmp_path / 'work' / 'varsweep.db'}")) == 6
    server = MlflowServer(root, port=port)
    try:
        client = MlflowClient(tracking_uri=server.uri)
        experiment = client.get_experiment_by_name(STUDY)
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        trials = {r.data.tags["varsweep.trial"] for r in runs if r.data.tags.get("varsweep.kind") == "trial"}
        assert trials == {str(i) for i in range(6)}  # the spooled runs were logged once it was back
    finally:
        server.stop()


def test_sigint_mid_batch_stops_cleanly_and_a_rerun_resumes(tmp_path):
    workdir = tmp_path / "work"
    args = sweep_args(10, "--batch", "4")
    sweep = Sweep(workdir, *args)
    sweep.wait_for(r"trial \d+ \(")  # the first batch reported: the next one is running
    sweep.process.send_signal(signal.SIGINT)
    assert sweep.finish(timeout=120) == 130, sweep.text()[-3000:]
    log = sweep.text()
    assert "interrupted (SIGINT): the study is consistent" in log and "Traceback" not in log
    wait_until(lambda: not sweep.worker_pids(), timeout=30, what="workers stopped")
    db = f"sqlite:///{workdir / 'varsweep.db'}"
    states = {t.state for t in study_trials(db)}
    assert optuna.trial.TrialState.COMPLETE in states
    assert [s.status for s in Store(db).sweeps(STUDY)] == ["interrupted"]
    done_before = [t.params for t in complete(db)]
    assert len(done_before) < 10

    rerun = Sweep(workdir, *args)
    assert rerun.finish() == 0, rerun.text()[-3000:]
    after = complete(db)
    assert len(after) == 10
    assert [t.params for t in after][: len(done_before)] == done_before
    params = [tuple(sorted(t.params.items())) for t in after]
    assert len(set(params)) == len(params)
    # one MLflow run per trial of the study, none left running; the complete trials' runs finished
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    experiment = client.get_experiment_by_name(STUDY)
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.varsweep.kind = 'trial'", max_results=500
    )
    numbers = [int(r.data.tags["varsweep.trial"]) for r in runs]
    assert len(numbers) == len(set(numbers)), sorted(numbers)
    assert all(r.info.status != "RUNNING" for r in runs)
    finished = {int(r.data.tags["varsweep.trial"]) for r in runs if r.info.status == "FINISHED"}
    assert finished == {t.number for t in after}


def test_sigint_during_a_rung_then_rerun_finishes_without_repeats(tmp_path):
    workdir = tmp_path / "work"
    args = sweep_args(10, "--batch", "1", "--early-stop", "asha", "--metric", "accuracy")
    sweep = Sweep(workdir, *args)
    sweep.wait_for(r"trial 2 \(")  # trial 3 is between rungs now
    sweep.process.send_signal(signal.SIGINT)
    assert sweep.finish(timeout=120) == 130, sweep.text()[-3000:]
    db = f"sqlite:///{workdir / 'varsweep.db'}"
    State = optuna.trial.TrialState
    before = [t for t in study_trials(db) if t.state in (State.COMPLETE, State.PRUNED)]
    assert len(before) < 10

    rerun = Sweep(workdir, *args)
    assert rerun.finish() == 0, rerun.text()[-3000:]
    trials = study_trials(db)
    finished = [t for t in trials if t.state in (State.COMPLETE, State.PRUNED)]
    assert len(finished) == 10  # --trials counts complete and pruned trials, across both runs
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(params)) == len(params)
    assert not [t for t in trials if t.state == State.RUNNING]
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    experiment = client.get_experiment_by_name(STUDY)
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.varsweep.kind = 'trial'", max_results=500
    )
    numbers = [int(r.data.tags["varsweep.trial"]) for r in runs]
    assert len(numbers) == len(set(numbers)) and all(r.info.status != "RUNNING" for r in runs)
    assert {t.number for t in finished} <= set(numbers)


def _copy_sample(tmp_path: Path) -> Path:
    target = tmp_path / "mmvp"
    shutil.copytree(SAMPLE, target)
    return target


def _bad_csv_row(tmp_path: Path) -> list[str]:
    data = _copy_sample(tmp_path)
    lines = (data / "Questions.csv").read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0]  # drop the answer column of row 3
    (data / "Questions.csv").write_text("\n".join(lines) + "\n")
    return ["--data-dir", str(data)]


def _unknown_answer(tmp_path: Path) -> list[str]:
    data = _copy_sample(tmp_path)
    text = (data / "Questions.csv").read_text().replace("(b)\n", "(z)\n", 1)
    (data / "Questions.csv").write_text(text)
    return ["--data-dir", str(data)]


def _truncated_image(tmp_path: Path) -> list[str]:
    data = _copy_sample(tmp_path)
    image = data / "MMVP Images" / "3.jpg"
    image.write_bytes(image.read_bytes()[:200])
    return ["--data-dir", str(data)]


def _empty_dataset(tmp_path: Path) -> list[str]:
    data = _copy_sample(tmp_path)
    (data / "Questions.csv").write_text("Index,Question,Options,Correct Answer\n")
    return ["--data-dir", str(data)]


def _bad_pope_jsonl(tmp_path: Path) -> list[str]:
    data = tmp_path / "pope"
    data.mkdir()
    good = '{"question_id": 1, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a cat?", "label": "yes"}'
    for split in ("random", "popular", "adversarial"):
        (data / f"coco_pope_{split}.json").write_text(
            good + "\n" + ("{not json\n" if split == "popular" else "")
        )
    return ["--task", "pope", "--data-dir", str(data)]


def _no_image_token_model(tmp_path: Path) -> list[str]:
    from workers.models import build_tiny_llava, save_model

    folder = save_model(*build_tiny_llava(), tmp_path / "no-image-token")
    config = json.loads((folder / "config.json").read_text())
    config["image_token_index"] = -1
    (folder / "config.json").write_text(json.dumps(config))
    return ["--data-dir", str(SAMPLE), "--model", str(folder)]


def _image_token_in_a_question(tmp_path: Path) -> list[str]:
    data = _copy_sample(tmp_path)
    text = (data / "Questions.csv").read_text().replace("1,Is the circle", "1,Is the <image> circle", 1)
    (data / "Questions.csv").write_text(text)
    return ["--data-dir", str(data)]


def _png_header_only(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels: a small file that decodes to a huge image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    body = b"".join(packer.compress(row * 500) for _ in range(height // 500)) + packer.compress(
        row * (height % 500)
    )
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", body + packer.flush())
        + chunk(b"IEND", b"")
    )


def _huge_image(side: int):
    def prepare(tmp_path: Path) -> list[str]:
        data = _copy_sample(tmp_path)
        (data / "MMVP Images" / "3.jpg").write_bytes(_png_header_only(side, side))  # Pillow reads by content
        return ["--data-dir", str(data)]

    return prepare


BAD_INPUTS = {
    "unknown task": (lambda p: ["--task", "mmvq", "--data-dir", str(SAMPLE)], {}, "unknown task 'mmvq'"),
    "unknown model": (
        lambda p: ["--data-dir", str(SAMPLE), "--model", "nobody/no-such-model"],
        {},
        "cannot load model",
    ),
    "tau out of range": (
        lambda p: ["--data-dir", str(SAMPLE), "--tau-range", "0", "10"],
        {},
        "--tau-range 0 10 is out of range",
    ),
    "rho out of range": (
        lambda p: ["--data-dir", str(SAMPLE), "--rho-range", "0.5", "1.5"],
        {},
        "--rho-range 0.5 1.5 is out of range",
    ),
    "p out of range": (
        lambda p: ["--data-dir", str(SAMPLE), "--p-range", "-1", "0.5"],
        {},
        "--p-range -1 0.5 is out of range",
    ),
    "holdout out of range": (
        lambda p: ["--data-dir", str(SAMPLE), "--holdout", "1.5"],
        {},
        "--holdout 1.5 is out of range",
    ),
    "missing data folder": (lambda p: ["--data-dir", str(p / "nowhere")], {}, "nowhere"),
    "malformed CSV row": (_bad_csv_row, {}, "Questions.csv"),
    "unknown answer letter": (_unknown_answer, {}, "Questions.csv"),
    "malformed JSONL row": (_bad_pope_jsonl, {}, "coco_pope_popular.json"),
    "truncated image": (_truncated_image, {}, "3.jpg"),
    "empty dataset": (_empty_dataset, {}, "Questions.csv"),
    "model without an image token": (_no_image_token_model, {}, "no image token id"),
    "image token in a question": (_image_token_in_a_question, {}, "the question contains '<image>'"),
    "unknown metric": (lambda p: ["--data-dir", str(SAMPLE), "--metric", "nope"], {}, "has no metric 'nope'"),
    "decompression bomb": (_huge_image(30000), {}, "3.jpg: refused as a decompression bomb"),
    "image over the pixel limit": (
        _huge_image(12000),
        {},
        "3.jpg: 12000x12000 is 144000000 pixels, more than",
    ),
    "unreachable database": (
        lambda p: ["--data-dir", str(SAMPLE)],
        {
            "VARSWEEP_DATABASE_URL": "postgresql://varsweep:hunter2@127.0.0.1:9/varsweep",
            "VARSWEEP_CONNECT_TIMEOUT": "1",
        },
        "is unreachable",
    ),
    "unwritable MLflow location": (
        lambda p: ["--data-dir", str(SAMPLE)],
        {"MLFLOW_TRACKING_URI": "sqlite:////proc/varsweep/mlruns.db"},
        "cannot use MLflow",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path):
    make_args, env, expected = BAD_INPUTS[case]
    args = make_args(tmp_path)
    if "--task" not in args:
        args = ["--task", "mmvp", *args]
    workdir = tmp_path / "work"
    workdir.mkdir()
    out = subprocess.run(
        [sys.executable, str(REPO / "sweep" / "main.py"), *args, "--trials", "3"],
        cwd=workdir,
        env=BASE_ENV | env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "hunter2" not in out.stderr + out.stdout
    # nothing half-written: no sweep recorded, no study, no MLflow runs
    db = workdir / "varsweep.db"
    if db.exists():
        url = f"sqlite:///{db}"
        assert Store(url).sweeps() == []
        assert optuna.get_all_study_names(url) == []
    if (workdir / "mlruns.db").exists():
        client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
        assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


def test_database_password_never_reaches_logs_or_mlflow(tmp_path):
    secret = "Pa55-word-never-logged"
    with postgres_database() as url:
        with_password = url.replace(
            "postgres@", f"postgres:{secret}@"
        )  # the test server trusts; the URL still has it
        sweep = Sweep(tmp_path / "work", *sweep_args(3), env={"VARSWEEP_DATABASE_URL": with_password})
        assert sweep.finish() == 0, sweep.text()[-3000:]
        assert secret not in sweep.text()
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'work' / 'mlruns.db'}")
        experiment = client.get_experiment_by_name(STUDY)
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        assert runs
        for run in runs:
            blob = json.dumps({"params": run.data.params, "tags": run.data.tags})
            assert secret not in blob
        parent = next(r for r in runs if r.data.tags.get("varsweep.kind") == "study")
        assert "***" in parent.data.tags["settings.database"]
        (row,) = Store(url).best()
        assert secret not in json.dumps(row.to_dict(), default=str)
