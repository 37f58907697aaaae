"""Every new offline preset sweeps through the CLI on examples/mmvp-sample, with VAR acting (seen in MLflow)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient
from services import BASE_ENV, REPO, SAMPLE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.mark.parametrize("preset", ["tiny-llava-next", "tiny-qwen2.5-vl", "tiny-internvl"])
def test_a_new_preset_sweeps_with_var_acting(preset, tmp_path):
    command = [
        sys.executable,
        str(REPO / "sweep" / "main.py"),
        "--task",
        "mmvp",
        "--data-dir",
        str(SAMPLE),
        "--model",
        preset,
        "--trials",
        "3",
        "--batch",
        "3",
    ]
    out = subprocess.run(command, cwd=tmp_path, env=BASE_ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"study {preset}:mmvp:paper: 3 trials (3 run now)" in out.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.get_experiment_by_name(f"{preset}:mmvp:paper")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.varsweep.kind = 'trial'")
    acted = [r for r in runs if r.data.tags["varsweep.role"] != "baseline"]
    assert len(acted) == 2
    for run in acted:
        assert run.data.metrics["var.selected_share"] > 0 and run.data.metrics["var.mass_moved_per_row"] > 0
