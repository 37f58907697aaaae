"""The sweep on a cluster the way one runs: several nodes, a node lost mid-sweep, GPUs that never come."""

from __future__ import annotations

import re
import time

import optuna
import pytest
from services import STUDY, RayHead, Sweep, processes, sweep_args

pytestmark = [pytest.mark.fault, pytest.mark.timeout(900)]

State = optuna.trial.TrialState


def cluster_env(head: RayHead, **extra: str) -> dict[str, str]:
    """A driver that joins the head from outside, seeing it as the head's own processes do."""
    shared = {k: head.env[k] for k in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") if k in head.env}
    return {"RAY_ADDRESS": head.address, **shared, **extra}


def test_two_nodes_one_worker_each_and_a_node_lost_mid_sweep(tmp_path):
    """A head with no CPU (as deploy/ runs it: the driver and the trials, which hold none) and two nodes of two
    CPUs; --workers 2 of one CPU each lands on two nodes, the trial processes beside the driver. Killing the raylet
    of a node with a worker mid-sweep loses no trial: the worker's placement moves to the node with room, the actor
    restarts there, and the trials' calls to it are sent again once it is back."""
    head = RayHead(num_cpus=0, nodes=True)
    try:
        first, second = head.add_node(num_cpus=2), head.add_node(num_cpus=2)
        sweep = Sweep(
            tmp_path / "work",
            *sweep_args(8, "--batch", "2", "--workers", "2", "--worker-cpus", "1"),
            env=cluster_env(head),
        )
        sweep.wait_for(r"trial \d+ \(")
        workers = re.findall(r"worker (\d+) ready on cpu, node (\w+)", sweep.text())
        # one per node
        assert len(workers) == 2 and len({node for _, node in workers}) == 2, sweep.text()[-3000:]
        # the trial processes run beside the driver, on the head: losing a node loses none of them
        trial_nodes = {
            head.node_of(pid) for pid, cmdline in processes() if cmdline.startswith("ray::ImplicitFunc")
        }
        assert head.node_manager_port in trial_nodes and not trial_nodes & {first, second}, trial_nodes
        # lose a node that hosts a worker (not the head, where the driver's trials run)
        hosts = {head.node_of(int(pid)) for pid, _ in workers} - {head.node_manager_port, None}
        victim = next(iter(hosts))
        assert victim in (first, second)
        head.kill_node(victim)
        assert sweep.finish() == 0, sweep.text()[-3000:]
        db = f"sqlite:///{tmp_path / 'work' / 'varsweep.db'}"
        trials = optuna.load_study(study_name=STUDY, storage=db).get_trials()
        done = [t for t in trials if t.state == State.COMPLETE]
        assert len(done) == 8 and not [t for t in trials if t.state in (State.RUNNING, State.FAIL)], (
            sweep.text()[-3000:]
        )
    finally:
        head.stop()


def test_gpus_asked_for_on_a_cluster_without_any_wait_bounded_then_fail_in_one_line(tmp_path):
    head = RayHead(num_cpus=2)
    try:
        started = time.monotonic()
        sweep = Sweep(
            tmp_path / "work",
            *sweep_args(3, "--device", "cuda"),
            env=cluster_env(head, VARSWEEP_PLACEMENT_TIMEOUT="8"),
        )
        code = sweep.finish(timeout=300)
        waited = time.monotonic() - started
        text = sweep.text()
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert code != 0 and len(errors) == 1, text[-3000:]
        assert "did not provide 1 worker(s) x {CPU: 1, GPU: 1} within 8 s" in errors[0]
        assert "it has {CPU: 2}" in errors[0] and "--device cpu" in errors[0]
        assert 8 <= waited < 120  # the bounded wait, then the error
        assert "ready on cpu" not in text  # no CPU fallback for a GPU request
    finally:
        head.stop()
