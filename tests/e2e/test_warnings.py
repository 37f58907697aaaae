"""No deprecation warning from our calls into transformers, Ray, Optuna or MLflow in a demo run.

A warning a library emits for its caller (``stacklevel``) is attributed to our module; here such warnings are
errors, in the driver (a real sweep, in this process) and on the model side (the engine on every preset).
"""

from __future__ import annotations

import warnings

import pytest
import ray
from services import SAMPLE

from sweep.service import SweepRequest, run_sweep
from sweep.settings import Settings
from var_core import VARConfig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

OURS = r"(sweep|workers|var_core|dashboards)(\.|$)"
PRESETS = ["tiny-llava", "tiny-llava-next", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-internvl"]


def strict() -> warnings.catch_warnings:
    caught = warnings.catch_warnings()
    caught.__enter__()
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("error", category=category, module=OURS)
    return caught


def test_the_demo_sweep_raises_no_deprecation_from_our_calls(tmp_path):
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'varsweep.db'}",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}",
    )
    caught = strict()
    try:
        outcome = run_sweep(
            SweepRequest(task="mmvp", data_dir=str(SAMPLE), trials=4, batch=4), settings, workdir=tmp_path
        )
    finally:
        caught.__exit__(None, None, None)
        ray.shutdown()
    assert outcome.trials_run == 4


@pytest.mark.parametrize("preset", PRESETS)
def test_the_engine_raises_no_deprecation_from_our_calls(preset, tmp_path):
    from workers.engine import EvalEngine
    from workers.models import load_model
    from workers.synthetic import write_gqa_folder, write_mmvp_folder
    from workers.tasks import get_task

    caught = strict()
    try:
        model, processor = load_model(preset, device="cpu")
        engine = EvalEngine(model, processor)
        options = get_task("mmvp", data_dir=str(write_mmvp_folder(tmp_path / "mmvp", pairs=1)))
        generation = get_task("gqa", data_dir=str(write_gqa_folder(tmp_path / "gqa", questions=1)))
        for task in (options, generation):
            results = engine.evaluate(task, [None, VARConfig(p=0.9)], task.examples)
            assert results[1].stats.summary()["selected_share"] > 0  # VAR acted
        engine.capture(options, options.examples[0], VARConfig(p=0.9))
    finally:
        caught.__exit__(None, None, None)
