"""The sweep's local Ray: a batch's trial processes start at once without the raylet's startup warning."""

from __future__ import annotations

import os
import textwrap

import pytest
from services import run_python

from sweep.cluster import cores

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WARNING = "worker processes have been started"
# 16 thin processes (no CPU each, importing Ray Tune as a trial process does) start at once on a local Ray
START_A_BATCH = textwrap.dedent(
    """
    import os
    import sys
    from sweep.cluster import LOCAL_RAY_ENVIRONMENT, connect_ray, local_ray_environment
    from sweep.settings import Settings

    settings = Settings()
    if sys.argv[1] == "sweep":
        local_ray_environment(settings)
    else:  # the same local Ray without the startup setting
        os.environ.update(LOCAL_RAY_ENVIRONMENT)
        del os.environ["RAY_worker_maximum_startup_concurrency"]
    import ray
    connect_ray(settings)

    @ray.remote(num_cpus=0)
    class Trial:
        def __init__(self):
            import ray.tune  # noqa: F401

        def ready(self):
            return True

    trials = [Trial.remote() for _ in range(16)]
    assert all(ray.get([t.ready.remote() for t in trials]))
    ray.shutdown()
    """
)


def start_a_batch(how: str, tmp_path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return run_python("-c", START_A_BATCH, how, cwd=tmp_path, env=env, timeout=240)


def test_a_batch_of_trial_processes_starts_without_the_raylet_warning(tmp_path):
    assert WARNING not in start_a_batch("sweep", tmp_path)
    if cores() * 4 < 16:  # a bare local Ray on this machine warns: the check above can fail
        assert WARNING in start_a_batch("bare", tmp_path)
