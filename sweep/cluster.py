"""The sweep's Ray: joining a cluster or starting a local one, and the pool of model workers on it.

A local Ray (no ``RAY_ADDRESS``) listens on 127.0.0.1 only and has the machine's cores; the trial processes hold
no CPU (they only wait on the workers), so a CPU worker can hold, and compute on, every core. Workers' output stays in Ray's session logs (``/tmp/ray/session_latest/logs``): the driver's console shows
the sweep's own lines, and a worker's error reaches the driver as the failed call's exception.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sweep import signals
from sweep.plan import SweepPlan
from sweep.settings import Settings, redact_url

__all__ = ["RayConnection", "connect_ray", "local_ray_environment", "worker_pool", "cores"]

log = logging.getLogger("varsweep")
# what a local Ray (no RAY_ADDRESS) is started with; Ray reads it when it is imported
LOCAL_RAY_ENVIRONMENT = {
    # every listener on loopback
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # no token authentication, which guards a Ray that others can reach
    "RAY_AUTH_MODE": "disabled",
    # worker processes started at once: the raylet expects no more than CPUs, and warns on the console ("N PYTHON
    # worker processes have been started ...") when a batch's trial processes (no CPU each) start together
    "RAY_worker_maximum_startup_concurrency": "64",
}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def local_ray_environment(settings: Settings) -> None:
    """For a local Ray (no ``RAY_ADDRESS``): :data:`LOCAL_RAY_ENVIRONMENT`, where the environment does not say
    otherwise. Ray reads it when it is imported: call this before anything imports ray."""
    if settings.ray_address is None:
        for name, value in LOCAL_RAY_ENVIRONMENT.items():
            os.environ.setdefault(name, value)


@dataclass(frozen=True)
class RayConnection:
    """The sweep's link to Ray: ``local`` when it is a Ray started here (no autoscaler), ``owned`` when this
    sweep called ``ray.init`` (and so ends the connection)."""

    local: bool
    owned: bool

    def close_in_background(self) -> Callable[[], None] | None:
        """Disconnect (and stop a local Ray: its processes take seconds to exit) on a thread of its own, so the
        sweep's last steps, which need no Ray, go on meanwhile; returns the function that waits for the end, to
        call before exiting."""
        if not self.owned:
            return None
        import ray

        # Ray objects left in reference cycles (Tune's) that a garbage collection on this thread frees while Ray
        # shuts down on the other reach a closed core worker, which ends the process (seen: exit 1 after the
        # held-out comparison): collect them now, while Ray is connected, and not again until it is closed
        gc.collect()
        gc.disable()
        closing = threading.Thread(target=ray.shutdown, name="varsweep-ray-shutdown")
        closing.start()

        def wait() -> None:
            closing.join()
            gc.enable()

        return wait


def connect_ray(settings: Settings) -> RayConnection:
    """Join ``RAY_ADDRESS``, else start a local Ray (or use the Ray this process already started)."""
    import ray

    if ray.is_initialized():
        return RayConnection(local=settings.ray_address is None, owned=False)
    address = settings.ray_address
    log.info("connecting to Ray (%s)", redact_url(address or "a new local instance on 127.0.0.1"))
    local: dict[str, Any] = {}
    if address is None:
        local = {"num_cpus": cores(), "_node_ip_address": "127.0.0.1"}
    ray.init(
        address=address, logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False, **local
    )
    signals.take_back()  # Ray's own SIGTERM handler would abort the driver
    return RayConnection(local=address is None, owned=True)


@contextlib.contextmanager
def worker_pool(plan: SweepPlan, settings: Settings, *, local: bool) -> Iterator[Any]:
    """The sweep's ModelWorkers (placed, models loading), shut down on leaving the block."""
    import ray

    from workers.actor import TaskRef, WorkerPool

    request = plan.request
    gpus = int(ray.cluster_resources().get("GPU", 0))
    device = request.device if request.device != "auto" else ("cuda" if gpus else "cpu")
    workers = request.workers or max(1, gpus if device == "cuda" else 1)
    cpus = request.worker_cpus or (max(1, cores() // workers) if local else 1)
    sink_dims: Any = "discover" if request.discover_sink_dims else request.sink_dims
    pool = WorkerPool(
        model=request.model,
        task=TaskRef(name=request.task, data_dir=request.data_dir, split=request.split, limit=request.limit),
        splits={"tuning": plan.tuning.examples, "heldout": plan.heldout.examples},
        workers=workers,
        device=device,
        cpus_per_worker=cpus,
        placement_timeout=settings.placement_timeout,
        can_grow=not local,
        max_batch=request.batch,
        sink_dims=sink_dims,
    )
    try:
        yield pool
    finally:
        pool.shutdown()
