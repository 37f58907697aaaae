"""MLflow tracking of a study: one top-level run per study, a child run per trial, logged from the driver.

The study's run is created by its first sweep and continued by every later one (a resume, an extension, another
driver): each invocation is recorded on it as a tag ``varsweep.invocation.<sweep id>`` (trials asked for, batch,
start, host), and every trial run carries the invocation (``varsweep.sweep_id``) that ran it. So the study's best trial
is found, tagged and given its figures whichever invocation ran it. Every run gets MLflow's standard system tags
(source, git commit, user), so the UI's Source, Version and User columns are filled.

Every call goes through ``MlflowClient`` with explicit run ids (no global active run), with bounded HTTP retries.
When the tracking server is unreachable the sweep goes on: the record is spooled to a local JSON-lines file, a
warning says so once, and the spool is replayed at the next successful call or at the end; what still cannot be
logged is reported as not logged, with the spool's path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from sweep.settings import first_line, redact_url
from var_core.errors import VarsweepError

__all__ = ["QuietWriter", "Tracker", "TrackingError"]

log = logging.getLogger(__name__)
# MLflow raises many types when its server is away (MlflowException, requests' and urllib3's errors, OSError):
# every failure after start-up is caught as Exception on purpose, spooled and reported, never swallowed.


class TrackingError(VarsweepError, RuntimeError):
    """MLflow cannot be used at all (at start: a bad URI or an unwritable location)."""


def _study_key(study: str) -> str:
    """A tag value that finds the study's run: a hash, so that no character of the name needs escaping in a
    search filter."""
    return hashlib.sha256(study.encode()).hexdigest()[:16]


def _bound_http_retries(timeout: float) -> None:
    # Defaults retry for minutes against a dead server (ECOSYSTEM.md); keep the user's choice if set.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(1, timeout))))
    # a progress bar per artifact read back (one small JSON) is noise in the sweep's log
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow logs its database migrations at INFO on every first use of a store: not news to a sweep user
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


class QuietWriter:
    """Runs the driver's MLflow calls on one thread, in order, each once the driver is quiet: no call submitted for
    ``quiet`` seconds, or ``most`` seconds after its own submission at the latest.

    Between two batches the driver's Tune loop ends a batch's trials and starts as many more, ~0.1 s each, while the
    workers wait for them; the MLflow writes of those trials (about half of the driver's CPU there) would share the
    loop's GIL, so they wait for the batch to run instead (the worker idle 2.5 and 2.7 s of 53-54 s searches against
    4.3 and 4.4 s, two sweeps each way, alternated). :meth:`shutdown` runs what is left without waiting.
    """

    def __init__(self, name: str, *, quiet: float = 0.3, most: float = 5.0) -> None:
        self._quiet, self._most = quiet, most
        self._calls: queue.SimpleQueue[tuple[float, Callable[[], Any], Future] | None] = queue.SimpleQueue()
        self._wake = threading.Condition()
        self._last_submit = time.monotonic()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn(*args, **kwargs)``; its future holds the result or the error."""
        future: Future = Future()
        with self._wake:
            if self._closing:
                raise RuntimeError("the MLflow writer is shut down")
            self._last_submit = time.monotonic()
            self._calls.put((self._last_submit, lambda: fn(*args, **kwargs), future))
        return future

    def shutdown(self, wait: bool = True) -> None:
        """Run every queued call now, then stop (``wait``: until they are done)."""
        with self._wake:
            if not self._closing:
                self._closing = True
                self._calls.put(None)
            self._wake.notify()
        if wait:
            self._thread.join()

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            submitted, call, future = item
            with self._wake:
                while not self._closing:
                    wait = min(self._last_submit + self._quiet, submitted + self._most) - time.monotonic()
                    if wait <= 0:
                        break
                    self._wake.wait(wait)
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as e:  # handed to the future, as an executor does
                    future.set_exception(e)


class Tracker:
    """Parent and child runs in one experiment (named after the study)."""

    def __init__(self, uri: str, *, experiment: str, spool: Path, timeout: float = 5.0) -> None:
        _bound_http_retries(timeout)
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.spool = spool
        self._warned = False
        try:
            self.client = MlflowClient(tracking_uri=uri)
            existing = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (
                existing.experiment_id if existing is not None else self.client.create_experiment(experiment)
            )
        except Exception as e:  # any failure here means tracking cannot start: report it in one line
            raise TrackingError(f"cannot use MLflow at {redact_url(uri)}: {first_line(e)}") from e
        self.parent_id: str | None = None
        self.sweep_id = ""
        self.system_tags: dict[str, str] = {}
        self._trial_runs: dict[int, str] = {}  # trial number -> run id, once found or created
        self._rung_steps: dict[int, set[int]] = {}  # trial number -> steps log_rung wrote

    # ---------------------------------------------------------------- runs
    def open_study_run(
        self,
        *,
        study: str,
        sweep_id: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        system_tags: Mapping[str, str],
        invocation: Mapping[str, Any],
    ) -> str:
        """The study's run: found (and set RUNNING again) or created; records this invocation. Returns its id.

        ``params`` are the study's own (constant for the study; unset values are not logged); ``invocation`` is
        what differs from one sweep of the study to the next (trials asked for, batch, ...), kept as a tag.
        """
        self.system_tags = dict(system_tags)
        self.sweep_id = sweep_id
        key = _study_key(study)
        found = self._runs(f"tags.varsweep.kind = 'study' and tags.varsweep.study_key = '{key}'")
        if found:
            self.parent_id = found[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
        else:
            run = self.client.create_run(
                self.experiment_id,
                run_name=study,
                tags={"varsweep.kind": "study", "varsweep.study": study, "varsweep.study_key": key},
            )
            self.parent_id = run.info.run_id
        # keyed by the sweep, not counted: drivers that start together never write the same tag
        entry = json.dumps(
            {"sweep_id": sweep_id, "started": time.strftime("%Y-%m-%d %H:%M:%S"), **invocation}
        )
        self._log(
            self.parent_id,
            params={k: v for k, v in params.items() if v is not None},
            tags={**self.system_tags, **tags, f"varsweep.invocation.{sweep_id[:12]}": entry},
        )
        return self.parent_id

    def run_url(self, ui: str, run_id: str | None = None) -> str:
        """The MLflow UI page of a run (the study's by default), in the classic runs view: MLflow 3 opens an
        experiment in its GenAI view unless the URL asks for machine-learning runs."""
        run = run_id or self.parent_id
        return f"{ui.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run}?workflowType=machine_learning"

    def kill_runs_of(self, sweep_id: str) -> int:
        """End the RUNNING trial runs of a dead invocation as KILLED; returns how many."""
        runs = self._runs(f"tags.varsweep.sweep_id = '{sweep_id}' and attributes.status = 'RUNNING'")
        for run in runs:
            if run.data.tags.get("varsweep.kind") == "trial":
                self.client.set_terminated(run.info.run_id, status="KILLED")
        return sum(r.data.tags.get("varsweep.kind") == "trial" for r in runs)

    def start_trial(
        self, *, number: int, role: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None
    ) -> None:
        """Open trial ``number``'s run as it starts (RUNNING); :meth:`log_trial` ends it. If MLflow is away, the
        run is created when the trial's record is logged."""
        try:
            if self._find_trial(number) is None:
                run_id = self._create_trial_run(number, role)
                self._log(run_id, params=params, tags=tags)
        except Exception as e:
            self._warn(e)

    def log_trial(
        self,
        *,
        number: int,
        role: str,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        series: Mapping[str, Sequence[float]] | None = None,
        artifacts: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        step_metrics: Mapping[str, float] | None = None,
        step: int = 0,
    ) -> str | None:
        """End Optuna trial ``number``'s run (created if it does not exist yet); None when spooled.

        ``series`` are metrics logged at steps 0, 1, ... (e.g. one value per layer); ``artifacts`` maps a path to
        a text (written as it is) or to JSON-able data (written as JSON); ``step_metrics`` are logged at ``step``
        unless :meth:`log_rung` already logged that step.
        """
        record = {
            "number": number,
            "role": role,
            "params": dict(params),
            "metrics": dict(metrics),
            "series": {k: list(v) for k, v in (series or {}).items()},
            "artifacts": dict(artifacts or {}),
            "tags": dict(tags or {}),
            "step_metrics": dict(step_metrics or {}),
            "step": step,
        }
        if not self.flush():
            self._spool(record)
            return None
        try:
            return self._write_trial(record)
        except Exception as e:
            self._spool(record, e)
            return None

    def log_parent(
        self, *, metrics: Mapping[str, float] | None = None, tags: Mapping[str, str] | None = None
    ) -> None:
        if self.parent_id is None:
            return
        try:
            self._log(self.parent_id, metrics=metrics or {}, tags=tags or {})
        except Exception as e:
            self._warn(e)

    def log_figure(self, figure: Any, path: str, run_id: str | None = None) -> None:
        run_id = run_id or self.parent_id
        if run_id is None:
            return
        try:
            self.client.log_figure(run_id, figure, path)
        except Exception as e:
            self._warn(e)

    def tag_trial(self, number: int, key: str, value: str) -> None:
        run_id = self._find_trial(number)
        if run_id is not None:
            try:
                self.client.set_tag(run_id, key, value)
            except Exception as e:
                self._warn(e)

    def finish(self, status: str | None = "FINISHED") -> int:
        """End this invocation's unfinished trial runs and the study's run with ``status`` (None: leave the study's
        run RUNNING, another driver still works on it); returns how many trial runs are still not logged."""
        self.flush()
        if self.parent_id is not None:
            try:
                mine = f"tags.varsweep.sweep_id = '{self.sweep_id}' and attributes.status = 'RUNNING'"
                for run in self._runs(mine):
                    # a trial that never reported: interrupted, or failed
                    if run.info.run_id != self.parent_id:
                        self.client.set_terminated(
                            run.info.run_id, status="KILLED" if status == "KILLED" else "FAILED"
                        )
                if status is not None:
                    self.client.set_terminated(self.parent_id, status=status)
            except Exception as e:
                self._warn(e)
        return self.unlogged()

    def log_rung(self, number: int, metrics: Mapping[str, float], *, step: int) -> None:
        """Trial ``number``'s metrics after a rung, at ``step`` (examples seen): the rung curve. If MLflow is
        away, the point is skipped (the trial's final metrics are spooled by :meth:`log_trial`)."""
        try:
            run_id = self._find_trial(number)
            if run_id is not None:
                self._log(run_id, metrics=metrics, step=step)
                self._rung_steps.setdefault(number, set()).add(step)
        except Exception as e:
            self._warn(e)

    def fail_trial(self, number: int) -> None:
        """End trial ``number``'s run as FAILED (its trial raised)."""
        try:
            run_id = self._find_trial(number)
            if run_id is not None:
                self.client.set_terminated(run_id, status="FAILED")
        except Exception as e:
            self._warn(e)

    # ---------------------------------------------------------------- spool
    def unlogged(self) -> int:
        if not self.spool.exists():
            return 0
        return sum(1 for line in self.spool.read_text().splitlines() if line.strip())

    def flush(self) -> bool:
        """Replay spooled trial records; True when none is left."""
        if not self.spool.exists():
            return True
        records = [json.loads(line) for line in self.spool.read_text().splitlines() if line.strip()]
        for i, record in enumerate(records):
            try:
                self._write_trial(record)
            except Exception:
                self.spool.write_text("".join(json.dumps(r) + "\n" for r in records[i:]))
                return False
        self.spool.unlink()
        log.warning("MLflow is reachable again: %d spooled trial run(s) logged", len(records))
        return True

    def _spool(self, record: dict[str, Any], error: Exception | None = None) -> None:
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with self.spool.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self._warn(error)

    def _warn(self, error: Exception | None) -> None:
        if not self._warned:
            reason = first_line(error) if error is not None and str(error).strip() else "unreachable"
            log.warning(
                "MLflow at %s is unreachable (%s): the sweep goes on, trial results stay in the study, "
                "runs are spooled to %s and logged when it is back",
                redact_url(self.uri),
                reason,
                self.spool,
            )
            self._warned = True

    # ---------------------------------------------------------------- plumbing
    def _write_trial(self, record: Mapping[str, Any]) -> str:
        run_id = self._find_trial(record["number"])
        if run_id is None:
            run_id = self._create_trial_run(record["number"], record["role"])
            self._log(run_id, params=record["params"])
        self._log(run_id, metrics=record["metrics"], series=record.get("series"), tags=record["tags"])
        if record.get("step_metrics") and record.get("step", 0) not in self._rung_steps.get(
            record["number"], set()
        ):
            self._log(run_id, metrics=record["step_metrics"], step=record["step"])
        for path, data in record.get("artifacts", {}).items():
            self._artifact(run_id, path, data)
        self.client.set_terminated(run_id)
        return run_id

    def log_artifacts(self, artifacts: Mapping[str, Any], run_id: str | None = None) -> None:
        """Texts or JSON-able data as files of a run (the parent by default); see :meth:`log_trial`."""
        run_id = run_id or self.parent_id
        if run_id is None:
            return
        try:
            for path, data in artifacts.items():
                self._artifact(run_id, path, data)
        except Exception as e:
            self._warn(e)

    def _artifact(self, run_id: str, path: str, data: Any) -> None:
        if isinstance(data, str):
            self.client.log_text(run_id, data, path)
        else:
            self.client.log_dict(run_id, data, path)

    def load_dict(self, run_id: str, path: str) -> Any:
        """A JSON artifact of a run (see :meth:`log_trial`), or None when it cannot be read."""
        import tempfile

        try:
            with tempfile.TemporaryDirectory() as folder:
                return json.loads(Path(self.client.download_artifacts(run_id, path, folder)).read_text())
        except Exception as e:
            self._warn(e)
            return None

    def _create_trial_run(self, number: int, role: str) -> str:
        tags = {
            **self.system_tags,
            "mlflow.parentRunId": self.parent_id or "",
            "varsweep.kind": "trial",
            "varsweep.trial": str(number),
            "varsweep.role": role,
            "varsweep.sweep_id": self.sweep_id,
        }
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number:03d}-{role}", tags=tags)
        self._trial_runs[number] = run.info.run_id
        return run.info.run_id

    def find_trial(self, number: int) -> str | None:
        """The run id of trial ``number`` of this sweep, or None (not logged, or MLflow away)."""
        try:
            return self._find_trial(number)
        except Exception as e:
            self._warn(e)
            return None

    def _find_trial(self, number: int) -> str | None:
        if self.parent_id is None:
            return None
        if number not in self._trial_runs:
            runs = self._runs(
                f"tags.varsweep.trial = '{number}' and tags.mlflow.parentRunId = '{self.parent_id}'"
            )
            if not runs:
                return None
            self._trial_runs[number] = runs[0].info.run_id
        return self._trial_runs[number]

    def _runs(self, filter_string: str) -> list[Any]:
        return list(
            self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1000)
        )

    def _log(
        self,
        run_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        series: Mapping[str, Sequence[float]] | None = None,
        tags: Mapping[str, str] | None = None,
        step: int = 0,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        steps = [
            Metric(k, float(v), now, i) for k, values in (series or {}).items() for i, v in enumerate(values)
        ]
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()] + steps,
            params=[Param(k, redact_url(str(v))) for k, v in (params or {}).items()],
            tags=[RunTag(k, redact_url(str(v))) for k, v in (tags or {}).items()],
        )
