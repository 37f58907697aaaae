"""ModelWorker on a real local Ray: readiness, fan-out in a stable order, micro-batching, restart after a crash, prefixes
that wait for the first calls."""

from __future__ import annotations

import os
import signal
import time

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


def test_the_first_batch_after_the_prefixes_waits_for_the_first_calls_and_they_meet_in_one_batch(
    local_ray, task_ref
):
    want, task = reference(task_ref)
    pool = WorkerPool(model="tiny-llava", task=task_ref, splits={"all": task.examples}, workers=1)
    try:
        pool.ready(timeout=300)
        actor = pool.actors[0]
        pool.start_preparing(first_batch=len(CONFIGS)).wait()
        prepared = ray.get(actor.counters.remote())
        assert prepared.prepared == len(task.examples) and prepared.prefixes_started is not None
        first = [actor.evaluate.remote([config], "all") for config in CONFIGS[:-1]]
        # one call short, for longer than the gather window (2 s at most): no batch has run
        ready, _ = ray.wait(first, timeout=4.0)
        waiting = ray.get(actor.counters.remote())
        assert not ready and waiting.calls == len(CONFIGS) - 1 and waiting.batches == 0
        assert waiting.first_batch_started is None
        results = ray.get([*first, actor.evaluate.remote([CONFIGS[-1]], "all")])
        counters = ray.get(actor.counters.remote())
        assert counters.batch_sizes == {len(CONFIGS): 1}  # the calls that waited ran as one batch
        assert counters.first_batch_started is not None
        assert [r.choices for (r,) in results] == want
        assert results[1][0].stats.summary()["selected_share"] > 0  # VAR acted
    finally:
        pool.shutdown()


def test_a_first_batch_whose_calls_do_not_all_come_runs_after_its_patience(local_ray, task_ref):
    want, task = reference(task_ref)
    pool = WorkerPool(model="tiny-llava", task=task_ref, splits={"all": task.examples}, workers=1)
    try:
        pool.ready(timeout=300)
        actor = pool.actors[0]
        ray.get(actor.prepare.remote(first_batch=100, patience=3.0))
        sent = time.time()
        (result,) = ray.get(actor.evaluate.remote([CONFIGS[1]], "all"), timeout=60)
        counters = ray.get(actor.counters.remote())
        assert counters.batch_sizes == {1: 1} and counters.first_batch_started - sent >= 2.9
        assert result.choices == want[1] and result.stats.summary()["selected_share"] > 0  # VAR acted
    finally:
        pool.shutdown()
