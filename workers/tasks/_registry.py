"""The task registry (lm-eval:lm_eval/api/registry.py style): name -> loader, lazy imports, near names."""

from __future__ import annotations

import difflib
import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from workers.tasks._base import Task, TaskSpec
from workers.tasks._errors import DataError, DuplicateTaskError, UnknownTaskError
from workers.tasks._hub import resolve_data_dir

__all__ = ["Registry", "TASKS", "TaskInfo", "get_task", "task_catalog", "task_names"]

T = TypeVar("T")
Loader = Callable[..., Task]


class Registry(Generic[T]):
    """Thread-safe name -> object table. Objects may be given as ``"module:attribute"`` and load on first use.

    Registering a taken name raises :class:`DuplicateTaskError`; an unknown name raises
    :class:`UnknownTaskError` with the closest names and the full list.
    """

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._items: dict[str, T | str] = {}
        self._lock = threading.RLock()

    def register(self, name: str, target: T | str) -> None:
        with self._lock:
            if name in self._items:
                raise DuplicateTaskError(f"{self._kind} {name!r} is already registered")
            self._items[name] = target

    def get(self, name: str) -> T:
        with self._lock:
            if name not in self._items:
                raise UnknownTaskError(self._unknown_message(name))
            target = self._items[name]
            if isinstance(target, str):
                module, _, attribute = target.partition(":")
                target = getattr(importlib.import_module(module), attribute)
                self._items[name] = target
            return target

    def names(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._items

    def _unknown_message(self, name: str) -> str:
        known = sorted(self._items)
        near = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(near)}?" if near else ""
        return f"unknown {self._kind} {name!r}.{hint} Known: {', '.join(known)}"


TASKS: Registry[Loader] = Registry("task")
SPECS: Registry[TaskSpec] = Registry("task")


@dataclass(frozen=True)
class TaskInfo:
    """What ``varsweep tasks`` lists: a task's spec and where its data comes from."""

    spec: TaskSpec
    data: str  # what data_dir holds (docs/tasks.md), and the hub default where there is one


# name -> (loader, spec, what data_dir holds); loaders and specs import on first use
_CATALOG = {
    "mmvp": (
        "workers.tasks.mmvp:load_mmvp",
        "workers.tasks.mmvp:SPEC",
        "Questions.csv + MMVP Images/; default hf://lmms-lab-eval/MMVP",
    ),
    "pope": (
        "workers.tasks.pope:load_pope",
        "workers.tasks.pope:SPEC",
        "coco_pope_{random,popular,adversarial}.json; COCO val2014 images",
    ),
    "cv_bench": (
        "workers.tasks.cv_bench:load_cv_bench",
        "workers.tasks.cv_bench:SPEC",
        "test_2d/test_3d parquet, or jsonl + img/; default hf://nyu-visionx/CV-Bench",
    ),
    "chair": (
        "workers.tasks.chair:load_chair",
        "workers.tasks.chair:SPEC",
        "COCO instances + captions (or lmms-eval's parquet); WordNet",
    ),
    "mme": ("workers.tasks.mme:load_mme", "workers.tasks.mme:SPEC", "the benchmark's per-category folders"),
    "vqav2": (
        "workers.tasks.vqa:load_vqav2",
        "workers.tasks.vqa:VQAV2",
        "v2_OpenEnded_mscoco questions + annotations; COCO images",
    ),
    "vizwiz": (
        "workers.tasks.vqa:load_vizwiz",
        "workers.tasks.vqa:VIZWIZ",
        "<split>.json annotations + images",
    ),
    "gqa": (
        "workers.tasks.vqa:load_gqa",
        "workers.tasks.vqa:GQA",
        "testdev_balanced_questions.json + images/",
    ),
    "mmhal": (
        "workers.tasks.mmhal:load_mmhal",
        "workers.tasks.mmhal:SPEC",
        "response_template.json + images",
    ),
}
for _name, (_loader, _spec, _data) in _CATALOG.items():
    TASKS.register(_name, _loader)
    SPECS.register(_name, _spec)


def task_catalog() -> dict[str, TaskInfo]:
    """Every task's spec and data source, without reading any data."""
    return {name: TaskInfo(spec=SPECS.get(name), data=data) for name, (_, _, data) in _CATALOG.items()}


def task_names() -> tuple[str, ...]:
    """Names :func:`get_task` accepts."""
    return TASKS.names()


def get_task(
    name: str,
    data_dir: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    **options: Any,
) -> Task:
    """Load benchmark ``name`` from the folder ``data_dir`` that directly holds its files, or from the hub.

    Args:
        name: one of :func:`task_names`. data_dir: the benchmark's folder in its real layout (docs/tasks.md
        lists each one), or ``hf://<owner>/<dataset>`` (None: the task's default hub dataset, where it has one;
        see :mod:`workers.tasks._hub`). split: the task's split, where it has one (POPE: random/popular/adversarial;
        CV-Bench: 2D/3D); None = all. limit: keep the first ``limit`` groups (MMVP pairs, POPE images, ...),
        not examples. options: task-specific keywords (e.g. MMVP ``variant``, POPE ``image_dir``, CHAIR
        ``parser``).

    Raises:
        UnknownTaskError: ``name`` is not registered (the message suggests near names).
        DataError: ``data_dir`` is missing or a file in it is malformed (the message names file and row).
    """
    loader = TASKS.get(name)
    root = resolve_data_dir(name, data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: data_dir of task {name!r} is not a folder")
    return loader(root, split=split, limit=limit, **options)
