"""Ray Tune + OptunaSearch (TPE) over VAR's parameters, with the Optuna study in the settings database.

The study is the sweep's memory: re-running the same command loads it, fails trials a crash left RUNNING and
queues their parameters again, seeds the sampler with the number of trials already there (so a resumed sweep does
not replay the same random start-up), and runs only the trials still missing from ``--trials``. The baseline
(VAR off) and the paper's defaults are queued first when the study is new. Trials hold a quarter CPU and no GPU:
the model lives in the ModelWorker actors, which every trial calls (ECOSYSTEM.md, "Ray Tune + Optuna").
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.storages import RDBStorage
from ray.tune import Callback

from sweep.search import BASELINE, PAPER_DEFAULTS, SearchSpace, config_from_params
from var_core import VARStats
from var_core.errors import VarsweepError

__all__ = ["TrialOutcome", "open_study", "prepare_study", "run_search", "completed_trials", "StudyError"]

log = logging.getLogger(__name__)
OBJECTIVE = "objective"
_ROLE = "role"


class StudyError(VarsweepError, RuntimeError):
    """The Optuna study cannot be opened or does not match this sweep."""


@dataclass(frozen=True)
class TrialOutcome:
    """One finished trial, as the driver sees it."""

    number: int
    role: str
    params: dict[str, float]
    objective: float
    metrics: dict[str, float]
    var_stats: dict[str, float]
    layer_head: dict[str, list[list[float]]]  # "selected_share", "mean_ratio": [layers][heads]


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
        sampler = optuna.samplers.TPESampler(seed=seed + n_trials)
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


def _trial_fn(config: dict[str, Any], *, actors: list[Any], task: Any, metric: str, convention: str) -> None:
    """One trial, in a Tune trial process: every worker evaluates the configuration on its tuning examples."""
    import ray
    from ray import tune

    from workers.actor import merge_results

    var_config = config_from_params(config, convention)  # type: ignore[arg-type]
    result = merge_results(ray.get([a.evaluate.remote([var_config], "tuning") for a in actors]))[0]
    scores = task.score(result.answers)
    # VAR off selects and moves nothing: its statistics are zeros, so runs compare column by column
    stats = result.stats or VARStats.empty(1, 1, 1)
    layer_head = {"selected_share": stats.selected_share[0].tolist(), "mean_ratio": stats.mean_ratio[0].tolist()}
    value = scores[metric]
    if not math.isfinite(value):
        raise VarsweepError(f"metric {metric} is {value} for {config}")
    tune.report(
        {
            OBJECTIVE: value,
            **{f"metric/{k}": v for k, v in scores.items()},
            **{f"var/{k}": v for k, v in stats.summary().items()},
            "layer_head": layer_head,
        }
    )


def run_search(
    *,
    study: Any,
    space: SearchSpace,
    trials: int,
    actors: list[Any],
    task: Any,
    metric: str,
    direction: str,
    concurrency: int,
    storage_path: Path,
    on_trial: Callable[[TrialOutcome], None],
) -> int:
    """Run the trials still missing from ``trials``; returns how many ran. ``on_trial`` sees each outcome."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    remaining = trials - len(completed_trials(study))
    if remaining <= 0:
        return 0
    # Ctrl-C must reach the sweep (which fails the running trial and stops the workers) rather than Tune's own
    # handler, which ends fit() quietly and would let the sweep go on to a held-out run. Tune's per-trial
    # CSV/JSON/TensorBoard files and its console tables are not wanted: MLflow and our log lines replace them.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    reporter = _Reporter(on_trial)
    searcher = OptunaSearch(
        space=_DefineByRun(space),
        metric=OBJECTIVE,
        mode="max" if direction == "maximize" else "min",
        storage=study._storage,
        study_name=study.study_name,
        sampler=study.sampler,
    )
    trainable = tune.with_resources(
        tune.with_parameters(_trial_fn, actors=actors, task=task, metric=metric, convention=space.convention),
        {"cpu": 0.25},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency), num_samples=remaining
        ),
        run_config=tune.RunConfig(
            name=f"varsweep-{study.study_name}".replace(":", "-").replace("/", "-"),
            storage_path=str(storage_path.resolve()),
            callbacks=[reporter],
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


def _outcome(config: Mapping[str, Any], result: Mapping[str, Any]) -> TrialOutcome:
    return TrialOutcome(
        number=int(config["trial_number"]),
        role=str(config[_ROLE]),
        params={k: float(v) for k, v in config.items() if k in ("tau", "rho", "p", "summ")},
        objective=float(result[OBJECTIVE]),
        metrics={k.split("/", 1)[1]: float(v) for k, v in result.items() if k.startswith("metric/")},
        var_stats={k.split("/", 1)[1]: float(v) for k, v in result.items() if k.startswith("var/")},
        layer_head=dict(result.get("layer_head", {})),
    )


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
    """Tune callback on the driver: hands each completed trial to the sweep (progress line, MLflow run).

    It also makes Ctrl-C stick: a KeyboardInterrupt that lands inside Ray or Tune internals can be turned into a
    trial failure and retried, so SIGINT is remembered and raised again at the next step of Tune's loop.
    """

    def __init__(self, on_trial: Callable[[TrialOutcome], None]) -> None:
        self.on_trial = on_trial
        self.interrupted = False  # a plain flag: Tune pickles its callbacks, and handlers run on the main thread

    @contextlib.contextmanager
    def watching_sigint(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def interrupt(signum: int, frame: Any) -> None:
            self.interrupted = True
            mute_worker_output()
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, interrupt)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self.interrupted:
            raise KeyboardInterrupt

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if trial.last_result and OBJECTIVE in trial.last_result:
            self.on_trial(_outcome(trial.config, trial.last_result))
