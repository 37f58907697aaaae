"""Benchmark tasks for varsweep: data + prompt + scorer, behind one registry.

>>> from workers.tasks import get_task
>>> task = get_task("pope", "tests/data/pope", split="random")         # doctest: +SKIP
>>> task.metric, task.direction, len(task.examples)                     # doctest: +SKIP
('f1', 'maximize', 2910)

docs/tasks.md lists each task's layout, prompt, scoring and where it departs from the reference implementations.
"""

from workers.tasks._base import Example, ImageRef, Task, TaskSpec, render_prompt
from workers.tasks._compare import PairedComparison, paired_comparison
from workers.tasks._errors import (
    DataError,
    DuplicateTaskError,
    OptionTokenError,
    ScoringError,
    UnknownTaskError,
)
from workers.tasks._options import option_token_ids
from workers.tasks._registry import TASKS, Registry, TaskInfo, get_task, task_catalog, task_names
from workers.tasks._samples import sample_records, samples_jsonl

__all__ = [
    "get_task",
    "task_names",
    "task_catalog",
    "TaskInfo",
    "Task",
    "TaskSpec",
    "Example",
    "ImageRef",
    "render_prompt",
    "PairedComparison",
    "paired_comparison",
    "sample_records",
    "samples_jsonl",
    "option_token_ids",
    "Registry",
    "TASKS",
    "DataError",
    "UnknownTaskError",
    "DuplicateTaskError",
    "ScoringError",
    "OptionTokenError",
]
