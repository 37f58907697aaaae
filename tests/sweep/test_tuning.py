"""StudySearcher: Tune's searcher over Optuna's ask-and-tell, with how each trial ended told honestly."""

from __future__ import annotations

import pickle

import optuna
import pytest

from sweep.search import space_for
from sweep.trial import COMPLETE, EXAMPLES_SEEN, OBJECTIVE
from sweep.tuning import StudySearcher, finished_trials, open_study, prepare_study

State = optuna.trial.TrialState


@pytest.fixture()
def study(tmp_path):
    return open_study(name="m:mmvp:paper", url=f"sqlite:///{tmp_path / 's.db'}", direction="maximize", seed=0)


def result(value, seen, complete):
    return {OBJECTIVE: value, EXAMPLES_SEEN: seen, COMPLETE: complete}


def test_queued_points_first_then_the_sampler_and_every_ending_told(study):
    space = space_for("vision-centric", "paper")
    assert prepare_study(study, space) == 0
    searcher = StudySearcher(study, space, mode="max")
    configs = [searcher.suggest(f"t{i}") for i in range(4)]
    assert [c["role"] for c in configs] == ["baseline", "paper-defaults", "search", "search"]
    assert configs[0]["p"] == 0.0 and [c["trial_number"] for c in configs] == [0, 1, 2, 3]
    assert len({(c["tau"], c["rho"], c["p"]) for c in configs}) == 4  # running trials are told apart

    searcher.on_trial_result("t0", result(0.5, 4, False))
    searcher.on_trial_result("t0", result(0.6, 14, True))
    searcher.on_trial_complete("t0", result(0.6, 14, True))
    searcher.on_trial_result("t1", result(0.25, 4, False))
    searcher.on_trial_complete("t1", result(0.25, 4, False))  # stopped by the scheduler at its first rung
    searcher.on_trial_complete("t2", error=True)
    trials = study.get_trials()
    assert [t.state for t in trials] == [State.COMPLETE, State.PRUNED, State.FAIL, State.RUNNING]
    assert trials[0].value == 0.6 and trials[0].intermediate_values == {4: 0.5, 14: 0.6}
    assert trials[1].value == 0.25 and trials[1].intermediate_values == {
        4: 0.25
    }  # the last intermediate value
    assert study.best_trial.number == 0 and len(finished_trials(study)) == 2


def test_pickled_searcher_holds_no_storage_url(tmp_path):
    secret = "hunter2"
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / (secret + '.db')}")
    blob = pickle.dumps(StudySearcher(study, space_for("general", "paper"), mode="max"))
    assert secret.encode() not in blob and b"sqlite" not in blob


def test_a_trial_left_by_an_ask_cut_short_is_failed_requeued_and_not_counted(study):
    """The database went away between creating a trial and recording its owner: the ask was tried again, and the
    trial it made first runs nowhere. The next ask fails it, queues its configuration again, and does not count it
    against the study's total."""
    space = space_for("vision-centric", "paper")
    prepare_study(study, space)
    orphan = study.ask()  # takes the baseline from the queue; no owner recorded
    searcher = StudySearcher(study, space, mode="max", owner="me", limit=2)
    configs = [searcher.suggest(f"t{i}") for i in range(3)]
    trials = study.get_trials()
    assert trials[orphan.number].state == State.FAIL
    assert [c["role"] for c in configs[:2]] == ["paper-defaults", "baseline"]  # the baseline runs after all
    assert (
        configs[1]["p"] == 0.0 and trials[configs[1]["trial_number"]].user_attrs["retry_of"] == orphan.number
    )
    assert configs[2] == StudySearcher.FINISHED  # the limit counts the two owned trials, not the orphan
