"""ModelWorker, the Ray actor that hosts one model, and WorkerPool, which fans configurations out to N of them.

A worker loads its model once (cuda when present, else cpu, with as many torch threads as CPUs it holds, all its
torch work on one thread of its own), loads the task from the same arguments as the driver, keeps its shard's
prefixes in an :class:`~workers.engine.EvalEngine`, and evaluates batches of configurations on one split of its
shard. Concurrent calls (one per running trial) are gathered into one engine batch, one configuration per batch
row: a call that finds the engine free waits until ``max_batch`` configurations are pending or no call has arrived
for ``gather_idle`` seconds (``gather_max`` at most); calls that arrive while the engine is busy form the next
batch. The first batch after the prefixes waits for the calls the driver said to expect (its trial processes come
up one by one). Each worker counts its busy seconds, so the sweep reports how much of the search the workers really
worked. After a crash Ray restarts the actor (``max_restarts``); the new process reloads the model and rebuilds its
prefix cache on first use, and Ray retries the calls that were in flight (``max_task_retries``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from var_core.config import VARConfig
from var_core.errors import VarsweepError
from workers.calls import RESTART_PATIENCE, get_each_resending
from workers.results import ConfigResult, merge_results

__all__ = ["TaskRef", "ModelWorker", "WorkerPool", "WorkerCounters", "PlacementError", "merge_results"]

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


@dataclass(frozen=True)
class WorkerCounters:
    """What one worker did since it started (a restarted worker starts again from zero)."""

    pid: int
    calls: int  # evaluate() calls received
    batches: int  # engine batches run
    batch_sizes: dict[int, int]  # configurations per batch -> how many batches had that many
    evaluations: int  # (configuration, example) pairs evaluated
    busy_seconds: float  # time spent in the engine: preparing prefixes, evaluating, capturing
    prepared: int  # prefixes computed
    prepare_seconds: float
    prefixes_started: float | None  # wall-clock time the computing of prefixes began
    first_batch_started: float | None  # wall-clock time the first engine batch of evaluate() calls began
    parts: tuple[tuple[str, tuple[str, ...] | None], ...]  # the distinct (split, groups) calls asked for


class ModelWorker:
    """Hosts one model and evaluates configurations on its shard (use as a Ray actor: ``WorkerPool`` does)."""

    def __init__(
        self,
        *,
        model: str,
        task: TaskRef,
        shard: dict[str, list[str]],
        threads: int | None = None,
        device: str | None = None,
        cache_bytes: int | None = None,
        host_cache_bytes: int | None = None,
        max_batch: int = 16,
        # the driver proposes the next batch's trials one after another (TPE, the study's database, ~0.1 s each):
        # pauses of over 0.5 s between them split batches (seen: 3 + 13 of 16); on a slow day, with the whole
        # gathering capped at 2 s, so did 16 starts (seen: 8 + 8, 6 + 10, 5 + 11 of 16; which limit cut them was not
        # recorded); a longer wait costs only a partial batch
        gather_idle: float = 1.0,
        gather_max: float = 4.0,
        dtype: str | None = None,
        sink_dims: Sequence[int] | Literal["discover"] | None = None,
    ) -> None:
        # all torch work (the load included) runs on this one thread: torch's OpenMP keeps a thread team per calling
        # thread, and a second team (the load's on the main thread, the computing on asyncio's) exceeds a CPU worker's
        # cores, so libgomp makes every thread sleep between parallel regions instead of spinning: the worker used
        # 163% of its 2 cores during the sweep's batches, and a worker on one thread was faster in every one of 4
        # alternated pairs (3 batches of 16: 32.4, 33.1, 29.7, 30.1 s against 42.9, 35.2, 32.2, 34.5)
        self._torch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="varsweep-torch")
        started = time.perf_counter()
        self._torch.submit(
            partial(
                self._load,
                model=model,
                task=task,
                shard=shard,
                threads=threads,
                device=device,
                dtype=dtype,
                sink_dims=sink_dims,
                engine_options={
                    "cache_bytes": cache_bytes,
                    "host_cache_bytes": host_cache_bytes,
                    "max_batch": max_batch,
                },
            )
        ).result()
        self.load_seconds = time.perf_counter() - started
        self.max_batch = max_batch
        self.gather_idle, self.gather_max = gather_idle, gather_max
        self._lock = asyncio.Lock()
        self._arrived = asyncio.Event()
        # (configurations, (split, groups or None), the caller's future)
        self._pending: list[
            tuple[list[VARConfig | None], tuple[str, tuple[str, ...] | None], asyncio.Future]
        ] = []
        self._calls = 0
        self._batch_sizes: Counter[int] = Counter()
        self._evaluations = 0
        self._busy = 0.0
        self._prefixes_started: float | None = None
        self._first_batch_started: float | None = None
        # (calls received in all that the next batch waits for, seconds at most): see prepare()
        self._first_batch = (0, 0.0)
        self._parts: dict[tuple[str, tuple[str, ...] | None], None] = {}  # insertion-ordered set

    def _load(
        self,
        *,
        model: str,
        task: TaskRef,
        shard: dict[str, list[str]],
        threads: int | None,
        device: str | None,
        dtype: str | None,
        sink_dims: Sequence[int] | Literal["discover"] | None,
        engine_options: dict[str, Any],
    ) -> None:
        """The model, the task, the shard and the engine (on the torch thread)."""
        import torch

        from workers.engine import EvalEngine
        from workers.models import load_model

        if threads is not None:  # Ray caps a CPU actor's threads by its CPUs; use every CPU it holds
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        self.model_name = model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.task = task.load()
        by_id = {e.id: e for e in self.task.examples}
        missing = [i for ids in shard.values() for i in ids if i not in by_id]
        if missing:
            raise KeyError(
                f"shard names {len(missing)} example ids the task does not have, e.g. {missing[:3]}"
            )
        self.shard = {split: [by_id[i] for i in ids] for split, ids in shard.items()}
        model_obj, processor = load_model(
            model, device=self.device, dtype=getattr(torch, dtype) if dtype else None, sink_dims=sink_dims
        )
        self.engine = EvalEngine(model_obj, processor, **engine_options)

    async def ready(self) -> dict[str, Any]:
        """Who this worker is: for the driver's log and for tests."""
        import ray

        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "model": self.model_name,
            "device": self.device,
            "threads": self.threads,
            "sink_dims": list(self.engine.handle.sink_dims),
            "sink_dims_source": self.engine.handle.sink_dims_source,
            "examples": {split: len(examples) for split, examples in self.shard.items()},
            "load_seconds": round(self.load_seconds, 2),
            "prepared": self.engine.cache_stats.prepared,
        }

    async def prepare(
        self, splits: Sequence[str] | None = None, *, first_batch: int = 0, patience: float = 60.0
    ) -> int:
        """Compute the prefixes of this shard; returns how many examples are ready (see :meth:`counters`).

        ``first_batch``: the first engine batch after them waits until that many evaluate calls have arrived (or
        ``patience`` seconds passed): the search's trial processes come up one by one, and their first calls are
        meant to meet as one batch rather than run in the pieces the gather window would cut.
        """
        examples = [e for split in (splits or list(self.shard)) for e in self.shard.get(split, [])]
        calls_before = self._calls
        async with self._lock:
            self._prefixes_started = self._prefixes_started or time.time()
            await self._busy_in(self.engine.prepare, self.task, examples)
            self._first_batch = (calls_before + first_batch, patience)
        return len(examples)

    async def _calls_arrived(self, calls: int, patience: float) -> None:
        """Wait until ``calls`` evaluate calls have been received in all, ``patience`` seconds at most."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while self._calls < calls and loop.time() < deadline:
            await self._arrival(deadline - loop.time())

    async def _arrival(self, timeout: float) -> bool:
        """Whether a call arrives within ``timeout`` seconds from now."""
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout=timeout)
        except TimeoutError:
            return False
        return True

    async def evaluate(
        self, configs: list[VARConfig | None], split: str, groups: Sequence[str] | None = None
    ) -> list[ConfigResult]:
        """Results of ``configs`` on this worker's examples of ``split`` (only those of ``groups``, if given), in
        the order of ``configs``.

        Concurrent calls for the same examples are gathered and evaluated as one batch (see the module docstring).
        """
        if split not in self.shard:
            raise KeyError(f"unknown split {split!r}; this worker has {sorted(self.shard)}")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        part = (split, None if groups is None else tuple(groups))
        self._parts[part] = None
        self._pending.append((list(configs), part, future))
        self._calls += 1
        self._arrived.set()
        async with self._lock:
            if not future.done():
                calls, patience = self._first_batch
                self._first_batch = (0, 0.0)
                await self._calls_arrived(calls, patience)
                await self._gather()
                await self._run_pending()
        return await future

    async def _gather(self) -> None:
        """Wait, with the engine free, until a batch's worth of configurations is pending or calls stop coming."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.gather_max
        while sum(len(configs) for configs, _, _ in self._pending) < self.max_batch:
            wait = min(self.gather_idle, deadline - loop.time())
            if wait <= 0 or not await self._arrival(wait):
                return

    async def _run_pending(self) -> None:
        pending, self._pending = self._pending, []
        # one batch per (split, groups), in arrival order
        for part in dict.fromkeys(p for _, p, _ in pending):
            group = [(c, f) for c, p, f in pending if p == part]
            flat = [config for configs, _ in group for config in configs]
            split, groups = part
            wanted = None if groups is None else set(groups)
            examples = [e for e in self.shard[split] if wanted is None or e.group in wanted]
            self._batch_sizes[len(flat)] += 1
            self._first_batch_started = self._first_batch_started or time.time()
            try:
                results = await self._busy_in(self.engine.evaluate, self.task, flat, examples)
            except Exception as e:  # delivered to every waiting caller, which re-raises it
                for _, future in group:
                    future.set_exception(e)
                continue
            self._evaluations += len(flat) * len(examples)
            start = 0
            for configs, future in group:
                future.set_result(results[start : start + len(configs)])
                start += len(configs)

    async def _busy_in(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the torch thread (the event loop keeps taking calls) and count the time as busy."""
        started = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._torch, partial(fn, *args))
        finally:
            self._busy += time.perf_counter() - started

    async def capture(self, config: VARConfig, split: str, index: int = 0) -> dict[str, Any]:
        """Attention before/after VAR on example ``index`` of ``split`` (see ``EvalEngine.capture``)."""
        async with self._lock:
            return await self._busy_in(self.engine.capture, self.task, self.shard[split][index], config)

    async def counters(self) -> WorkerCounters:
        cache = self.engine.cache_stats
        return WorkerCounters(
            pid=os.getpid(),
            calls=self._calls,
            batches=sum(self._batch_sizes.values()),
            batch_sizes=dict(sorted(self._batch_sizes.items())),
            evaluations=self._evaluations,
            busy_seconds=self._busy,
            prepared=cache.prepared,
            prepare_seconds=cache.prepare_seconds,
            prefixes_started=self._prefixes_started,
            first_batch_started=self._first_batch_started,
            parts=tuple(self._parts),
        )


class Preparation:
    """Prefixes being prepared on every worker of a pool; :meth:`wait` for the end (and any error)."""

    def __init__(
        self,
        pool: WorkerPool,
        progress: Callable[[int, int], None] | None,
        *,
        first_batch: int = 0,
        interval: float = 0.5,
    ) -> None:
        import ray

        self._refs = [a.prepare.remote(first_batch=first_batch) for a in pool.actors]
        self._pool, self._progress, self._interval = pool, progress, interval
        self.done_at: float | None = None  # wall-clock time (time.time()) the last worker was done
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._follow, args=(ray,), name="varsweep-prefixes", daemon=True
        )
        self._thread.start()

    def _follow(self, ray: Any) -> None:
        total = self._pool.examples
        try:
            remaining = list(self._refs)
            while remaining:
                _, remaining = ray.wait(remaining, num_returns=len(remaining), timeout=self._interval)
                if remaining and self._progress is not None:
                    self._progress(min(total, sum(c.prepared for c in self._pool.counters())), total)
            ray.get(self._refs)  # raises a worker's error here
            self.done_at = time.time()
            if self._progress is not None:
                self._progress(total, total)
        except BaseException as e:  # handed to the caller of wait()
            self._error = e

    def wait(self) -> None:
        """Block until every prefix is ready (:attr:`done_at`), or raise a worker's error."""
        self._thread.join()
        if self._error is not None:
            raise self._error


class PlacementError(VarsweepError, RuntimeError):
    """The cluster cannot give the workers what they ask for (within the wait allowed)."""


class WorkerPool:
    """N ``ModelWorker`` actors, each owning a shard of the groups, placed together before any of them starts.

    ``device="cuda"``: each worker asks for one GPU (and one CPU for its image processing); ``"cpu"``: for
    ``cpus_per_worker`` CPUs, and runs that many torch threads. The workers' resources are reserved as one
    placement group first: on a cluster that scales (KubeRay's autoscaler adding GPU nodes from zero) the pool
    waits up to ``placement_timeout`` seconds for it; on a cluster that cannot grow (``can_grow=False``: a local
    Ray) a request larger than the cluster fails at once. Either way the error is one line, and nothing falls back
    to CPUs when GPUs were asked for.
    """

    def __init__(
        self,
        *,
        model: str,
        task: TaskRef,
        splits: dict[str, Sequence[Any]],
        workers: int,
        device: str = "cpu",
        cpus_per_worker: int = 1,
        placement_timeout: float = 600.0,
        can_grow: bool = True,
        max_restarts: int = 2,
        **worker_kwargs: Any,
    ) -> None:
        """``splits`` maps split name -> examples; each split is dealt to workers by group, round robin."""
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if workers < 1:
            raise ValueError(f"workers={workers} must be >= 1")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device={device!r} is not 'cpu' or 'cuda'")
        bundle = {"CPU": 1.0, "GPU": 1.0} if device == "cuda" else {"CPU": float(cpus_per_worker)}
        _check_fits(bundle, workers, ray.cluster_resources(), device, can_grow=can_grow)
        self._group = placement_group([bundle] * workers, strategy="SPREAD", name="")
        try:
            ray.get(self._group.ready(), timeout=placement_timeout)
        except ray.exceptions.GetTimeoutError as e:
            remove_placement_group(self._group)
            raise PlacementError(
                f"the cluster did not provide {workers} worker(s) x {_describe(bundle)} within {placement_timeout:g} s "
                f"(VARSWEEP_PLACEMENT_TIMEOUT); it has {_describe(ray.cluster_resources())}: add nodes, or ask for "
                "less (--workers, --device cpu, --worker-cpus)"
            ) from e
        self.device = device
        self.order = {name: [e.id for e in examples] for name, examples in splits.items()}
        shards: list[dict[str, list[str]]] = [{name: [] for name in splits} for _ in range(workers)]
        for name, examples in splits.items():
            groups = list(dict.fromkeys(e.group for e in examples))
            owner = {g: i % workers for i, g in enumerate(groups)}
            for e in examples:
                shards[owner[e.group]][name].append(e.id)
        self.examples = sum(len(examples) for examples in splits.values())
        threads = None if device == "cuda" else cpus_per_worker
        self.actors = [
            ray.remote(ModelWorker)
            .options(
                num_cpus=bundle["CPU"],
                num_gpus=bundle.get("GPU", 0),
                max_restarts=max_restarts,
                max_task_retries=max_restarts,
                max_concurrency=64,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self._group, placement_group_bundle_index=i
                ),
            )
            .remote(model=model, task=task, shard=shard, threads=threads, device=device, **worker_kwargs)
            for i, shard in enumerate(shards)
        ]

    def ready(self, timeout: float | None = None) -> list[dict[str, Any]]:
        import ray

        return ray.get([a.ready.remote() for a in self.actors], timeout=timeout)

    def prepare(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Prepare every worker's prefixes; returns how many examples are ready (see :meth:`start_preparing`)."""
        self.start_preparing(progress).wait()
        return self.examples

    def start_preparing(
        self,
        progress: Callable[[int, int], None] | None = None,
        *,
        first_batch: int = 0,
    ) -> Preparation:
        """Start computing every worker's prefixes and return at once.

        ``progress(prefixes ready, prefixes)`` is called from a driver thread as they come. Calls made meanwhile
        wait in the workers until their prefixes are ready; each worker's first batch after them waits for
        ``first_batch`` calls (see :meth:`ModelWorker.prepare`).
        """
        return Preparation(self, progress, first_batch=first_batch)

    def counters(self, patience: float = RESTART_PATIENCE) -> list[WorkerCounters]:
        """Every worker's counters; a worker Ray is restarting is asked again for up to ``patience`` seconds (the
        driver's handle may still point at the process that was lost)."""
        return get_each_resending([a.counters.remote for a in self.actors], patience)

    def evaluate(
        self, configs: Sequence[VARConfig | None], split: str, patience: float = RESTART_PATIENCE
    ) -> list[Any]:
        """Every configuration on every worker's shard of ``split``, merged, in the order of ``configs``; a worker
        Ray is restarting (its node lost during the held-out comparison) is asked again for up to ``patience``
        seconds, as the trials do."""
        calls = [partial(a.evaluate.remote, list(configs), split) for a in self.actors]
        return merge_results(get_each_resending(calls, patience), order=self.order[split])

    def shutdown(self) -> None:
        """Stop the workers and give their resources back (the workers live for one sweep)."""
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        remove_placement_group(self._group)


def _describe(resources: Mapping[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if k in ("CPU", "GPU")}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}"


def _check_fits(
    bundle: Mapping[str, float],
    workers: int,
    total: Mapping[str, float],
    device: str,
    *,
    can_grow: bool,
) -> None:
    """Refuse at once what a cluster that cannot grow will never have."""
    if can_grow:
        return
    for resource, amount in bundle.items():
        available = total.get(resource, 0.0)
        if amount * workers > available:
            hint = "use --device cpu" if resource == "GPU" else "use fewer --workers or --worker-cpus"
            raise PlacementError(
                f"{workers} {device} worker(s) need {amount * workers:g} {resource} but this Ray has "
                f"{available:g} for workers (and no autoscaler): {hint}"
            )
