"""A sweep's records: the settings store, the Optuna study, MLflow, and the driver's lease on the study.

:class:`SweepRecords` opens them in one place, in an order that several drivers can share:

1. Under the database's start lock (:func:`sweep.locks.database_lock`): the store's schema, MLflow's experiment,
   the study. Sweeps of the study whose lease ran out (a driver killed with SIGKILL, a lost node) are marked
   killed, and their running MLflow trial runs KILLED; their trials are failed and queued again when the study is
   prepared. A SQLite study already run by a live driver is refused (SQLite cannot host two).
2. The sweep's own record, with a lease renewed by a background thread every ``heartbeat_seconds``.
3. At the end, :meth:`close` (in a ``finally``) records how the sweep ended in the store and in MLflow; it never
   raises, so no record is left looking alive.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from sweep.locks import database_lock, is_sqlite
from sweep.plan import SweepPlan, git_commit, slug
from sweep.settings import Settings, first_line, redact_url
from var_core.errors import VarsweepError

__all__ = ["SweepRecords", "StudyBusyError"]

log = logging.getLogger("varsweep")


class StudyBusyError(VarsweepError, RuntimeError):
    """Another live driver runs the study, and its database (SQLite) cannot host two."""


class SweepRecords:
    """The store, the study, MLflow and the lease of one sweep (see the module docstring)."""

    def __init__(self, plan: SweepPlan, settings: Settings, *, workdir: Path) -> None:
        from sweep.search import warm_start_points
        from sweep.store import Store
        from sweep.tracking import Tracker
        from sweep.tuning import open_study, prepare_study

        self.plan, self.settings = plan, settings
        request = plan.request
        self.key = plan.study_name
        self.workdir = workdir.resolve()
        self.commit = git_commit()
        self.status = "failed"
        self.message: str | None = None
        self.sweep_id: str | None = None
        self._stop = threading.Event()
        self._lease: threading.Thread | None = None
        with contextlib.ExitStack() as locks:
            for url in dict.fromkeys(
                [settings.database_url, settings.study_url, settings.mlflow_tracking_uri]
            ):
                locks.enter_context(database_lock(url, "varsweep-start"))
            self.store = Store(settings.database_url, retry_seconds=settings.connect_timeout)
            self.store.retry_seconds = settings.outage_timeout  # from now on, wait out a restarting database
            self.tracker = Tracker(
                settings.mlflow_tracking_uri,
                experiment=self.key,
                spool=self.workdir / ".varsweep" / f"mlflow-spool-{slug(self.key)}.jsonl",
                timeout=settings.mlflow_timeout,
            )
            for dead in self.store.reap(self.key, grace=settings.heartbeat_grace):
                killed = self.tracker.kill_runs_of(dead.id)
                log.warning(
                    "sweep %s (%s) stopped renewing its lease: recorded as killed (%d MLflow run(s) "
                    "ended as KILLED)",
                    dead.id[:8],
                    dead.describe(),
                    killed,
                )
            live = self.store.live(self.key, grace=settings.heartbeat_grace)
            if live and is_sqlite(settings.study_url):
                raise StudyBusyError(
                    f"study {self.key!r} is being run by another sweep ({live[0].describe()}); SQLite cannot host "
                    "two drivers of one study: wait for it to end, or put the study on PostgreSQL "
                    "(VARSWEEP_DATABASE_URL=postgresql+psycopg://...) to run several"
                )
            if live:
                log.info("study %s: %d other sweep(s) running; sharing the study", self.key, len(live))
            self.study = open_study(
                name=self.key,
                url=settings.study_url,
                direction=plan.direction,
                seed=request.seed,
                identity=plan.identity,
                other_drivers=len(live),
                outage_timeout=settings.outage_timeout,
            )
            # warm start: the stored best settings of this model on other tasks, then of this task on other models
            related = [r for r in self.store.best(model=plan.model_key) if r.task != request.task]
            related += [r for r in self.store.best(task=request.task) if r.model != plan.model_key]
            warm = warm_start_points(plan.space, related) if request.warm_start else []
            self.finished_before = prepare_study(
                self.study,
                plan.space,
                warm,
                live=frozenset(s.id for s in live),
                outage_timeout=settings.outage_timeout,
                url=settings.study_url,
            )
            self.sweep_id = self.store.start_sweep(
                key=self.key,
                model=plan.model_key,
                task=request.task,
                convention=request.convention,
                host=socket.gethostname(),
                pid=os.getpid(),
            )
        self._lease = threading.Thread(target=self._renew, name="varsweep-lease", daemon=True)
        self._lease.start()

    # ---------------------------------------------------------------- MLflow
    def open_mlflow(self) -> str:
        """The study's MLflow run, continued by this sweep (see sweep.tracking); returns its id."""
        plan, request = self.plan, self.plan.request
        params = {
            "model": plan.model_key,
            "task": request.task,
            "convention": request.convention,
            "metric": plan.metric,
            "direction": plan.direction,
            "holdout": request.holdout,
            "seed": request.seed,
            "limit": request.limit,
            "split": request.split,
            "n_tuning_groups": len(plan.tuning.groups),
            "n_heldout_groups": len(plan.heldout.groups),
            "n_tuning_examples": len(plan.tuning.examples),
            "n_heldout_examples": len(plan.heldout.examples),
            "data_fingerprint": plan.fingerprint,
        }
        invocation = {
            "trials": request.trials,
            "batch": request.batch,
            "early_stop": request.early_stop,
            "workers": request.workers,
            "device": request.device,
            "started_by": f"{socket.gethostname()}:{os.getpid()}",
        }
        tags = {
            "varsweep.study": self.key,
            **{f"settings.{k}": v for k, v in self.settings.describe().items()},
        }
        run_id = self.tracker.open_study_run(
            study=self.key,
            sweep_id=str(self.sweep_id),
            params=params,
            tags=tags,
            system_tags=_system_tags(self.commit),
            invocation=invocation,
        )
        with contextlib.suppress(Exception):  # the lease thread writes it too; a failure here changes nothing
            self.store.beat(str(self.sweep_id), mlflow_run_id=run_id)
        return run_id

    # ---------------------------------------------------------------- lease
    def _renew(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                self.store.beat(str(self.sweep_id))
            # a database outage: the next beat tries again (the grace period is longer)
            except Exception as e:
                log.debug("lease not renewed: %s", first_line(e))

    def others_alive(self) -> bool:
        """Whether another driver of the study is running (then the study's MLflow run stays RUNNING)."""
        try:
            live = self.store.live(self.key, grace=self.settings.heartbeat_grace)
        except Exception:
            return False
        return any(s.id != self.sweep_id for s in live)

    # ---------------------------------------------------------------- end
    def close(self, trials: int) -> int:
        """Record how the sweep ended (``status``, ``message``) in MLflow and the store; never raises. Returns
        how many trial runs could not be logged to MLflow (kept in the spool)."""
        from sweep.tuning import finished_trials

        self._stop.set()
        unlogged = 0
        mlflow_status = {"completed": "FINISHED", "interrupted": "KILLED"}.get(self.status, "FAILED")
        try:
            unlogged = self.tracker.finish(None if self.others_alive() else mlflow_status)
        except Exception as e:
            log.warning("could not end the MLflow runs: %s", first_line(e))
        if unlogged:
            log.warning(
                "%d trial run(s) could not be logged to MLflow; they are kept in %s",
                unlogged,
                self.tracker.spool,
            )
        if self.sweep_id is not None:
            try:
                total = len(finished_trials(self.study)) if trials < 0 else trials
                self.store.finish_sweep(self.sweep_id, status=self.status, trials=total, message=self.message)
            except Exception as e:
                log.warning("could not record the end of the sweep: %s", first_line(e))
        return unlogged

    @contextlib.contextmanager
    def recording(self) -> Iterator[SweepRecords]:
        """The sweep's body: its outcome (completed, interrupted by a signal, failed with a message) is recorded
        by :meth:`close` whatever happens."""
        from sweep import signals

        try:
            yield self
            self.status = "completed"
        except signals.Interrupted as e:
            self.status, self.message = "interrupted", e.name
            raise
        except BaseException as e:
            self.message = redact_url(str(e) or type(e).__name__)[:2000]
            raise
        finally:
            self.close(-1)


def _system_tags(commit: str | None) -> dict[str, str]:
    """MLflow's standard system tags, which the UI shows as Source, Version and User."""
    tags = {
        "mlflow.source.name": Path(sys.argv[0]).name or "varsweep",
        "mlflow.source.type": "LOCAL",
        "mlflow.user": _user(),
    }
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return "unknown"
