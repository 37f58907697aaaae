"""Benchmark data from the Hugging Face hub, for the tasks whose hub dataset has the layout the loader reads.

``data_dir="hf://<owner>/<name>"`` (or no ``data_dir`` for a task with a default dataset) downloads the dataset
repository with ``huggingface_hub.snapshot_download`` into the hub cache and hands the local copy to the task's
loader. Tasks whose hub copies have another layout (POPE, MME, ... in lmms-eval's parquet form) are read from a
local folder in the benchmark's own layout (docs/tasks.md).
"""

from __future__ import annotations

from pathlib import Path

from var_core.errors import first_line
from workers.tasks._errors import DataError

__all__ = ["HUB_DATASETS", "HUB_PREFIX", "resolve_data_dir"]

HUB_PREFIX = "hf://"
# task -> (default dataset, files the loader reads)
HUB_DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mmvp": ("lmms-lab-eval/MMVP", ("*.parquet", "data/*.parquet", "*.md")),  # lmms-eval's corrected MMVP
    "cv_bench": ("nyu-visionx/CV-Bench", ("test_2d.parquet", "test_3d.parquet", "*.md")),
}


def resolve_data_dir(task: str, data_dir: str | Path | None) -> Path:
    """A local folder for ``task``: ``data_dir`` itself, or a hub dataset downloaded to the hub cache."""
    if data_dir is not None and not str(data_dir).startswith(HUB_PREFIX):
        return Path(data_dir)
    if task not in HUB_DATASETS:
        raise DataError(
            f"task {task!r} needs data_dir: the folder that directly holds the benchmark's files (docs/tasks.md); "
            f"hub downloads are known for {', '.join(sorted(HUB_DATASETS))}"
        )
    default, patterns = HUB_DATASETS[task]
    repo = str(data_dir)[len(HUB_PREFIX) :] if data_dir is not None else default
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, repo_type="dataset", allow_patterns=list(patterns)))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        raise DataError(
            f"cannot download dataset {repo!r} for task {task!r} from the Hugging Face hub: {first_line(e)}"
        ) from e
