"""One sweep, end to end: task and splits, workers, the search, held-out confirmation, tracking and the store."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.fidelity import EARLY_STOP
from sweep.settings import Settings, redact_url
from var_core.config import Convention, VARConfig
from var_core.errors import ConfigError, VarsweepError

if TYPE_CHECKING:
    from workers.tasks import PairedComparison

__all__ = ["SweepRequest", "SweepOutcome", "Utilization", "run_sweep", "split_groups", "data_fingerprint"]

log = logging.getLogger("varsweep")


@dataclass(frozen=True)
class SweepRequest:
    task: str
    model: str = "tiny-llava"
    trials: int = 20
    workers: int | None = None
    data_dir: str | None = None
    split: str | None = None
    limit: int | None = None
    study: str | None = None
    seed: int = 0
    holdout: float = 0.3
    metric: str | None = None
    convention: Convention = "paper"
    search_summ: bool = False
    tau_range: tuple[float, float] | None = None
    rho_range: tuple[float, float] | None = None
    p_range: tuple[float, float] | None = None
    batch: int = 16  # configurations per worker call: trials run at once
    early_stop: str = "off"  # "asha": stop trials that fall behind at a rung of tuning groups
    warm_start: bool = True  # a new study starts with the stored best settings of related sweeps
    worker_cpus: int | None = None  # CPUs (torch threads) per CPU worker; None: a local Ray's cores / workers

    @property
    def study_name(self) -> str:
        return self.study or f"{self.model}:{self.task}:{self.convention}"


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
    unlogged_runs: int
    timings: dict[str, float]  # seconds: ray_start, model_load, prefixes, search, heldout, figures
    comparison: PairedComparison  # the best configuration against VAR off on the held-out split
    utilization: Utilization | None  # None when no trial ran now


@dataclass(frozen=True)
class Utilization:
    """How busy the workers were during the search (their own clocks), and what they did."""

    busy: float  # busy seconds of all workers / (workers x search seconds)
    evaluations: int  # (configuration, example) pairs evaluated in the search
    evaluations_per_second: float
    batch_sizes: dict[int, int]  # configurations per engine batch -> batches, all workers
    torch_in_trials: int  # trial processes that had torch loaded (should be 0: trials are thin)
    first_call_after: float | None  # seconds from the search's start to the first trial reaching a worker

    @classmethod
    def between(
        cls, before: Sequence[Any], after: Sequence[Any], *, started: float, seconds: float, torch_in_trials: int
    ) -> Utilization:
        """From the workers' counters before and after the search, which started at ``started`` (time.time())
        and lasted ``seconds`` (a restarted worker counts from zero)."""
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
            first_call_after=min((c.first_call - started for c in after if c.first_call), default=None),
        )


def split_groups(groups: Sequence[str], *, holdout: float, seed: int) -> tuple[list[str], list[str]]:
    """(tuning, held-out) group keys: a seeded shuffle, the first ``round(holdout * n)`` held out (at least one)."""
    if not 0.0 < holdout < 1.0:
        raise ConfigError(f"--holdout {holdout} is out of range: it must be a fraction in (0, 1)")
    if len(groups) < 2:
        raise ConfigError(f"{len(groups)} group(s): a tuning and a held-out split need at least 2")
    order = list(groups)
    random.Random(seed).shuffle(order)
    n_heldout = min(len(order) - 1, max(1, round(holdout * len(order))))
    heldout = set(order[:n_heldout])
    return [g for g in groups if g not in heldout], [g for g in groups if g in heldout]


def data_fingerprint(task: Any) -> str:
    """sha256 (16 hex) of what the examples say: ids, questions, options, answers, image references."""
    digest = hashlib.sha256()
    for e in task.examples:
        record = [e.id, e.group, e.question, e.options, e.answer, list(e.references), e.image.describe()]
        digest.update(json.dumps(record, default=str).encode())
    return digest.hexdigest()[:16]


def git_commit() -> str | None:
    """The commit of the varsweep code that runs: ``VARSWEEP_GIT_COMMIT`` (set in images), else git's answer."""
    if os.environ.get("VARSWEEP_GIT_COMMIT"):
        return os.environ["VARSWEEP_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False,
            cwd=Path(__file__).resolve().parent,
        )  # fmt: skip
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _default_workers() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("GPU", 0))) or 1


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _connect_ray(settings: Settings) -> bool:
    """Join ``RAY_ADDRESS``, else start a local Ray; True when the Ray is local (started here)."""
    import ray

    if ray.is_initialized():
        return settings.ray_address is None
    address = settings.ray_address
    log.info("connecting to Ray (%s)", redact_url(address or "a new local instance"))
    # A local Ray gets one logical CPU beyond the cores: the trial processes hold it (they only wait), so a CPU
    # worker can hold, and compute on, every core.
    cpus = None if address else _cores() + 1
    ray.init(address=address, num_cpus=cpus, logging_level=logging.WARNING, log_to_driver=True, include_dashboard=False)
    return address is None


def run_sweep(request: SweepRequest, settings: Settings, *, workdir: Path = Path(".")) -> SweepOutcome:
    """Run (or resume) the sweep described by ``request``."""
    import ray

    from sweep import figures
    from sweep.fidelity import Rungs
    from sweep.search import BASELINE, config_from_params, space_for, warm_start_points
    from sweep.store import BestRecord, Store
    from sweep.tracking import Tracker
    from sweep.trial import TrialReport
    from sweep.tuning import (
        SearchHooks,
        completed_trials,
        finished_trials,
        mute_worker_output,
        open_study,
        prepare_study,
        run_search,
    )
    from workers.actor import TaskRef, WorkerPool
    from workers.models import check_model
    from workers.tasks import get_task, paired_comparison, samples_jsonl

    # 1. the input: task, splits, images, model, search space. Anything wrong fails here, before anything is written
    task_ref = TaskRef(name=request.task, data_dir=request.data_dir, split=request.split, limit=request.limit)
    task = get_task(request.task, data_dir=request.data_dir, split=request.split, limit=request.limit)
    metric = request.metric or task.metric
    direction = task.direction
    tuning_groups, heldout_groups = split_groups(task.groups, holdout=request.holdout, seed=request.seed)
    tuning_task, heldout_task = task.select(tuning_groups), task.select(heldout_groups)
    log.info(
        "task %s: %d examples in %d groups; tuning %d groups, held-out %d groups (seed %d)",
        task.name, len(task.examples), len(task.groups), len(tuning_groups), len(heldout_groups), request.seed,
    )  # fmt: skip
    log.info("checking that every image opens")
    task.check_images()
    fingerprint = data_fingerprint(task)
    model_key = check_model(request.model)
    space = space_for(
        task.group, request.convention, search_summ=request.search_summ,
        tau=request.tau_range, rho=request.rho_range, p=request.p_range,
    )  # fmt: skip
    if request.batch < 1:
        raise ConfigError(f"--batch {request.batch} is out of range: it must be at least 1")
    if request.early_stop not in EARLY_STOP:
        raise ConfigError(f"--early-stop {request.early_stop!r} is not one of {', '.join(EARLY_STOP)}")
    # every trial sees the tuning groups in this order, rung by rung (one rung: all of them)
    rungs = (
        Rungs.geometric(tuning_groups, seed=request.seed) if request.early_stop == "asha" else Rungs.single(tuning_groups)
    )

    # 2. the stores: settings database, MLflow, then the study (the first writes of the sweep)
    store = Store(settings.database_url, retry_seconds=settings.connect_timeout)
    store.retry_seconds = settings.outage_timeout  # from now on, wait out a restarting database
    workdir = workdir.resolve()
    tracker = Tracker(
        settings.mlflow_tracking_uri,
        experiment=request.study_name,
        spool=workdir / ".varsweep" / f"mlflow-spool-{request.study_name.replace('/', '_').replace(':', '_')}.jsonl",
        timeout=settings.mlflow_timeout,
    )
    study = open_study(
        name=request.study_name, url=settings.study_url, direction=direction, seed=request.seed,
        outage_timeout=settings.outage_timeout,
    )  # fmt: skip
    # warm start: the stored best settings of this model on other tasks, then of this task on other models
    related = [r for r in store.best(model=model_key) if r.task != request.task]
    related += [r for r in store.best(task=request.task) if r.model != model_key]
    warm = warm_start_points(space, related) if request.warm_start else []
    already = prepare_study(study, space, warm)
    sweep_id = store.start_sweep(
        key=request.study_name, model=model_key, task=request.task, convention=request.convention
    )
    commit = git_commit()
    tracker.start_parent(
        name=f"sweep-{sweep_id[:8]}",
        params={
            "model": model_key, "task": request.task, "convention": request.convention, "metric": metric,
            "trials": request.trials, "batch": request.batch, "early_stop": request.early_stop, "holdout": request.holdout, "seed": request.seed,
            "limit": request.limit, "n_tuning_groups": len(tuning_groups), "n_heldout_groups": len(heldout_groups),
            "n_tuning_examples": len(tuning_task.examples), "n_heldout_examples": len(heldout_task.examples),
        },  # fmt: skip
        tags={
            "varsweep.sweep_id": sweep_id, "varsweep.study": request.study_name, "git_commit": commit or "unknown",
            "data_fingerprint": fingerprint, **{f"settings.{k}": v for k, v in settings.describe().items()},
        },  # fmt: skip
    )
    timings: dict[str, float] = {}
    # MLflow calls (and the per-trial figure) run on this thread, in order, so Tune's loop never waits on them
    mlflow_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="varsweep-mlflow")
    status, message = "failed", None
    try:
        # 3. workers: the model loads once per worker; prefixes are prepared before the first trial
        clock = time.perf_counter()
        local_ray = _connect_ray(settings)
        timings["ray_start"] = time.perf_counter() - clock
        n_workers = request.workers or _default_workers()
        cpus = request.worker_cpus or (max(1, _cores() // n_workers) if local_ray else 1)
        clock = time.perf_counter()
        pool = WorkerPool(
            model=request.model,
            task=task_ref,
            splits={"tuning": tuning_task.examples, "heldout": heldout_task.examples},
            workers=n_workers,
            cpus_per_worker=cpus,
            max_batch=request.batch,
        )
        try:
            for info in pool.ready():
                log.info("worker %s ready on %s (%s threads): %s examples, model loaded in %ss", info["pid"],
                         info["device"], info["threads"], info["examples"], info["load_seconds"])  # fmt: skip
            timings["model_load"] = time.perf_counter() - clock
            # the search starts its trial processes while the workers compute their prefixes; the first trials'
            # calls wait in the workers until the prefixes are ready, and then meet there as one full batch
            before = pool.counters()
            search_started, clock = time.time(), time.perf_counter()
            preparation = pool.start_preparing(
                _every_tenth(lambda done, total: log.info("prefixes: %d/%d", done, total))
            )

            # 4. the search
            best_so_far = [float(t.value) for t in completed_trials(study)]  # the study's, earlier sweeps included
            torch_in_trials: list[int] = []
            layer_heads: dict[int, dict[str, list[list[float]]]] = {}

            def on_start(number: int, role: str, params: dict[str, float], source: str) -> None:
                tags = {"varsweep.warm_start_from": source} if source else {}
                mlflow_thread.submit(tracker.start_trial, number=number, role=role, params=params, tags=tags)

            def on_rung(report: TrialReport) -> None:
                mlflow_thread.submit(tracker.log_rung, report.number, report.metrics, step=report.examples_seen)

            def on_end(report: TrialReport) -> None:
                value = report.objective
                torch_in_trials.extend([report.number] if report.torch_loaded else [])
                layer_heads[report.number] = report.layer_head
                if report.complete:
                    best_so_far.append(value)
                    outcome = f"{metric} = {value:.4f}"
                else:
                    outcome = (
                        f"stopped after rung {report.rung + 1} of {len(rungs)} ({report.examples_seen} of "
                        f"{len(tuning_task.examples)} examples), {metric} = {value:.4f}"
                    )
                best = (max if direction == "maximize" else min)(best_so_far) if best_so_far else float("nan")
                log.info(
                    "trial %d (%s): %s (best %.4f)  tau %.2f rho %.3f p %.3f  selected %.3f moved %.4f",
                    report.number, report.role, outcome, best, report.params.get("tau", float("nan")),
                    report.params.get("rho", float("nan")), report.params.get("p", float("nan")),
                    report.var_stats.get("selected_share", 0.0), report.var_stats.get("mass_moved_per_row", 0.0),
                )  # fmt: skip
                mlflow_thread.submit(_log_trial_run, tracker, report, len(rungs), tuning_task)

            log.info("study %s: %d of %d trials done", request.study_name, already, request.trials)
            ran = run_search(
                study=study, space=space, trials=request.trials, batch=request.batch, rungs=rungs,
                early_stop=request.early_stop, actors=pool.actors, task=tuning_task, metric=metric,
                direction=direction, storage_path=workdir / ".varsweep" / "tune",
                hooks=SearchHooks(
                    on_start=on_start, on_rung=on_rung, on_end=on_end,
                    on_error=lambda number: mlflow_thread.submit(tracker.fail_trial, number),
                ),
            )  # fmt: skip
            timings["search"] = time.perf_counter() - clock  # prefix preparation included: they overlap
            timings["prefixes"] = preparation.wait()
            log.info("prefixes prepared in %.1f s", timings["prefixes"])
            utilization = None
            if ran:
                utilization = Utilization.between(
                    before, pool.counters(), started=search_started, seconds=timings["search"],
                    torch_in_trials=len(torch_in_trials),
                )  # fmt: skip
                log.info(
                    "search: %d trials in %.1f s (%.2f s per trial); workers busy %.0f%% of the search; "
                    "%.1f evaluations/s; configurations per batch: %s",
                    ran, timings["search"], timings["search"] / ran, 100 * utilization.busy,
                    utilization.evaluations_per_second, utilization.batch_sizes,
                )  # fmt: skip
                if torch_in_trials:
                    log.warning("%d trial process(es) had torch loaded: trials are meant to be thin", len(torch_in_trials))
            done = completed_trials(study)
            if not done:
                raise VarsweepError("no trial saw every tuning example; see the errors above")
            best = study.best_trial

            # 5. honest evaluation: the best configuration and VAR off on the held-out split
            clock = time.perf_counter()
            best_config = config_from_params(best.params, request.convention)
            heldout_results = pool.evaluate([None, best_config], "heldout")
            off_answers, best_answers = heldout_results[0].answers, heldout_results[1].answers
            # paired on the same held-out examples: is the gain over VAR off more than noise?
            comparison = paired_comparison(heldout_task, best_answers, off_answers, metric=metric, seed=request.seed)
            baseline_heldout, heldout_value = comparison.value_b, comparison.value_a
            timings["heldout"] = time.perf_counter() - clock
            log.info("VAR vs off on held-out: %s", comparison.describe())

            # 6. pictures: the search, and what the best configuration (or the paper's, if VAR off won) does
            clock = time.perf_counter()
            shown = best_config or config_from_params(space.paper_defaults(), request.convention)
            capture = ray.get(pool.actors[0].capture.remote(shown, "heldout"))
        finally:
            pool.shutdown()
        mlflow_thread.shutdown(wait=True)  # every trial's run is written before the sweep's figures
        best_run = tracker.find_trial(best.number)
        figures.log_sweep(tracker, study, capture, best_run=best_run)
        if best_run is not None and best.user_attrs.get("role") != BASELINE:
            # the best trial's statistics: from this invocation's reports, else from its run (an earlier one)
            layer_head = layer_heads.get(best.number) or tracker.load_dict(best_run, LAYER_HEAD)
            if layer_head is not None:
                figures.log_layer_head(tracker, best_run, layer_head)
        timings["figures"] = time.perf_counter() - clock

        tracker.tag_trial(best.number, "varsweep.best", "true")
        tracker.log_artifacts({
            "samples/heldout-var-off.jsonl": samples_jsonl(heldout_task, off_answers),
            "samples/heldout-best.jsonl": samples_jsonl(heldout_task, best_answers),
        })  # fmt: skip
        tracker.log_parent(
            metrics={
                "best_tuning": best.value, "best_heldout": heldout_value, "baseline_heldout": baseline_heldout,
                "heldout_delta": comparison.delta, "heldout_delta_ci_low": comparison.ci_low,
                "heldout_delta_ci_high": comparison.ci_high, "heldout_delta_p_value": comparison.p_value,
                "tuning_heldout_gap": float(best.value) - heldout_value,
                **({"workers_busy": utilization.busy, "evaluations_per_second": utilization.evaluations_per_second}
                   if utilization else {}),
                **{f"seconds.{k}": v for k, v in timings.items()},
            },
            tags={"varsweep.best_trial": str(best.number)},
        )  # fmt: skip
        full = {"summ": 0.2, **best.params}
        stored = store.upsert_best(
            BestRecord(
                model=model_key, task=request.task, convention=request.convention,
                tau=full["tau"], rho=full["rho"], p=full["p"], summ=full["summ"], first_layer=VARConfig().first_layer,
                metric=metric, direction=direction, tuning_value=float(best.value), heldout_value=float(heldout_value),
                baseline_heldout=float(baseline_heldout), n_tuning=len(tuning_groups), n_heldout=len(heldout_groups),
                sweep_id=sweep_id, study=request.study_name, mlflow_run_id=tracker.parent_id, git_commit=commit,
                data_fingerprint=fingerprint, ci_low=comparison.ci_low, ci_high=comparison.ci_high,
                p_value=comparison.p_value, n_resamples=comparison.n_resamples,
            )  # fmt: skip
        )
        status = "completed"
        return SweepOutcome(
            sweep_id=sweep_id, study=request.study_name, metric=metric, direction=direction, trials_run=ran,
            trials_total=len(finished_trials(study)), best_params=full, best_role=str(best.user_attrs.get("role", "search")),
            tuning_value=float(best.value), heldout_value=float(heldout_value),
            baseline_heldout=float(baseline_heldout), stored=stored, mlflow_run_id=tracker.parent_id,
            unlogged_runs=tracker.unlogged(), timings=timings, utilization=utilization, comparison=comparison,
        )  # fmt: skip
    except KeyboardInterrupt:
        status, message = "interrupted", "SIGINT"
        mute_worker_output()
        raise
    except BaseException as e:
        message = redact_url(str(e))[:2000]
        raise
    finally:
        mlflow_thread.shutdown(wait=True)
        run_status = "FINISHED" if status == "completed" else "KILLED" if status == "interrupted" else "FAILED"
        unlogged = tracker.finish(run_status)
        if unlogged:
            log.warning("%d trial run(s) could not be logged to MLflow; they are kept in %s", unlogged, tracker.spool)
        store.finish_sweep(sweep_id, status=status, trials=len(finished_trials(study)), message=message)


LAYER_HEAD = "var/layer_head.json"  # a trial run's [layer][head] statistics
SAMPLES = "samples.jsonl"  # per-example answers and scores (the tuning examples a trial saw)


def _log_trial_run(tracker: Any, report: Any, rungs: int, task: Any) -> None:
    """A trial's MLflow run: VAR's statistics, and per layer (step = layer) the share of selected rows and the
    mean visual non-sink ratio; the full layer x head arrays as JSON (drawn for the best trial); its answers as
    samples.jsonl. The task's metrics were logged rung by rung (step = examples seen); a trial stopped early is
    tagged as pruned."""
    from workers.tasks import samples_jsonl

    per_layer = {
        f"var.layer.{name}": [sum(heads) / len(heads) for heads in rows] for name, rows in report.layer_head.items()
    }
    tags = {"varsweep.examples_seen": str(report.examples_seen), "varsweep.rung": f"{report.rung + 1}/{rungs}"}
    tracker.log_trial(
        number=report.number,
        role=report.role,
        params=report.params,
        metrics={f"var.{k}": v for k, v in report.var_stats.items()},
        series=per_layer,
        artifacts={
            LAYER_HEAD: report.layer_head,
            SAMPLES: samples_jsonl(task.select({e.group for e in task.examples if e.id in report.answers}), report.answers),
        },
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
