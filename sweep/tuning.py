"""Ray Tune + Optuna (TPE) over VAR's parameters, with the Optuna study in the settings database.

The study is the sweep's memory: re-running the same command loads it, fails trials a crash left RUNNING and
queues their parameters again, seeds the sampler with the number of trials already there (so a resumed sweep does
not replay the same random start-up), and runs only the trials still missing from ``--trials``. The baseline
(VAR off) and the paper's defaults are queued first when the study is new.

Tune schedules the trials; :class:`StudySearcher` asks the study for each one and tells it how the trial ended.
Batches: up to ``batch`` trials run at once (Tune's concurrency), and TPE proposes each with the others still
running counted as bad values (its constant liar), so a batch holds distinct configurations. With early stopping
(``--early-stop asha``) a trial reports after each rung of tuning groups (:mod:`sweep.fidelity`) and Tune's ASHA
scheduler stops the ones that fall behind; they end PRUNED in the study. Every trial sends its
configuration to every ModelWorker, which gathers the concurrent ones into one engine batch. Trial processes are
thin (:mod:`sweep.trial`: no torch) and reused from trial to trial; together the running trials hold one logical
CPU and no GPU: the models live in the ModelWorker actors.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.storages import RDBStorage
from ray.tune import Callback
from ray.tune.search import Searcher

from sweep.fidelity import REDUCTION_FACTOR, Rungs
from sweep.retry import retrying
from sweep.search import BASELINE, PAPER_DEFAULTS, SearchSpace, StartPoint
from sweep.trial import COMPLETE, EXAMPLES_SEEN, FIDELITY, OBJECTIVE, TrialReport, run_trial
from var_core.errors import VarsweepError

__all__ = [
    "open_study",
    "prepare_study",
    "run_search",
    "completed_trials",
    "finished_trials",
    "StudyError",
    "SearchHooks",
    "StudySearcher",
]

log = logging.getLogger(__name__)
_ROLE = "role"
_SOURCE = "source"  # where a warm-start point came from (Optuna user attribute, MLflow tag)


class StudyError(VarsweepError, RuntimeError):
    """The Optuna study cannot be opened or does not match this sweep."""


def _retrying(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        return retrying(lambda: method(self, *args, **kwargs), what=method.__name__, seconds=self.outage_timeout)

    return wrapper


class RetryingRDBStorage(RDBStorage):
    """Optuna's RDBStorage that waits out a restarting database (up to ``outage_timeout`` seconds per call)
    instead of failing the call: Tune's Optuna searcher logs and drops a failed ``tell``, which would lose a
    completed trial."""

    outage_timeout: float = 600.0


# The public API, and the private methods Optuna's _CachedStorage calls on its backend (each opens a session).
_CACHE_CALLS = {"_create_new_trial", "_get_best_trial_id", "_get_stale_trial_ids", "_get_trials", "_set_trial_param"}
for _name, _method in inspect.getmembers(RDBStorage, inspect.isfunction):
    if isinstance(inspect.getattr_static(RDBStorage, _name), staticmethod | classmethod):
        continue
    if not _name.startswith("_") or _name in _CACHE_CALLS:
        setattr(RetryingRDBStorage, _name, _retrying(_method))


def open_study(*, name: str, url: str, direction: str, seed: int, outage_timeout: float = 600.0) -> Any:
    """Load or create the study; the TPE sampler is seeded with ``seed`` + the number of trials already in it."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    from sweep.settings import redact_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = RetryingRDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        storage.outage_timeout = outage_timeout
        try:
            study_id = storage.get_study_id_from_name(name)
        except KeyError:
            n_trials = 0
        else:
            stored = storage.get_study_directions(study_id)[0].name.lower()
            if stored != direction:
                raise StudyError(
                    f"study {name!r} optimises {stored}, this sweep {direction}: use another --study or --metric"
                )
            n_trials = len(storage.get_all_trials(study_id, deepcopy=False))
        sampler = optuna.samplers.TPESampler(seed=seed + n_trials, constant_liar=True)
        return optuna.create_study(
            study_name=name, storage=storage, direction=direction, sampler=sampler, load_if_exists=True
        )
    except SQLAlchemyError as e:
        raise StudyError(f"cannot open the Optuna study at {redact_url(url)}: {redact_url(str(e)).splitlines()[0]}") from e


def completed_trials(study: Any) -> list[Any]:
    """Trials that saw every tuning example (the only ones a best is chosen from)."""
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def finished_trials(study: Any) -> list[Any]:
    """Configurations tried to the end of their search: complete, or stopped early (pruned). ``--trials`` counts
    these."""
    import optuna

    state = optuna.trial.TrialState
    return study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED))


def prepare_study(study: Any, space: SearchSpace, warm: Sequence[StartPoint] = ()) -> int:
    """Fail trials a crash left RUNNING and queue their parameters again; queue the starting points of a new study:
    the baseline, the paper's defaults, then ``warm`` (stored best settings of related sweeps, in order).

    Returns the number of finished (complete or pruned) trials.
    """
    import optuna

    state = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    for trial in trials:
        if trial.state == state.RUNNING:
            study.tell(trial.number, state=state.FAIL)
            if trial.params:
                study.enqueue_trial(trial.params, user_attrs=dict(trial.user_attrs), skip_if_exists=True)
            log.warning("trial %d was left running by an earlier sweep: failed and queued again", trial.number)
    done_roles = {t.user_attrs.get(_ROLE) for t in trials if t.state in (state.COMPLETE, state.WAITING)}
    starts = [StartPoint(BASELINE, space.baseline()), StartPoint(PAPER_DEFAULTS, space.paper_defaults())]
    for point in starts:
        if point.role not in done_roles:
            study.enqueue_trial(point.params, user_attrs={_ROLE: point.role}, skip_if_exists=False)
    if not trials:  # a new study: warm start from what related sweeps found
        for point in warm:
            study.enqueue_trial(point.params, user_attrs={_ROLE: point.role, _SOURCE: point.source})
            log.info("warm start: queued %s from %s", _describe(point.params), point.source)
    return len(finished_trials(study))


def _describe(params: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.3g}" for k, v in params.items())


class StudySearcher(Searcher):
    """Ray Tune's searcher interface over Optuna's ask-and-tell: every Tune trial is one trial of the study.

    ``suggest`` asks the study (queued points first, then the sampler: TPE, which counts the running trials as
    bad values, its constant liar) and samples the search space; ``on_trial_result`` reports each rung's value
    as the trial's intermediate value at step = examples seen; ``on_trial_complete`` tells the study how the trial
    ended: COMPLETE with its value when it saw every tuning example, PRUNED (Optuna then keeps the last
    intermediate value) when the scheduler stopped it early, FAIL on an error. Tune pickles its searcher with the
    experiment's state: only the study's name goes in, never the study (its storage URL may hold a password).
    """

    def __init__(self, study: Any, space: SearchSpace, *, mode: str) -> None:
        super().__init__(metric=OBJECTIVE, mode=mode)
        self._study = study
        self._space = space
        self._trials: dict[str, Any] = {}  # Tune trial id -> the Optuna trial it runs
        self._steps: dict[str, set[int]] = {}  # Tune trial id -> steps already reported to Optuna

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        trial = self._study.ask()
        self._space.suggest(trial)
        self._trials[trial_id] = trial
        attrs = trial.user_attrs
        return {
            **trial.params, "trial_number": trial.number, _ROLE: attrs.get(_ROLE, "search"),
            _SOURCE: attrs.get(_SOURCE, ""),
        }  # fmt: skip

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        import optuna

        trial = self._trials.get(trial_id)
        if trial is None:
            return
        state = optuna.trial.TrialState
        if error or not result or OBJECTIVE not in result:
            self._study.tell(trial, state=state.FAIL)
        else:
            # Tune hands the result that ended the trial (its last rung, or the one the scheduler stopped it
            # at) to this method only: it is the trial's last intermediate value
            self._report(trial_id, result)
            if result.get(COMPLETE):
                self._study.tell(trial, result[OBJECTIVE])
            else:
                self._study.tell(trial, state=state.PRUNED)
        del self._trials[trial_id]
        self._steps.pop(trial_id, None)

    def _report(self, trial_id: str, result: dict[str, Any]) -> None:
        step = int(result[EXAMPLES_SEEN])
        if step not in self._steps.setdefault(trial_id, set()):
            self._trials[trial_id].report(result[OBJECTIVE], step=step)
            self._steps[trial_id].add(step)

    def __getstate__(self) -> dict[str, Any]:
        return {"study_name": self._study.study_name}

    def save(self, checkpoint_path: str) -> None:
        # the study itself is the sweep's memory (in its database); Tune's checkpoint holds no more than the name
        Path(checkpoint_path).write_text(json.dumps(self.__getstate__()))

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: a rerun of the sweep loads the study from its database."""


@dataclass(frozen=True)
class SearchHooks:
    """What the driver does as trials start, report and end (called on Tune's loop: keep them quick)."""

    on_start: Callable[[int, str, dict[str, float], str], None]  # trial number, role, params, warm-start source
    on_rung: Callable[[TrialReport], None]  # every report, the last one (complete or not) included
    on_end: Callable[[TrialReport], None]  # the last report of a trial that finished (complete or pruned)
    on_error: Callable[[int], None]  # trial number (Tune may retry it: it then starts again)


def run_search(
    *,
    study: Any,
    space: SearchSpace,
    trials: int,
    batch: int,
    rungs: Rungs,
    early_stop: str,
    actors: list[Any],
    task: Any,
    metric: str,
    direction: str,
    storage_path: Path,
    hooks: SearchHooks,
) -> int:
    """Run the trials still missing from ``trials`` (complete or pruned), up to ``batch`` at once; returns how
    many ran. With ``early_stop="asha"``, Tune's ASHA scheduler stops the trials that fall behind at a rung."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    remaining = trials - len(finished_trials(study))
    if remaining <= 0:
        return 0
    # Ctrl-C must reach the sweep (which fails the running trial and stops the workers) rather than Tune's own
    # handler, which ends fit() quietly and would let the sweep go on to a held-out run. Of Tune's per-trial
    # files only result.json is kept (its result grid reads it back); CSV, TensorBoard and the console tables are
    # not wanted: MLflow and our log lines replace them.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    mode = "max" if direction == "maximize" else "min"
    concurrency = max(1, min(batch, remaining))
    reporter = _Reporter(hooks)
    scheduler = None
    if early_stop == "asha" and len(rungs) > 1:
        scheduler = ASHAScheduler(
            time_attr=FIDELITY, metric=OBJECTIVE, mode=mode, max_t=rungs.clock[-1], grace_period=rungs.clock[0],
            reduction_factor=REDUCTION_FACTOR,
        )  # fmt: skip
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, actors=actors, task=task, metric=metric, convention=space.convention, rungs=rungs
        ),
        {"cpu": 1 / concurrency},  # the running trials only wait on the workers: one logical CPU for them all
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(StudySearcher(study, space, mode=mode), max_concurrent=concurrency),
            scheduler=scheduler,
            num_samples=remaining,
            reuse_actors=True,  # a trial process serves trial after trial: its imports are paid once
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=f"varsweep-{study.study_name}".replace(":", "-").replace("/", "-"),
            storage_path=str(storage_path.resolve()),
            callbacks=[reporter, JsonLoggerCallback()],
            failure_config=tune.FailureConfig(max_failures=2),
            verbose=0,
        ),
    )
    with reporter.watching_sigint():
        grid = tuner.fit()
    errors = [r.error for r in grid if r.error is not None]
    if reporter.interrupted:  # Tune returned though Ctrl-C came: the sweep must still stop
        raise KeyboardInterrupt
    if errors:
        log.warning("%d trial(s) failed after retries; first error: %s", len(errors), errors[0])
    return remaining


def _trial_name(trial: Any) -> str:
    """Tune's name (and folder) for a trial: the study's trial number, not its whole configuration."""
    return f"trial-{trial.config['trial_number']:04d}"


def mute_worker_output() -> None:
    """Stop printing Ray workers' output here: after Ctrl-C they are torn down mid-call, and what they print then
    (Ray's SIGTERM tracebacks) would bury the sweep's one-line message. Ray has no public switch for this after
    ``ray.init(log_to_driver=True)``; without the private dispatcher this does nothing."""
    try:
        from ray._private.worker import global_worker_stdstream_dispatcher
    except ImportError:
        return
    global_worker_stdstream_dispatcher.remove_handler("ray_print_logs")


class _Reporter(Callback):
    """Tune callback on the driver: hands each trial's start and report to the sweep's hooks.

    It also stops the search on Ctrl-C at a safe point: the signal only sets a flag, and KeyboardInterrupt is
    raised at the next step of Tune's loop. Raised where the signal lands, it could cut the study's database
    transaction short (SQLite then stays locked for the rest of the sweep) or be turned into a retried trial
    failure inside Ray or Tune. A second Ctrl-C raises at once.
    """

    def __init__(self, hooks: SearchHooks) -> None:
        self.hooks = hooks
        self.interrupted = False  # a plain flag: handlers run on the main thread

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment's state; the hooks (the sweep's live objects: threads,
        # clients) stay in this process and are given again to a restored Tuner
        return {"interrupted": self.interrupted}

    @contextlib.contextmanager
    def watching_sigint(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def interrupt(signum: int, frame: Any) -> None:
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True
            mute_worker_output()

        previous = signal.signal(signal.SIGINT, interrupt)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self.interrupted:
            raise KeyboardInterrupt

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        config = trial.config
        params = {k: float(v) for k, v in config.items() if k in ("tau", "rho", "p", "summ")}
        self.hooks.on_start(int(config["trial_number"]), str(config[_ROLE]), params, str(config.get(_SOURCE, "")))

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any) -> None:
        self.hooks.on_rung(TrialReport.from_result(result))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if trial.last_result and OBJECTIVE in trial.last_result:
            self.hooks.on_end(TrialReport.from_result(trial.last_result))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.hooks.on_error(int(trial.config["trial_number"]))
