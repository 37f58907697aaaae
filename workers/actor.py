"""ModelWorker, the Ray actor that hosts one model, and WorkerPool, which fans configurations out to N of them.

A worker loads its model once (cuda when present, else cpu), loads the task from the same arguments as the driver,
keeps its shard's prefixes in an :class:`~workers.engine.EvalEngine`, and evaluates batches of configurations on
one split of its shard. Concurrent calls (several trials at once) are micro-batched: calls that arrive while the
engine is busy are evaluated together, one configuration per batch row. After a crash Ray restarts the actor
(``max_restarts``); the new process reloads the model and rebuilds its prefix cache on first use, and Ray retries
the calls that were in flight (``max_task_retries``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from var_core import VARConfig

__all__ = ["TaskRef", "ModelWorker", "WorkerPool", "merge_results"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskRef:
    """How to load a task: the arguments of ``workers.tasks.get_task``, so every process loads the same one."""

    name: str
    data_dir: str | None = None
    split: str | None = None
    limit: int | None = None

    def load(self) -> Any:
        from workers.tasks import get_task

        return get_task(self.name, data_dir=self.data_dir, split=self.split, limit=self.limit)


class ModelWorker:
    """Hosts one model and evaluates configurations on its shard (use as a Ray actor: ``WorkerPool`` does)."""

    def __init__(
        self,
        *,
        model: str,
        task: TaskRef,
        shard: dict[str, list[str]],
        cache_bytes: int = 8 << 30,
        host_cache_bytes: int = 32 << 30,
        max_batch: int = 16,
        dtype: str | None = None,
    ) -> None:
        import torch

        from workers.engine import EvalEngine
        from workers.models import load_model

        started = time.perf_counter()
        self.model_name = model
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.task = task.load()
        by_id = {e.id: e for e in self.task.examples}
        missing = [i for ids in shard.values() for i in ids if i not in by_id]
        if missing:
            raise KeyError(f"shard names {len(missing)} example ids the task does not have, e.g. {missing[:3]}")
        self.shard = {split: [by_id[i] for i in ids] for split, ids in shard.items()}
        model_obj, processor = load_model(model, device=self.device, dtype=getattr(torch, dtype) if dtype else None)
        self.engine = EvalEngine(
            model_obj, processor, cache_bytes=cache_bytes, host_cache_bytes=host_cache_bytes, max_batch=max_batch
        )
        self.load_seconds = time.perf_counter() - started
        self._lock = asyncio.Lock()
        self._pending: list[tuple[list[VARConfig | None], str, asyncio.Future]] = []
        self.calls = 0
        self.batches = 0

    async def ready(self) -> dict[str, Any]:
        """Who this worker is: for the driver's log and for tests."""
        return {
            "pid": os.getpid(),
            "model": self.model_name,
            "device": self.device,
            "examples": {split: len(examples) for split, examples in self.shard.items()},
            "load_seconds": round(self.load_seconds, 2),
            "prepared": self.engine.cache_stats.prepared,
        }

    async def prepare(self, splits: Sequence[str] | None = None) -> int:
        """Compute the prefixes of this shard (logged as it goes); returns how many examples are ready."""
        examples = [e for split in (splits or list(self.shard)) for e in self.shard.get(split, [])]
        step = max(1, len(examples) // 10)

        def progress(done: int, total: int) -> None:
            if done % step == 0 or done == total:
                log.info("worker %s: prepared %d/%d prefixes", os.getpid(), done, total)

        async with self._lock:
            await asyncio.to_thread(self.engine.prepare, self.task, examples, progress)
        return len(examples)

    async def evaluate(self, configs: list[VARConfig | None], split: str) -> list[Any]:
        """Results (``ConfigResult``) of ``configs`` on this worker's examples of ``split``.

        Calls that arrive while another is running are queued and then evaluated as one batch.
        """
        if split not in self.shard:
            raise KeyError(f"unknown split {split!r}; this worker has {sorted(self.shard)}")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((list(configs), split, future))
        self.calls += 1
        async with self._lock:
            if not future.done():
                await self._run_pending()
        return await future

    async def _run_pending(self) -> None:
        pending, self._pending = self._pending, []
        for split in dict.fromkeys(s for _, s, _ in pending):
            group = [(c, f) for c, s, f in pending if s == split]
            flat = [config for configs, _ in group for config in configs]
            self.batches += 1
            try:
                results = await asyncio.to_thread(self.engine.evaluate, self.task, flat, self.shard[split])
            except Exception as e:  # delivered to every waiting caller, which re-raises it
                for _, future in group:
                    future.set_exception(e)
                continue
            start = 0
            for configs, future in group:
                future.set_result(results[start : start + len(configs)])
                start += len(configs)

    async def capture(self, config: VARConfig, split: str, index: int = 0) -> dict[str, Any]:
        """Attention before/after VAR on example ``index`` of ``split`` (see ``EvalEngine.capture``)."""
        async with self._lock:
            return await asyncio.to_thread(self.engine.capture, self.task, self.shard[split][index], config)

    async def counters(self) -> dict[str, int]:
        return {"calls": self.calls, "batches": self.batches, "prepared": self.engine.cache_stats.prepared}


def merge_results(per_worker: Sequence[Sequence[Any]], order: Sequence[str] | None = None) -> list[Any]:
    """Join the workers' ``ConfigResult`` lists (same configs, disjoint examples) into one list.

    With ``order`` (example ids), every per-example dict follows it, whatever worker answered first.
    """
    from workers.engine import ConfigResult

    def ordered(parts: dict[str, Any]) -> dict[str, Any]:
        return parts if order is None else {i: parts[i] for i in order if i in parts}

    merged = []
    for parts in zip(*per_worker, strict=True):
        result = ConfigResult(config=parts[0].config)
        for part in parts:
            result.answers.update(part.answers)
            result.choices.update(part.choices)
            result.tokens.update(part.tokens)
            if part.stats is not None:
                result.stats = part.stats if result.stats is None else result.stats + part.stats
        result.answers, result.choices, result.tokens = (
            ordered(result.answers), ordered(result.choices), ordered(result.tokens)
        )
        merged.append(result)
    return merged


class WorkerPool:
    """N ``ModelWorker`` actors (one GPU each when the cluster has GPUs), each owning a shard of the groups."""

    def __init__(
        self,
        *,
        model: str,
        task: TaskRef,
        splits: dict[str, Sequence[Any]],
        workers: int,
        max_restarts: int = 2,
        **worker_kwargs: Any,
    ) -> None:
        """``splits`` maps split name -> examples; each split is dealt to workers by group, round robin."""
        import ray

        if workers < 1:
            raise ValueError(f"workers={workers} must be >= 1")
        gpus = ray.cluster_resources().get("GPU", 0)
        actor_cls = ray.remote(ModelWorker).options(
            num_gpus=1 if gpus >= 1 else 0,
            num_cpus=0 if gpus >= 1 else 1,
            max_restarts=max_restarts,
            max_task_retries=max_restarts,
            max_concurrency=64,
        )
        self.order = {name: [e.id for e in examples] for name, examples in splits.items()}
        shards: list[dict[str, list[str]]] = [{name: [] for name in splits} for _ in range(workers)]
        for name, examples in splits.items():
            groups = list(dict.fromkeys(e.group for e in examples))
            owner = {g: i % workers for i, g in enumerate(groups)}
            for e in examples:
                shards[owner[e.group]][name].append(e.id)
        self.actors = [
            actor_cls.remote(model=model, task=task, shard=shard, **worker_kwargs) for shard in shards
        ]

    def ready(self, timeout: float | None = None) -> list[dict[str, Any]]:
        import ray

        return ray.get([a.ready.remote() for a in self.actors], timeout=timeout)

    def prepare(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Prepare every worker's prefixes; ``progress(workers done, workers)`` as they finish."""
        import ray

        refs = [a.prepare.remote() for a in self.actors]
        total, done, remaining = 0, 0, list(refs)
        while remaining:
            finished, remaining = ray.wait(remaining, num_returns=1)
            total += ray.get(finished[0])
            done += 1
            if progress is not None:
                progress(done, len(refs))
        return total

    def evaluate(self, configs: Sequence[VARConfig | None], split: str) -> list[Any]:
        """Every configuration on every worker's shard of ``split``, merged, in the order of ``configs``."""
        import ray

        per_worker = ray.get([a.evaluate.remote(list(configs), split) for a in self.actors])
        return merge_results(per_worker, order=self.order[split])

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
