"""Plan a sweep: everything that can be checked before anything is written.

:func:`plan_sweep` turns a :class:`SweepRequest` (the command line, as data) into a :class:`SweepPlan`: the task
and its tuning / held-out splits, the metric and its direction, the search space, the rungs, the model's store
key, the data's fingerprint and the study's identity. Any bad input (a task, metric, model, range, image, study
name) fails here with one line; no database, MLflow run or Ray worker exists yet.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweep.fidelity import EARLY_STOP, Rungs
from sweep.search import SearchSpace, space_for
from var_core.config import Convention
from var_core.errors import ConfigError

__all__ = [
    "SweepRequest",
    "SweepPlan",
    "plan_sweep",
    "split_groups",
    "data_fingerprint",
    "git_commit",
    "slug",
    "MAX_STUDY_NAME",
]

MAX_STUDY_NAME = 200  # characters: a study name is also an MLflow experiment name (and part of folder names)
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class SweepRequest:
    """What the user asked for (the command line's options)."""

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
    # "cuda": one GPU per worker (waiting for them); "cpu"; "auto": cuda if the cluster has GPUs at start
    device: str = "auto"
    sink_dims: tuple[int, ...] | None = None  # the model's sink dimensions, if known better than the table
    discover_sink_dims: bool = False  # find them from the model (var_core.discover_sink_dims)

    @property
    def study_name(self) -> str:
        return self.study or f"{self.model}:{self.task}:{self.convention}"


@dataclass(frozen=True)
class SweepPlan:
    """A checked request: what the sweep will do, with nothing written yet."""

    request: SweepRequest
    task: Any  # workers.tasks.Task, all groups
    tuning: Any  # the tuning split (a Task)
    heldout: Any  # the held-out split, never seen by the search
    metric: str
    direction: str
    space: SearchSpace
    rungs: Rungs
    model_key: str
    fingerprint: str
    identity: dict[str, Any] = field(default_factory=dict)  # what the study optimises (recorded on it)

    @property
    def study_name(self) -> str:
        return self.request.study_name


def plan_sweep(request: SweepRequest, *, max_image_pixels: int | None = None) -> SweepPlan:
    """Check ``request`` and plan the sweep (see the module docstring). Raises a one-line VarsweepError."""
    from workers.tasks import get_task

    _check_options(request)
    task = get_task(request.task, data_dir=request.data_dir, split=request.split, limit=request.limit)
    metric = request.metric or task.metric
    direction = task.direction_of(metric)
    tuning_groups, heldout_groups = split_groups(task.groups, holdout=request.holdout, seed=request.seed)
    task.check_images(max_pixels=max_image_pixels)
    from workers.catalog import check_model

    model = check_model(request.model)
    task.check_text(model.image_strings, source=request.data_dir or request.task)
    space = space_for(
        task.group,
        request.convention,
        search_summ=request.search_summ,
        tau=request.tau_range,
        rho=request.rho_range,
        p=request.p_range,
    )
    # every trial sees the tuning groups in this order, rung by rung (one rung: all of them)
    rungs = (
        Rungs.geometric(tuning_groups, seed=request.seed)
        if request.early_stop == "asha"
        else Rungs.single(tuning_groups)
    )
    fingerprint = data_fingerprint(task)
    identity = {
        "model": model.key,
        "task": request.task,
        "convention": request.convention,
        "metric": metric,
        "direction": direction,
        "data": fingerprint,
        "split": request.split,
        "limit": request.limit,
        "holdout": request.holdout,
        "seed": request.seed,
    }
    return SweepPlan(
        request=request,
        task=task,
        tuning=task.select(tuning_groups),
        heldout=task.select(heldout_groups),
        metric=metric,
        direction=direction,
        space=space,
        rungs=rungs,
        model_key=model.key,
        fingerprint=fingerprint,
        identity=identity,
    )


def _check_options(request: SweepRequest) -> None:
    if request.batch < 1:
        raise ConfigError(f"--batch {request.batch} is out of range: it must be at least 1")
    if request.early_stop not in EARLY_STOP:
        raise ConfigError(f"--early-stop {request.early_stop!r} is not one of {', '.join(EARLY_STOP)}")
    if request.device not in DEVICES:
        raise ConfigError(f"--device {request.device!r} is not one of {', '.join(DEVICES)}")
    if request.sink_dims is not None and request.discover_sink_dims:
        raise ConfigError("--sink-dims and --discover-sink-dims exclude each other: give dims, or find them")
    name = request.study_name
    if len(name) > MAX_STUDY_NAME:
        raise ConfigError(f"--study is {len(name)} characters long: at most {MAX_STUDY_NAME}")
    if not name.strip() or any(not c.isprintable() for c in name):
        raise ConfigError(
            f"--study {name!r}: use printable characters (it names the study and its MLflow experiment)"
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
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def slug(name: str) -> str:
    """A short file name for ``name`` (a study: any characters, up to MAX_STUDY_NAME): its safe characters, cut,
    and a hash, so two names never share one."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:48].strip("_") or "study"
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"
