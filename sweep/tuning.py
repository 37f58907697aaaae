"""Ray Tune + Optuna (TPE) over VAR's parameters, with the Optuna study in the settings database.

The study is the sweep's memory, and several drivers may share it (Optuna's RDB storage is made for that):

* ``--trials N`` is the study's total. Every driver asks for a trial only while fewer than N are finished
  (complete or pruned) or running, counted under a database lock on PostgreSQL, so together they finish with N
  (SQLite hosts one driver per study: ``sweep.records`` refuses a second).
* Each trial records the sweep (driver) that runs it. A starting driver fails the RUNNING trials of drivers
  whose lease ran out (killed, or their node lost) and queues their parameters again; it never touches the trials
  of a live driver. A driver that is interrupted fails and re-queues its own running trials before it stops.
* A new study starts with the baseline (VAR off), the paper's defaults and, optionally, warm-start points. The
  TPE sampler is seeded with the seed, the trials already there and the number of other live drivers, so a
  resumed sweep does not replay the same random start-up and two drivers do not propose the same points.
* The study records what it optimises (:func:`open_study`): a sweep that asks for something else is refused.

Tune schedules the trials; :class:`StudySearcher` asks the study for each one and tells it how the trial ended.
Batches: up to ``batch`` trials run at once (Tune's concurrency), and TPE proposes each with the others still
running counted as bad values (its constant liar), so a batch holds distinct configurations. With early stopping
(``--early-stop asha``) a trial reports after each rung of tuning groups (:mod:`sweep.fidelity`) and Tune's ASHA
scheduler stops the ones that fall behind; they end PRUNED in the study. Every trial sends its configuration to
every ModelWorker, which gathers the concurrent ones into one engine batch. Trial processes are thin
(:mod:`sweep.trial`: no torch) and reused from trial to trial; a running trial holds no CPU or GPU (only the memory
it uses): the models live in the ModelWorker actors. Every database call here waits out an outage
(:mod:`sweep.retry`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ray.tune import Callback
from ray.tune.search import Searcher

from sweep import signals
from sweep.fidelity import REDUCTION_FACTOR, Rungs
from sweep.retry import ReadOnlyDatabaseError, retrying
from sweep.search import BASELINE, PAPER_DEFAULTS, SearchSpace, StartPoint
from sweep.trial import COMPLETE, EXAMPLES_SEEN, FAILURE, FIDELITY, OBJECTIVE, TrialReport, run_trial
from var_core.errors import ConfigError, VarsweepError

__all__ = [
    "open_study",
    "prepare_study",
    "run_search",
    "completed_trials",
    "finished_trials",
    "StudyError",
    "StudyMismatchError",
    "SearchHooks",
    "StudySearcher",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
ROLE = "role"
SOURCE = "source"  # where a warm-start point came from (Optuna user attribute, MLflow tag)
OWNER = "sweep"  # the sweep (driver) that runs a trial
RETRY_OF = "retry_of"  # the trial number a re-queued trial repeats
IDENTITY = "varsweep.identity"  # what a study optimises (a study user attribute)
# Tune's "no more trials" (a str, though Searcher.suggest says dict | None)
_FINISHED: Any = Searcher.FINISHED
TRIAL_MEMORY = 256 * 2**20  # bytes a thin trial process holds (Ray's memory resource); 240 MiB RSS measured
NODE_ID_LABEL = "ray.io/node-id"  # Ray's default label naming each node


class StudyError(VarsweepError, RuntimeError):
    """The Optuna study cannot be opened or used."""


class StudyMismatchError(StudyError, ConfigError):
    """The study exists and optimises something else than this sweep asks for."""


def _db(operation: Callable[[], T], what: str, outage_timeout: float, url: str | None = None) -> T:
    """``operation()`` on the study's database (at ``url``), waiting out an outage; what fails stays one line."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    from sweep.settings import first_line

    try:
        return retrying(operation, what=what, seconds=outage_timeout, url=url)
    except ReadOnlyDatabaseError as e:
        raise StudyError(f"cannot {what} in the study's database: {e}") from e
    except (SQLAlchemyError, StorageInternalError) as e:  # Optuna wraps SQLAlchemy's errors in its own
        root: BaseException = e
        while root.__cause__ is not None:
            root = root.__cause__
        cause = first_line(getattr(root, "orig", None) or root)
        raise StudyError(f"cannot {what} in the study's database: {cause}") from e


def open_study(
    *,
    name: str,
    url: str,
    direction: str,
    seed: int,
    identity: Mapping[str, Any] | None = None,
    other_drivers: int = 0,
    outage_timeout: float = 600.0,
) -> Any:
    """Load or create the study.

    ``identity`` (model, task, convention, metric, direction, data, split...) is recorded on a new study; a study
    that recorded another one is refused, naming the difference. The TPE sampler is seeded with ``seed`` + the
    trials already in the study + ``other_drivers`` (the live drivers of the study besides this one).
    """
    import optuna
    from optuna.study import StudyDirection
    from sqlalchemy.exc import SQLAlchemyError

    from sweep.settings import first_line, redact_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    identity = dict(identity or {})

    def load() -> Any:
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        existing = {
            s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        }
        if name in existing:
            summary = existing[name]
            _check_identity(name, dict(summary.user_attrs.get(IDENTITY, {})), identity)
            stored = summary.direction.name.lower()
            if stored != direction:
                raise StudyMismatchError(
                    f"study {name!r} optimises {stored}, this sweep {direction}: use another --study"
                )
            n_trials = summary.n_trials
        else:
            n_trials = 0
        sampler = optuna.samplers.TPESampler(seed=seed + n_trials + other_drivers, constant_liar=True)
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction=StudyDirection[direction.upper()],
            sampler=sampler,
            load_if_exists=True,
        )
        if IDENTITY not in study.user_attrs:
            study.set_user_attr(IDENTITY, identity)
        return study

    try:
        return _db(load, "open the study", outage_timeout, url)
    except SQLAlchemyError as e:
        raise StudyError(f"cannot open the Optuna study at {redact_url(url)}: {first_line(e)}") from e


def _check_identity(name: str, stored: dict[str, Any], wanted: dict[str, Any]) -> None:
    differences = [
        f"{key} {stored[key]!r} (this sweep: {wanted.get(key)!r})"
        for key in stored
        if key in wanted and stored[key] != wanted[key]
    ]
    if differences:
        raise StudyMismatchError(
            f"study {name!r} was made for {'; '.join(differences)}: resume it with the same settings, or give "
            f"this sweep a study of its own (--study {name}-2, say)"
        )


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


def _requeue(study: Any, trial: Any) -> None:
    """Queue ``trial``'s configuration again, marked as its retry (so it runs on the next ask); a trial with no
    configuration yet (neither sampled nor taken from the queue) leaves nothing to queue."""
    params = dict(trial.params) or dict(trial.system_attrs.get("fixed_params", {}))
    if params:
        attrs = {k: v for k, v in trial.user_attrs.items() if k in (ROLE, SOURCE)}
        study.enqueue_trial(params, user_attrs=attrs | {RETRY_OF: trial.number})


def prepare_study(
    study: Any,
    space: SearchSpace,
    warm: Sequence[StartPoint] = (),
    *,
    live: frozenset[str] = frozenset(),
    outage_timeout: float = 600.0,
    url: str | None = None,
) -> int:
    """Fail the RUNNING trials no live driver runs (``live``: their sweep ids) and queue their parameters again;
    queue the starting points of a new study: the baseline, the paper's defaults, then ``warm`` (stored best
    settings of related sweeps, in order).

    Returns the number of finished (complete or pruned) trials.
    """
    import optuna

    state = optuna.trial.TrialState

    def prepare() -> int:
        trials = study.get_trials(deepcopy=False)
        for trial in trials:
            if trial.state == state.RUNNING and trial.user_attrs.get(OWNER) not in live:
                study.tell(trial.number, state=state.FAIL)
                _requeue(study, trial)
                log.warning(
                    "trial %d was left running by a sweep that is gone: failed and queued again", trial.number
                )
        taken = (state.COMPLETE, state.PRUNED, state.WAITING, state.RUNNING)
        done_roles = {t.user_attrs.get(ROLE) for t in study.get_trials(deepcopy=False, states=taken)}
        for point in (
            StartPoint(BASELINE, space.baseline()),
            StartPoint(PAPER_DEFAULTS, space.paper_defaults()),
        ):
            if point.role not in done_roles:
                study.enqueue_trial(point.params, user_attrs={ROLE: point.role})
        if not trials:  # a new study: warm start from what related sweeps found
            for point in warm:
                study.enqueue_trial(point.params, user_attrs={ROLE: point.role, SOURCE: point.source})
                log.info("warm start: queued %s from %s", _describe(point.params), point.source)
        return len(finished_trials(study))

    return _db(prepare, "prepare the study", outage_timeout, url)


def _describe(params: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.3g}" for k, v in params.items())


class StudySearcher(Searcher):
    """Ray Tune's searcher interface over Optuna's ask-and-tell: every Tune trial is one trial of the study.

    ``suggest`` asks the study (queued points first, then the sampler: TPE, which counts the running trials as
    bad values, its constant liar), as long as fewer than ``limit`` trials are finished or running, and records
    ``owner`` (this sweep) on the trial; ``on_trial_result`` reports each rung's value as the trial's intermediate
    value at step = examples seen; ``on_trial_complete`` tells the study how the trial ended: COMPLETE with its
    value when it saw every tuning example, PRUNED (Optuna then keeps the last intermediate value) when the
    scheduler stopped it early, FAIL on an error or a failed metric. :meth:`abandon` fails and re-queues the
    trials still running (the sweep is being stopped). Tune pickles its searcher with the experiment's state: only
    the study's name goes in, never the study (its storage URL may hold a password).
    """

    def __init__(
        self,
        study: Any,
        space: SearchSpace,
        *,
        mode: str,
        owner: str = "",
        limit: int | None = None,
        lock: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
        outage_timeout: float = 600.0,
        url: str | None = None,
    ) -> None:
        super().__init__(metric=OBJECTIVE, mode=mode)
        self._url = url
        self._study = study
        self._space = space
        self._owner, self._limit, self._lock, self._outage = owner, limit, lock, outage_timeout
        self._trials: dict[str, Any] = {}  # Tune trial id -> the Optuna trial it runs
        self._steps: dict[str, set[int]] = {}  # Tune trial id -> steps already reported to Optuna
        # the first error of the study's database: Tune would turn it into a traceback of its own, so the search
        # is ended instead (no more trials are asked for) and run_search raises it, in one line
        self.error: StudyError | None = None

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.error is not None:
            return _FINISHED
        try:
            return self._suggest(trial_id)
        except StudyError as e:
            self.error = self.error or e
            return _FINISHED

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if not result.get(FAILURE):
            self._recorded(self._report, trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        self._recorded(self._complete, trial_id, result, error)

    def _recorded(self, method: Callable[..., None], *args: Any) -> None:
        try:
            method(*args)
        except StudyError as e:
            log.warning("%s", e)
            self.error = self.error or e

    def _suggest(self, trial_id: str) -> dict[str, Any] | None:
        import optuna

        def ask() -> Any:
            state = optuna.trial.TrialState
            with self._lock():  # other drivers count and ask in turn
                started = self._study.get_trials(
                    deepcopy=False, states=(state.COMPLETE, state.PRUNED, state.RUNNING)
                )
                # a trial made by an ask that failed half-way (the database went away before its owner was
                # written) runs nowhere: fail it (and queue its parameters again) before it is counted
                for orphan in [t for t in started if t.state == state.RUNNING and OWNER not in t.user_attrs]:
                    self._study.tell(orphan.number, state=state.FAIL)
                    _requeue(self._study, orphan)
                    started.remove(orphan)
                if self._limit is not None and len(started) >= self._limit:
                    return None
                trial = self._study.ask()
                trial.set_user_attr(OWNER, self._owner)
                return trial

        trial = _db(ask, "ask the study for a trial", self._outage, self._url)
        if trial is None:
            return _FINISHED
        _db(lambda: self._space.suggest(trial), "record a trial's parameters", self._outage, self._url)
        self._trials[trial_id] = trial
        attrs = trial.user_attrs
        return {
            **trial.params,
            "trial_number": trial.number,
            ROLE: attrs.get(ROLE, "search"),
            SOURCE: attrs.get(SOURCE, ""),
        }

    def _complete(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        import optuna

        trial = self._trials.get(trial_id)
        if trial is None:
            return
        state = optuna.trial.TrialState
        if error or not result or OBJECTIVE not in result or result.get(FAILURE):
            _db(
                lambda: self._study.tell(trial, state=state.FAIL),
                "record a failed trial",
                self._outage,
                self._url,
            )
        else:
            # Tune hands the result that ended the trial (its last rung, or the one the scheduler stopped it
            # at) to this method only: it is the trial's last intermediate value
            self._report(trial_id, result)
            if result.get(COMPLETE):
                _db(
                    lambda: self._study.tell(trial, result[OBJECTIVE]),
                    "record a trial",
                    self._outage,
                    self._url,
                )
            else:
                _db(
                    lambda: self._study.tell(trial, state=state.PRUNED),
                    "record a pruned trial",
                    self._outage,
                    self._url,
                )
        del self._trials[trial_id]
        self._steps.pop(trial_id, None)

    def abandon(self) -> list[int]:
        """Fail the trials still running and queue their configurations again; returns their numbers."""
        import optuna

        numbers = []
        for trial in self._trials.values():
            frozen = self._study.get_trials(deepcopy=False)[trial.number]
            self._study.tell(trial, state=optuna.trial.TrialState.FAIL)
            _requeue(self._study, frozen)
            numbers.append(trial.number)
        self._trials.clear()
        return numbers

    def _report(self, trial_id: str, result: dict[str, Any]) -> None:
        step = int(result[EXAMPLES_SEEN])
        if step not in self._steps.setdefault(trial_id, set()):
            value = result[OBJECTIVE]
            _db(
                lambda: self._trials[trial_id].report(value, step=step),
                "record a rung",
                self._outage,
                self._url,
            )
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

    # trial number, role, params, warm-start source
    on_start: Callable[[int, str, dict[str, float], str], None]
    on_rung: Callable[[TrialReport], None]  # every report, the last one (complete or not) included
    on_end: Callable[[TrialReport], None]  # the last report of a trial that finished (complete or pruned)
    # trial number, one line (Tune may retry a crashed trial: it restarts)
    on_error: Callable[[int, str], None]


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
    owner: str = "",
    lock: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
    outage_timeout: float = 600.0,
    url: str | None = None,
) -> int:
    """Run the trials still missing from ``trials`` (complete or pruned), up to ``batch`` at once; returns how
    many this driver ran. With ``early_stop="asha"``, Tune's ASHA scheduler stops the trials that fall behind."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    remaining = trials - len(finished_trials(study))
    if remaining <= 0:
        return 0
    # Tune's own SIGINT handler would end fit() quietly and let the sweep go on to a held-out run: the sweep's
    # (sweep.signals) takes Ctrl-C and SIGTERM instead. Of Tune's per-trial files only result.json is kept (its
    # result grid reads it back); CSV, TensorBoard and the console tables are not wanted: MLflow and our log lines
    # replace them.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    mode = "max" if direction == "maximize" else "min"
    concurrency = max(1, min(batch, remaining))
    searcher = StudySearcher(
        study, space, mode=mode, owner=owner, limit=trials, lock=lock, outage_timeout=outage_timeout, url=url
    )
    reporter = _Reporter(hooks)
    scheduler = None
    if early_stop == "asha" and len(rungs) > 1:
        scheduler = ASHAScheduler(
            time_attr=FIDELITY,
            metric=OBJECTIVE,
            mode=mode,
            max_t=rungs.clock[-1],
            grace_period=rungs.clock[0],
            reduction_factor=REDUCTION_FACTOR,
        )
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, actors=actors, task=task, metric=metric, convention=space.convention, rungs=rungs
        ),
        _beside_driver(),
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
            scheduler=scheduler,
            num_samples=remaining,
            reuse_actors=True,  # a trial process serves trial after trial: its imports are paid once
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name="search",
            storage_path=str(storage_path.resolve()),
            callbacks=[reporter, JsonLoggerCallback()],
            failure_config=tune.FailureConfig(max_failures=2),
            verbose=0,
        ),
    )
    try:
        with signals.deferred():
            tuner.fit()
    except signals.Interrupted:
        abandoned = _db(searcher.abandon, "queue the running trials again", outage_timeout, url)
        if abandoned:
            log.warning("trials %s were running: failed and queued again", ", ".join(map(str, abandoned)))
        raise
    if searcher.error is not None:
        raise searcher.error
    return remaining


def _beside_driver() -> Any:
    """Where a trial process runs and what it holds: on the driver's node (the head, under ``ray job submit``),
    with no CPU or GPU and :data:`TRIAL_MEMORY` of memory. Placed anywhere else, a lost node took its trial
    processes along, and Tune gave such a trial up at once (each of the dead process's pending calls counts as a
    failure of its own; seen: ``max_failures=2`` spent in one moment). No CPU: a trial only waits on the workers,
    and a fraction of a CPU held by trials could keep a worker that lost its node from being placed again."""
    import ray
    from ray import tune

    return tune.PlacementGroupFactory(
        [{"CPU": 0, "memory": TRIAL_MEMORY}],
        bundle_label_selector=[{NODE_ID_LABEL: ray.get_runtime_context().get_node_id()}],
    )


def trials_beside_driver() -> tuple[int, float]:
    """How many trial processes the driver's node holds (they all run there: :func:`_beside_driver`), and its
    memory (Ray's resource, in bytes)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    memory = next((float(n["Resources"].get("memory", 0.0)) for n in ray.nodes() if n["NodeID"] == node), 0.0)
    return int(memory // TRIAL_MEMORY), memory


def _trial_name(trial: Any) -> str:
    """Tune's name (and folder) for a trial: the study's trial number, not its whole configuration."""
    return f"trial-{trial.config['trial_number']:04d}"


class _Reporter(Callback):
    """Tune callback on the driver: hands each trial's start, reports and end to the sweep's hooks, and stops the
    search at a safe point when a signal came (see :mod:`sweep.signals`)."""

    def __init__(self, hooks: SearchHooks) -> None:
        self.hooks = hooks

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment's state; the hooks (the sweep's live objects: threads,
        # clients) stay in this process
        return {}

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        signals.check()

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        config = trial.config
        params = {k: float(v) for k, v in config.items() if k in ("tau", "rho", "p", "summ")}
        self.hooks.on_start(
            int(config["trial_number"]), str(config[ROLE]), params, str(config.get(SOURCE, ""))
        )

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any
    ) -> None:
        if not result.get(FAILURE):
            self.hooks.on_rung(TrialReport.from_result(result))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        if result.get(FAILURE):
            self.hooks.on_error(int(trial.config["trial_number"]), str(result[FAILURE]))
        elif OBJECTIVE in result:
            self.hooks.on_end(TrialReport.from_result(result))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        error = getattr(trial, "error_msg", None) or "the trial process raised"
        line = next((s for s in reversed(str(error).strip().splitlines()) if s.strip()), "the trial raised")
        self.hooks.on_error(int(trial.config["trial_number"]), line.strip())
