"""Ray Tune + OptunaSearch (TPE) over VAR's parameters, with the Optuna study in the settings database.

The study is the sweep's memory: re-running the same command loads it, fails trials a crash left RUNNING and
queues their parameters again, seeds the sampler with the number of trials already there (so a resumed sweep does
not replay the same random start-up), and runs only the trials still missing from ``--trials``. The baseline
(VAR off) and the paper's defaults are queued first when the study is new.

Batches: up to ``batch`` trials run at once (Tune's concurrency), and TPE proposes each with the others still
running counted as bad values (its constant liar), so a batch holds distinct configurations. Every trial sends its
configuration to every ModelWorker, which gathers the concurrent ones into one engine batch. Trial processes are
thin (:mod:`sweep.trial`: no torch) and reused from trial to trial; together the running trials hold one logical
CPU and no GPU: the models live in the ModelWorker actors.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.storages import RDBStorage
from ray.tune import Callback

from sweep.search import BASELINE, PAPER_DEFAULTS, SearchSpace
from sweep.trial import OBJECTIVE, TrialReport, run_trial
from var_core.errors import VarsweepError

__all__ = ["open_study", "prepare_study", "run_search", "completed_trials", "StudyError", "SearchHooks"]

log = logging.getLogger(__name__)
_ROLE = "role"


class StudyError(VarsweepError, RuntimeError):
    """The Optuna study cannot be opened or does not match this sweep."""


def _transient(error: BaseException) -> bool:
    """A lost connection (the server restarting), as opposed to an error a retry cannot fix."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OperationalError) or (isinstance(seen, DBAPIError) and seen.connection_invalidated):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retrying(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.outage_timeout
        delay = 0.5
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as e:
                if not _transient(e) or time.monotonic() + delay > deadline:
                    raise
                log.warning("study database unreachable (%s); retrying in %.1f s", method.__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

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
    import optuna

    return [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]


def prepare_study(study: Any, space: SearchSpace) -> int:
    """Fail trials a crash left RUNNING and queue their parameters again; queue the starting points of a new study.

    Returns the number of complete trials.
    """
    import optuna

    state = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    for trial in trials:
        if trial.state == state.RUNNING:
            study._storage.set_trial_state_values(trial._trial_id, state=state.FAIL)
            if trial.params:
                study.enqueue_trial(trial.params, user_attrs=dict(trial.user_attrs), skip_if_exists=True)
            log.warning("trial %d was left running by an earlier sweep: failed and queued again", trial.number)
    done_roles = {t.user_attrs.get(_ROLE) for t in trials if t.state in (state.COMPLETE, state.WAITING)}
    for role, point in ((BASELINE, space.baseline()), (PAPER_DEFAULTS, space.paper_defaults())):
        if role not in done_roles:
            study.enqueue_trial(point, user_attrs={_ROLE: role}, skip_if_exists=False)
    return len(completed_trials(study))


@dataclass(frozen=True)
class _DefineByRun:
    """Optuna's define-by-run space; a picklable object, since Tune checkpoints the searcher."""

    space: SearchSpace

    def __call__(self, trial: Any) -> dict[str, Any]:
        self.space.suggest(trial)
        return {"trial_number": trial.number, _ROLE: trial.user_attrs.get(_ROLE, "search")}


@dataclass(frozen=True)
class SearchHooks:
    """What the driver does as trials start and end (both called on Tune's loop: keep them quick)."""

    on_start: Callable[[int, str, dict[str, float]], None]  # trial number, role, params
    on_report: Callable[[TrialReport], None]
    on_error: Callable[[int], None]  # trial number (Tune may retry it: it then starts again)


def run_search(
    *,
    study: Any,
    space: SearchSpace,
    trials: int,
    batch: int,
    actors: list[Any],
    task: Any,
    metric: str,
    direction: str,
    storage_path: Path,
    hooks: SearchHooks,
) -> int:
    """Run the trials still missing from ``trials``, up to ``batch`` at once; returns how many ran."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    remaining = trials - len(completed_trials(study))
    if remaining <= 0:
        return 0
    # Ctrl-C must reach the sweep (which fails the running trial and stops the workers) rather than Tune's own
    # handler, which ends fit() quietly and would let the sweep go on to a held-out run. Of Tune's per-trial
    # files only result.json is kept (its result grid reads it back); CSV, TensorBoard and the console tables are
    # not wanted: MLflow and our log lines replace them.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    concurrency = max(1, min(batch, remaining))
    reporter = _Reporter(hooks)
    searcher = OptunaSearch(
        space=_DefineByRun(space),
        metric=OBJECTIVE,
        mode="max" if direction == "maximize" else "min",
        storage=study._storage,
        study_name=study.study_name,
        sampler=study.sampler,
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, actors=actors, task=task, metric=metric, convention=space.convention),
        {"cpu": 1 / concurrency},  # the running trials only wait on the workers: one logical CPU for them all
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
            num_samples=remaining,
            reuse_actors=True,  # a trial process serves trial after trial: its imports are paid once
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
        self.hooks.on_start(int(config["trial_number"]), str(config[_ROLE]), params)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if trial.last_result and OBJECTIVE in trial.last_result:
            self.hooks.on_report(TrialReport.from_result(trial.last_result))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.hooks.on_error(int(trial.config["trial_number"]))
