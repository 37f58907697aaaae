"""Planning a sweep (sweep/plan.py): every check before anything is written, on the repository's MMVP sample."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from sweep.plan import MAX_STUDY_NAME, SweepRequest, data_fingerprint, plan_sweep, slug, split_groups
from var_core.errors import ConfigError, VarsweepError

SAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "mmvp-sample")


def request(**changes) -> SweepRequest:
    return dataclasses.replace(SweepRequest(task="mmvp", data_dir=SAMPLE), **changes)


def test_a_plan_splits_by_group_and_records_what_the_study_optimises():
    plan = plan_sweep(request())
    tuning = {e.group for e in plan.tuning.examples}
    heldout = {e.group for e in plan.heldout.examples}
    assert tuning and heldout and not tuning & heldout  # an MMVP pair is never split
    assert tuning | heldout == set(plan.task.groups)
    assert (plan.metric, plan.direction, plan.model_key) == ("pair_accuracy", "maximize", "tiny-llava")
    assert plan.identity == {
        "model": "tiny-llava",
        "task": "mmvp",
        "convention": "paper",
        "metric": "pair_accuracy",
        "direction": "maximize",
        "data": plan.fingerprint,
        "split": None,
        "limit": None,
        "holdout": 0.3,
        "seed": 0,
    }
    assert len(plan.rungs) == 1  # no early stopping: one rung of every tuning group
    assert plan.study_name == "tiny-llava:mmvp:paper"


def test_asha_plans_rungs_over_the_tuning_groups_only():
    plan = plan_sweep(request(early_stop="asha"))
    last = len(plan.rungs) - 1
    assert len(plan.rungs) > 1 and set(plan.rungs.seen(last)) == {e.group for e in plan.tuning.examples}


def test_the_split_is_seeded_and_keeps_at_least_one_group_each_side():
    groups = [f"g{i}" for i in range(10)]
    assert split_groups(groups, holdout=0.3, seed=1) == split_groups(groups, holdout=0.3, seed=1)
    assert split_groups(groups, holdout=0.3, seed=1) != split_groups(groups, holdout=0.3, seed=2)
    tuning, heldout = split_groups(groups, holdout=0.3, seed=0)
    assert len(heldout) == 3 and sorted(tuning + heldout) == sorted(groups)
    assert [len(side) for side in split_groups(["a", "b"], holdout=0.01, seed=0)] == [1, 1]
    assert [len(side) for side in split_groups(["a", "b"], holdout=0.99, seed=0)] == [1, 1]
    with pytest.raises(ConfigError, match="--holdout 1.0 is out of range"):
        split_groups(groups, holdout=1.0, seed=0)
    with pytest.raises(ConfigError, match="need at least 2"):
        split_groups(["a"], holdout=0.5, seed=0)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"batch": 0}, "--batch 0 is out of range"),
        ({"early_stop": "median"}, "--early-stop 'median' is not one of"),
        ({"device": "tpu"}, "--device 'tpu' is not one of"),
        ({"sink_dims": (1, 2), "discover_sink_dims": True}, "exclude each other"),
        ({"study": "s" * (MAX_STUDY_NAME + 1)}, f"at most {MAX_STUDY_NAME}"),
        ({"study": "tab\there"}, "use printable characters"),
        ({"metric": "nope"}, "has no metric 'nope'"),
        ({"task": "mmvq"}, "unknown task 'mmvq'"),
    ],
)
def test_bad_options_fail_in_one_line_before_anything_loads(changes, message):
    with pytest.raises(VarsweepError, match=message) as raised:
        plan_sweep(request(**changes))
    assert "\n" not in str(raised.value)


def test_planning_a_preset_loads_no_torch():
    """The driver plans with the preset's facts (workers.catalog): torch waits for the workers."""
    code = (
        "import sys; from sweep.plan import SweepRequest, plan_sweep; "
        f"plan_sweep(SweepRequest(task='mmvp', data_dir={SAMPLE!r})); "
        "print(sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_fingerprint_follows_the_data_and_slugs_keep_names_apart():
    plan = plan_sweep(request())
    assert data_fingerprint(plan.task) == plan.fingerprint and len(plan.fingerprint) == 16
    assert data_fingerprint(plan.task.select(plan.task.groups[:3])) != plan.fingerprint
    assert slug("a/b c") != slug("a_b c") and slug("a/b c").startswith("a_b_c-")
    assert slug("研究").startswith("study-")
