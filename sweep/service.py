"""One sweep, end to end: plan, records, workers, search, held-out confirmation, and what is kept.

:func:`run_sweep` is the orchestration only; each step lives in its own module:

1. :mod:`sweep.plan` checks the request and plans the sweep (nothing is written before it succeeds).
2. :mod:`sweep.records` opens the store, the study and MLflow, takes the driver's lease, and closes them whatever
   happens.
3. :mod:`sweep.cluster` joins (or starts) Ray and places the ModelWorkers; they prepare their prefixes before the
   search starts its trial processes (on a GPU while it starts them).
4. :mod:`sweep.tuning` runs the search (Ray Tune + Optuna) over :mod:`sweep.trial`'s thin trials; the hooks here
   write each trial's MLflow run, off Tune's loop.
5. :mod:`sweep.confirm` puts the best configuration against VAR off on the held-out split.
6. The study's run gets the figures and the comparison; the best-settings table the row, when it is better.

SIGINT and SIGTERM end a sweep cleanly at any step (:mod:`sweep.signals`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep import signals
from sweep.plan import SweepPlan, SweepRequest, data_fingerprint, plan_sweep, slug, split_groups
from sweep.progress import Progress, bars
from sweep.search import full_params
from sweep.settings import Settings
from sweep.tracking import QuietWriter
from var_core.errors import VarsweepError

if TYPE_CHECKING:
    from sweep.confirm import Confirmation
    from sweep.records import SweepRecords
    from workers.tasks import PairedComparison

__all__ = [
    "SweepRequest",
    "SweepOutcome",
    "NothingToRun",
    "Utilization",
    "run_sweep",
    "split_groups",
    "data_fingerprint",
]

log = logging.getLogger("varsweep")
LAYER_HEAD = "var/layer_head.json"  # a trial run's [layer][head] statistics
SAMPLES = "samples.jsonl"  # per-example answers and scores (the tuning examples a trial saw)
LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local tracking store


@dataclass(frozen=True)
class Utilization:
    """How busy the workers were during the search (their own clocks), and what they did."""

    busy: float  # busy seconds of all workers / (workers x search seconds)
    evaluations: int  # (configuration, example) pairs evaluated in the search
    evaluations_per_second: float
    batch_sizes: dict[int, int]  # configurations per engine batch -> batches, all workers
    torch_in_trials: int  # trial processes that had torch loaded (should be 0: trials are thin)

    @classmethod
    def between(
        cls,
        before: Sequence[Any],
        after: Sequence[Any],
        *,
        seconds: float,
        torch_in_trials: int,
    ) -> Utilization:
        """From the workers' counters before and after the search, which lasted ``seconds`` (a restarted worker
        counts from zero)."""
        busy = evaluations = 0.0
        sizes: dict[int, int] = {}
        for old, new in zip(before, after, strict=True):
            restarted = new.pid != old.pid
            busy += new.busy_seconds - (0.0 if restarted else old.busy_seconds)
            evaluations += new.evaluations - (0 if restarted else old.evaluations)
            for size, count in new.batch_sizes.items():
                sizes[size] = sizes.get(size, 0) + count - (0 if restarted else old.batch_sizes.get(size, 0))
        return cls(
            busy=busy / (len(after) * seconds) if seconds > 0 else 0.0,
            evaluations=int(evaluations),
            evaluations_per_second=evaluations / seconds if seconds > 0 else 0.0,
            batch_sizes={k: v for k, v in sorted(sizes.items()) if v},
            torch_in_trials=torch_in_trials,
        )


@dataclass(frozen=True)
class SweepOutcome:
    sweep_id: str
    study: str
    metric: str
    direction: str
    trials_run: int
    trials_total: int
    best_params: dict[str, float]
    best_role: str
    tuning_value: float
    heldout_value: float
    baseline_heldout: float
    stored: bool
    mlflow_run_id: str | None
    mlflow_url: str  # the study's run in the MLflow UI (the server's, or `mlflow ui`'s on a local store)
    unlogged_runs: int
    # seconds: ray_start, model_load, trials_start, prefixes, search, heldout, figures (see _search_with)
    timings: dict[str, float]
    utilization: Utilization | None  # None when no trial ran now
    comparison: PairedComparison  # the best configuration against VAR off on the held-out split


@dataclass(frozen=True)
class NothingToRun:
    """A rerun of a study whose ``--trials`` are all done: nothing was run, no run was created."""

    study: str
    trials_total: int
    best: Any  # the stored best-settings row of the study's model, task and convention (or None)


def run_sweep(
    request: SweepRequest, settings: Settings, *, workdir: Path = Path(".")
) -> SweepOutcome | NothingToRun:
    """Run (or resume) the sweep described by ``request``."""
    from sweep.cluster import local_ray_environment

    local_ray_environment(settings)  # before ray is imported (sweep.records imports it)
    from sweep.records import SweepRecords

    with signals.handling():
        plan = plan_sweep(request, max_image_pixels=settings.max_image_pixels)
        log.info(
            "task %s: %d examples in %d groups; tuning %d groups, held-out %d groups (seed %d)",
            plan.task.name,
            len(plan.task.examples),
            len(plan.task.groups),
            len(plan.tuning.groups),
            len(plan.heldout.groups),
            request.seed,
        )
        records = SweepRecords(plan, settings, workdir=workdir)
        with records.recording():
            if records.finished_before >= request.trials:
                log.info(
                    "study %s: all %d trials done; nothing to run (raise --trials to extend it)",
                    plan.study_name,
                    records.finished_before,
                )
                rows = records.store.best(
                    model=plan.model_key, task=request.task, convention=request.convention
                )
                return NothingToRun(
                    study=plan.study_name,
                    trials_total=records.finished_before,
                    best=rows[0] if rows else None,
                )
            records.open_mlflow()
            return _sweep(plan, records, settings, workdir.resolve())


def _trials_at_once(batch: int, room: int, memory: float) -> int:
    """``--batch``, or fewer when the driver's node holds fewer trial processes (they run there, one per
    configuration in a batch); none at all is an error, where the search would wait for ever."""
    from sweep.tuning import TRIAL_MEMORY
    from workers.actor import PlacementError

    if room < 1:
        raise PlacementError(
            f"the driver's node has {memory / 2**20:.0f} MiB of Ray memory, less than one trial process needs "
            f"({TRIAL_MEMORY // 2**20} MiB): run the driver on a node with more (ray start --memory)"
        )
    if room < batch:
        log.warning(
            "the driver's node holds %d trial processes (%.1f GiB of Ray memory, %d MiB each): batches of %d "
            "configurations, not --batch %d",
            room,
            memory / 2**30,
            TRIAL_MEMORY // 2**20,
            room,
            batch,
        )
    return min(batch, room)


def _sweep(plan: SweepPlan, records: SweepRecords, settings: Settings, workdir: Path) -> SweepOutcome:
    from sweep import figures
    from sweep.cluster import connect_ray, worker_pool
    from sweep.confirm import confirm
    from sweep.tuning import finished_trials

    tracker = records.tracker
    timings: dict[str, float] = {}
    # MLflow calls (and the files they upload) run on this thread, in order, so Tune's loop never waits on them
    mlflow_thread = QuietWriter("varsweep-mlflow")
    wait_closed = None
    try:
        clock = time.perf_counter()
        connection = connect_ray(settings)
        timings["ray_start"] = time.perf_counter() - clock
        clock = time.perf_counter()
        with worker_pool(plan, settings, local=connection.local) as pool:
            for info in pool.ready():
                log.info(
                    "worker %s ready on %s, node %s (%s threads): %s examples, model loaded in %ss; sink dims "
                    "%s (%s)",
                    info["pid"],
                    info["device"],
                    info["node"][:8],
                    info["threads"],
                    info["examples"],
                    info["load_seconds"],
                    info["sink_dims"],
                    info["sink_dims_source"],
                )
            timings["model_load"] = time.perf_counter() - clock
            ran, utilization, layer_heads = _search(
                plan, records, settings, pool, mlflow_thread, timings, workdir
            )
            clock = time.perf_counter()
            confirmation = confirm(plan, records.study, pool)
            timings["heldout"] = time.perf_counter() - clock
        wait_closed = connection.close_in_background()  # the workers are gone; nothing below needs Ray
        clock = time.perf_counter()
        mlflow_thread.shutdown(wait=True)  # every trial's run is written before the study's figures
        best_run = tracker.find_trial(confirmation.best.number)
        figures.log_sweep(tracker, records.study, confirmation.capture, best_run=best_run)
        _log_best_figure(tracker, confirmation.best, best_run, layer_heads)
        timings["figures"] = time.perf_counter() - clock
        stored = _record(plan, records, confirmation, utilization, timings)
    finally:
        mlflow_thread.shutdown(wait=True)
        if wait_closed is not None:
            wait_closed()
    # a tracking server is its own UI; a local store is shown by `mlflow ui`, on port 5000 by default
    server = settings.mlflow_tracking_uri.startswith("http")
    ui_url = tracker.run_url(settings.mlflow_tracking_uri if server else LOCAL_MLFLOW_UI)
    best = confirmation.best
    return SweepOutcome(
        sweep_id=str(records.sweep_id),
        study=plan.study_name,
        metric=plan.metric,
        direction=plan.direction,
        trials_run=ran,
        trials_total=len(finished_trials(records.study)),
        best_params=full_params(best.params),
        best_role=str(best.user_attrs.get("role", "search")),
        tuning_value=float(best.value),
        heldout_value=confirmation.heldout_value,
        baseline_heldout=confirmation.baseline_heldout,
        stored=stored,
        mlflow_run_id=tracker.parent_id,
        mlflow_url=ui_url,
        unlogged_runs=tracker.unlogged(),
        timings=timings,
        utilization=utilization,
        comparison=confirmation.comparison,
    )


def _search(
    plan: SweepPlan,
    records: SweepRecords,
    settings: Settings,
    pool: Any,
    mlflow_thread: QuietWriter,
    timings: dict[str, float],
    workdir: Path,
) -> tuple[int, Utilization | None, dict[int, dict[str, list[list[float]]]]]:
    """The search phase: the prefixes, then the trials; returns (trials run, utilization, the layer x head
    statistics of the trials reported)."""
    with bars() as drawn:
        prefixes = Progress("prefixes", pool.examples, bar=drawn)
        trials = Progress("trials", plan.request.trials - records.finished_before, bar=drawn)
        try:
            return _search_with(
                plan, records, settings, pool, mlflow_thread, timings, workdir, prefixes, trials
            )
        finally:
            prefixes.close()
            trials.close()


def _search_with(
    plan: SweepPlan,
    records: SweepRecords,
    settings: Settings,
    pool: Any,
    mlflow_thread: QuietWriter,
    timings: dict[str, float],
    workdir: Path,
    prefixes: Progress,
    trials: Progress,
) -> tuple[int, Utilization | None, dict[int, dict[str, list[list[float]]]]]:
    """The workers compute their prefixes, then Tune starts its trial processes (on a GPU both at once: the
    trial processes start on the CPUs while the GPU computes); each worker's first batch waits for the first
    trials' calls, which meet there as one full batch. Phases in ``timings``: see :func:`_search_phases`."""
    from sweep.locks import database_lock, is_sqlite
    from sweep.trial import TrialReport
    from sweep.tuning import SearchHooks, completed_trials, run_search, trials_beside_driver

    request, tracker, study = plan.request, records.tracker, records.study
    best_so_far = [float(t.value) for t in completed_trials(study)]  # the study's, earlier sweeps included
    torch_in_trials: list[int] = []
    layer_heads: dict[int, dict[str, list[list[float]]]] = {}
    pick = max if plan.direction == "maximize" else min

    def on_start(number: int, role: str, params: dict[str, float], source: str) -> None:
        tags = {"varsweep.warm_start_from": source} if source else {}
        mlflow_thread.submit(tracker.start_trial, number=number, role=role, params=params, tags=tags)

    def on_rung(report: TrialReport) -> None:
        mlflow_thread.submit(tracker.log_rung, report.number, report.metrics, step=report.examples_seen)

    def on_end(report: TrialReport) -> None:
        torch_in_trials.extend([report.number] if report.torch_loaded else [])
        layer_heads[report.number] = report.layer_head
        value = report.objective
        if report.complete:
            best_so_far.append(value)
            outcome = f"{plan.metric} = {value:.4f}"
        else:
            outcome = (
                f"stopped after rung {report.rung + 1} of {len(plan.rungs)} ({report.examples_seen} of "
                f"{len(plan.tuning.examples)} examples), {plan.metric} = {value:.4f}"
            )
        trials.advance(best=f"{pick(best_so_far):.4f}" if best_so_far else None)
        log.info(
            "trial %d (%s): %s  tau %.2f rho %.3f p %.3f  selected %.3f moved %.4f  %s",
            report.number,
            report.role,
            outcome,
            report.params.get("tau", float("nan")),
            report.params.get("rho", float("nan")),
            report.params.get("p", float("nan")),
            report.var_stats.get("selected_share", 0.0),
            report.var_stats.get("mass_moved_per_row", 0.0),
            trials.line(),
        )
        mlflow_thread.submit(_log_trial_run, tracker, report, len(plan.rungs), plan.tuning)

    def on_error(number: int, reason: str) -> None:
        log.warning("trial %d failed: %s", number, reason)
        mlflow_thread.submit(tracker.fail_trial, number)

    def on_prefixes(done: int, total: int) -> None:
        prefixes.set(done)
        if not prefixes.drawn:
            tenth(done, total)

    def ask_lock() -> Any:
        # drivers sharing a PostgreSQL study count and ask in turn; SQLite hosts one driver per study
        return database_lock(settings.study_url, f"varsweep-ask:{plan.study_name}")

    tenth = _every_tenth(lambda done, total: log.info("prefixes: %d/%d %s", done, total, prefixes.line()))
    before = pool.counters()
    batch = _trials_at_once(request.batch, *trials_beside_driver())
    first_calls = min(batch, request.trials - records.finished_before)
    log.info("study %s: %d of %d trials done", plan.study_name, records.finished_before, request.trials)
    preparation = pool.start_preparing(on_prefixes, first_batch=first_calls)
    if pool.device == "cpu":
        # on the cores the engine computes on, the trial processes' start (each imports Ray Tune) and, once up,
        # their idle wakeups slow the engine down (measured: prefixes 26-28 s alone, 34-35 s beside 16 of them)
        preparation.wait()
        log.info("prefixes prepared; starting %d trial processes", first_calls)
    tune_started = time.time()
    trials.begin()  # the trials' clock (and ETA) starts with Tune, not with the prefixes
    ran = run_search(
        study=study,
        space=plan.space,
        trials=request.trials,
        batch=batch,
        rungs=plan.rungs,
        early_stop=request.early_stop,
        actors=pool.actors,
        task=plan.tuning,
        metric=plan.metric,
        direction=plan.direction,
        storage_path=workdir / ".varsweep" / "tune" / slug(plan.study_name),
        hooks=SearchHooks(on_start=on_start, on_rung=on_rung, on_end=on_end, on_error=on_error),
        owner=str(records.sweep_id),
        lock=(contextlib.nullcontext if is_sqlite(settings.study_url) else ask_lock),
        outage_timeout=settings.outage_timeout,
        url=settings.study_url,
    )
    ended = time.time()
    preparation.wait()
    after = pool.counters()
    timings.update(_search_phases(after, tune_started, preparation.done_at or ended, ended))
    log.info(
        "prefixes prepared in %.1f s; trial processes started in %.1f s",
        timings["prefixes"],
        timings["trials_start"],
    )
    if not completed_trials(study):
        raise VarsweepError("no trial saw every tuning example; see the errors above")
    if not ran:
        return ran, None, layer_heads
    utilization = Utilization.between(
        before,
        after,
        seconds=timings["search"],
        torch_in_trials=len(torch_in_trials),
    )
    log.info(
        "search: %d trials in %.1f s (%.2f s per trial); workers busy %.0f%% of the search; %.1f evaluations/s; "
        "configurations per batch: %s",
        ran,
        timings["search"],
        timings["search"] / ran,
        100 * utilization.busy,
        utilization.evaluations_per_second,
        utilization.batch_sizes,
    )
    if torch_in_trials:
        log.warning(
            "%d trial process(es) had torch loaded: trials are meant to be thin", len(torch_in_trials)
        )
    return ran, utilization, layer_heads


def _search_phases(
    counters: Sequence[Any], tune_started: float, prefixes_done: float, ended: float
) -> dict[str, float]:
    """The search's phases, in seconds, from wall-clock times (time.time()) of the driver and the workers'
    counters: ``prefixes`` (from their start to the last prefix), ``trials_start`` (from Tune's start to the first
    batch, the part the prefixes did not cover: fixed, as the trial processes serve trial after trial) and
    ``search`` (prefixes and every trial, that start left out)."""
    began = min((c.prefixes_started for c in counters if c.prefixes_started), default=tune_started)
    first_batch = min((c.first_batch_started for c in counters if c.first_batch_started), default=ended)
    trials_start = max(0.0, first_batch - max(tune_started, prefixes_done))
    return {
        "prefixes": prefixes_done - began,
        "trials_start": trials_start,
        "search": ended - began - trials_start,
    }


def _record(
    plan: SweepPlan,
    records: SweepRecords,
    confirmation: Confirmation,
    utilization: Utilization | None,
    timings: dict[str, float],
) -> bool:
    """The study's MLflow run and the best-settings table; True when the row was stored."""
    from sweep.store import BestRecord
    from var_core.config import VARConfig
    from workers.tasks import samples_jsonl

    tracker, request, best, comparison = (
        records.tracker,
        plan.request,
        confirmation.best,
        confirmation.comparison,
    )
    tracker.tag_trial(best.number, "varsweep.best", "true")
    tracker.log_artifacts(
        {
            "samples/heldout-var-off.jsonl": samples_jsonl(plan.heldout, confirmation.off_answers),
            "samples/heldout-best.jsonl": samples_jsonl(plan.heldout, confirmation.best_answers),
        }
    )
    tracker.log_parent(
        metrics={
            "best_tuning": best.value,
            "best_heldout": confirmation.heldout_value,
            "baseline_heldout": confirmation.baseline_heldout,
            "heldout_delta": comparison.delta,
            "heldout_delta_ci_low": comparison.ci_low,
            "heldout_delta_ci_high": comparison.ci_high,
            "heldout_delta_p_value": comparison.p_value,
            "tuning_heldout_gap": float(best.value) - confirmation.heldout_value,
            **(
                {
                    "workers_busy": utilization.busy,
                    "evaluations_per_second": utilization.evaluations_per_second,
                }
                if utilization
                else {}
            ),
            **{f"seconds.{k}": v for k, v in timings.items()},
        },
        tags={"varsweep.best_trial": str(best.number), "varsweep.heldout": comparison.describe()},
    )
    full = full_params(best.params)
    return records.store.upsert_best(
        BestRecord(
            model=plan.model_key,
            task=request.task,
            convention=request.convention,
            tau=full["tau"],
            rho=full["rho"],
            p=full["p"],
            summ=full["summ"],
            first_layer=VARConfig().first_layer,
            metric=plan.metric,
            direction=plan.direction,
            tuning_value=float(best.value),
            heldout_value=confirmation.heldout_value,
            baseline_heldout=confirmation.baseline_heldout,
            n_tuning=len(plan.tuning.groups),
            n_heldout=len(plan.heldout.groups),
            sweep_id=str(records.sweep_id),
            study=plan.study_name,
            mlflow_run_id=tracker.parent_id,
            git_commit=records.commit,
            data_fingerprint=plan.fingerprint,
            ci_low=comparison.ci_low,
            ci_high=comparison.ci_high,
            p_value=comparison.p_value,
            n_resamples=comparison.n_resamples,
        )
    )


def _log_best_figure(tracker: Any, best: Any, best_run: str | None, layer_heads: dict[int, Any]) -> None:
    """The best trial's layer x head heatmap: from this invocation's reports, else from its run (an earlier one)."""
    from sweep import figures
    from sweep.search import BASELINE

    if best_run is None or best.user_attrs.get("role") == BASELINE:
        return
    layer_head = layer_heads.get(best.number) or tracker.load_dict(best_run, LAYER_HEAD)
    if layer_head is not None:
        figures.log_layer_head(tracker, best_run, layer_head)


def _log_trial_run(tracker: Any, report: Any, rungs: int, task: Any) -> None:
    """A trial's MLflow run: VAR's statistics, and per layer (step = layer) the share of selected rows and the
    mean visual non-sink ratio; the full layer x head arrays as JSON (drawn for the best trial); its answers as
    samples.jsonl. The task's metrics were logged rung by rung (step = examples seen); a trial stopped early is
    tagged as pruned."""
    from workers.tasks import samples_jsonl

    per_layer = {
        f"var.layer.{name}": [sum(heads) / len(heads) for heads in rows]
        for name, rows in report.layer_head.items()
    }
    seen = task.select({e.group for e in task.examples if e.id in report.answers})
    tags = {
        "varsweep.examples_seen": str(report.examples_seen),
        "varsweep.rung": f"{report.rung + 1}/{rungs}",
    }
    tracker.log_trial(
        number=report.number,
        role=report.role,
        params=report.params,
        metrics={f"var.{k}": v for k, v in report.var_stats.items()},
        series=per_layer,
        artifacts={LAYER_HEAD: report.layer_head, SAMPLES: samples_jsonl(seen, report.answers)},
        tags=tags | ({} if report.complete else {"varsweep.pruned": "true"}),
        step_metrics=report.metrics,
        step=report.examples_seen,
    )


def _every_tenth(progress: Any) -> Any:
    """``progress(done, total)`` passed on at each tenth of the total (and at the end), not at every poll."""
    shown = {-1}

    def report(done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if tenth not in shown:
            shown.add(tenth)
            progress(done, total)

    return report
