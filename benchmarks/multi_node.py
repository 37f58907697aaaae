"""Scale-out on one machine the way a cluster runs it: 1 and 2 workers on two local Ray nodes of one core each.

A head node (no CPU: the driver and the trial processes, which hold none) and two ``ray start --address`` nodes of one CPU each, on loopback,
with a temp folder of their own. The real service (``run_sweep`` joining that cluster) sweeps the benchmark
shape (``llava-cpu-bench``) on an MMVP-format folder twice, the same trials each time: ``--workers 1`` (one node
idle) and ``--workers 2`` (one worker per node, each holding a shard of the examples). Reported: prefix
preparation + search wall time and (configuration, example) evaluations per second, and their ratio.

    python benchmarks/multi_node.py            # ~8 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray

from sweep.service import SweepRequest, run_sweep
from sweep.settings import Settings
from workers.models import LLAVA_CPU_SHAPE
from workers.synthetic import write_mmvp_folder

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(temp: Path, env: dict[str, str], *, head: str | None, cpus: int) -> str:
    """``ray start`` a head (``head=None``) or a node joining ``head``; returns the head's address."""
    ports = [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]
    if head is None:
        address = f"127.0.0.1:{free_port()}"
        role = [
            "--head",
            f"--port={address.rsplit(':', 1)[1]}",
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
        ]
    else:
        address, role = head, [f"--address={head}"]
    command = [
        RAY,
        "start",
        *role,
        "--node-ip-address=127.0.0.1",
        *ports,
        f"--temp-dir={temp}",
        f"--num-cpus={cpus}",
        "--num-gpus=0",
        "--disable-usage-stats",
    ]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)
    return address


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--trials", type=int, default=16)
    args = parser.parse_args()
    temp = Path(tempfile.mkdtemp(prefix="vsmn-", dir="/tmp"))  # short: Ray's socket paths are limited
    # a throwaway cluster on loopback: no token authentication. Not RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray
    # refuses a second node with it
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    os.environ["RAY_AUTH_MODE"] = "disabled"  # the driver joins the same way
    rows = []
    try:
        head = start(temp, env, head=None, cpus=0)
        for _ in range(2):
            start(temp, env, head=head, cpus=1)
        data = write_mmvp_folder(temp / "mmvp", pairs=args.pairs, size=LLAVA_CPU_SHAPE.image_size)
        for workers in (1, 2):
            work = temp / f"w{workers}"
            work.mkdir()
            settings = Settings(
                database_url=f"sqlite:///{work / 'varsweep.db'}",
                mlflow_tracking_uri=f"sqlite:///{work / 'mlruns.db'}",
                ray_address=head,
            )
            request = SweepRequest(
                task="mmvp",
                model="llava-cpu-bench",
                trials=args.trials,
                data_dir=str(data),
                batch=args.trials,
                workers=workers,
                worker_cpus=1,
                device="cpu",
            )
            started = time.perf_counter()
            outcome = run_sweep(request, settings, workdir=work)
            wall = time.perf_counter() - started
            ray.shutdown()
            rows.append((workers, wall, outcome))
    finally:
        # only what it started (not `ray stop`)
        subprocess.run(["pkill", "-9", "-f", str(temp)], capture_output=True)
        shutil.rmtree(temp, ignore_errors=True)

    print(
        f"llava-cpu-bench, MMVP {args.pairs} pairs, {args.trials} trials in one batch; a head (0 CPUs: driver, "
        f"trials) + 2 nodes of 1 CPU, on loopback"
    )
    print()
    print("| workers | prefixes + search (s) | evaluations / s | workers busy | whole sweep (s) |")
    print("|---|---|---|---|---|")
    for workers, wall, o in rows:
        u = o.utilization
        print(
            f"| {workers} | {o.timings['search']:.1f} | {u.evaluations_per_second:.2f} | {100 * u.busy:.0f}% | "
            f"{wall:.1f} |"
        )
    one, two = rows[0][2], rows[1][2]
    print()
    print(
        f"2 workers vs 1: {one.timings['search'] / two.timings['search']:.2f}x faster (prefixes + search), "
        f"{two.utilization.evaluations_per_second / one.utilization.evaluations_per_second:.2f}x the evaluations/s; "
        f"same best: {one.best_params == two.best_params}"
    )


if __name__ == "__main__":
    main()
