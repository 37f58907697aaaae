"""ModelWorker on a real local Ray: readiness, fan-out in a stable order, micro-batching, restart after a crash."""

from __future__ import annotations

import os
import signal

import pytest
import ray

from var_core import VARConfig
from workers.actor import TaskRef, WorkerPool
from workers.engine import EvalEngine
from workers.models import load_model
from workers.synthetic import write_mmvp_folder

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CONFIGS = [None, VARConfig(p=0.9), VARConfig(tau=12, rho=0.6, p=0.7)]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def task_ref(tmp_path_factory):
    folder = write_mmvp_folder(tmp_path_factory.mktemp("mmvp"), pairs=4)
    return TaskRef(name="mmvp", data_dir=str(folder))


def reference(task_ref):
    model, processor = load_model("tiny-llava", device="cpu")
    engine = EvalEngine(model, processor)
    task = task_ref.load()
    try:
        return [r.choices for r in engine.evaluate(task, CONFIGS, task.examples)], task
    finally:
        engine.close()


def test_pool_fans_out_and_gathers_in_stable_order(local_ray, task_ref):
    want, task = reference(task_ref)
    pool = WorkerPool(model="tiny-llava", task=task_ref, splits={"all": task.examples}, workers=2)
    try:
        infos = pool.ready(timeout=300)
        assert sorted(i["examples"]["all"] for i in infos) == [4, 4]  # two pairs each: groups never split
        assert pool.prepare() == len(task.examples)
        results = pool.evaluate(CONFIGS, "all")
        assert [r.choices for r in results] == want
        assert [list(r.choices) for r in results] == [[e.id for e in task.examples]] * len(CONFIGS)
        assert results[1].stats.summary()["selected_share"] > 0
    finally:
        pool.shutdown()


def test_concurrent_calls_are_micro_batched(local_ray, task_ref):
    want, task = reference(task_ref)
    pool = WorkerPool(model="tiny-llava", task=task_ref, splits={"all": task.examples}, workers=1)
    try:
        pool.ready(timeout=300)
        refs = [pool.actors[0].evaluate.remote([config], "all") for config in CONFIGS for _ in range(3)]
        results = ray.get(refs)
        for i, (result,) in enumerate(results):
            assert result.choices == want[i // 3]
        counters = ray.get(pool.actors[0].counters.remote())
        assert counters.calls == 9 and counters.batches < 9  # calls that waited ran as one batch
        assert counters.prepared == len(task.examples)
    finally:
        pool.shutdown()


def test_worker_restarts_and_rebuilds_its_cache(local_ray, task_ref):
    want, task = reference(task_ref)
    pool = WorkerPool(model="tiny-llava", task=task_ref, splits={"all": task.examples}, workers=1)
    try:
        first = pool.ready(timeout=300)[0]
        pool.prepare()
        os.kill(first["pid"], signal.SIGKILL)
        results = pool.evaluate(CONFIGS, "all")  # retried on the restarted actor
        assert [r.choices for r in results] == want
        again = pool.ready(timeout=300)[0]
        assert again["pid"] != first["pid"] and again["prepared"] == len(task.examples)
    finally:
        pool.shutdown()
