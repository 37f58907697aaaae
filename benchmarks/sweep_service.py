"""The sweep service end to end, against naive re-evaluation and against the engine alone, in one run.

Protocol (issue "sweep: the whole service at the engine's speed"): the benchmark shape (``llava-cpu-bench``, i.e.
``LLAVA_CPU_SHAPE`` with planted sinks: 576 image tokens, text 1024 x 8 layers), a 16-pair MMVP-format folder
written by ``workers.synthetic.write_mmvp_folder`` (holdout 0.3: 22 tuning and 10 held-out examples), 48 trials.

* sweep: the real service, ``run_sweep`` with a local Ray, the embedded stores (SQLite study and store, SQLite
  MLflow) in a temporary folder, one worker. Its phases are timed by the service itself: Ray start, model load,
  Tune's start of its trial processes (on a CPU once the prefixes are ready; the worker's first batch waits for
  their first calls), prefix preparation + search, held-out confirmation and the end-of-sweep figures.
* engine alone: the same model in this process, a fresh ``EvalEngine``: the same 32 prefixes, then the sweep's 48
  configurations (read back from its study, in trial order) in batches of ``--batch`` on the 22 tuning examples.
* naive: one full-prompt forward per (configuration, example), vision tower included, same patched model and
  scoring. It times ``--naive-configs`` configurations (at least 4) on the tuning examples and reports a rate per
  evaluation; the naive time of the whole search is that rate times the sweep's evaluations.

On 2 CPU cores the worker's engine shares the cores with everything else the sweep runs, so a second table says
where the CPU went while the sweep ran (CPU seconds per process role, read from /proc).

Prints the tables and last: ``sweep speedup: <x>x vs naive, <y> of the engine alone, workers busy <z>%``: x uses
the sweep's whole wall time; y compares prefix preparation + search (the fixed costs, Ray start, model load, the
trial processes' start, the held-out confirmation and the end of the sweep, do not grow with the trials and are
reported on rows of their own).

    python benchmarks/sweep_service.py          # ~11 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import ray
import torch

from sweep.search import config_from_params
from sweep.service import SweepRequest, run_sweep, split_groups
from sweep.settings import Settings
from workers.engine import EvalEngine
from workers.models import LLAVA_CPU_SHAPE, load_model
from workers.synthetic import write_mmvp_folder
from workers.tasks import get_task, option_token_ids

MODEL = "llava-cpu-bench"


DRIVER = "driver (Tune's loop, Optuna, MLflow, the service)"


class CpuAccounting:
    """CPU seconds (user + system) of this process and of Ray's processes, by role, read from /proc once a second
    while the sweep runs: where the two cores went besides the worker's engine. A process is counted at its last
    reading (up to a second of a process that exits is missed)."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[str, float]] = {}
        self._own_start = time.process_time()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._done.wait(1.0):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    with open(f"/proc/{pid}/cmdline") as f:
                        command = f.read().replace("\0", " ")
                except OSError:
                    continue
                role = _role(int(pid), command)
                if role is not None:
                    self._last[int(pid)] = (role, (int(fields[11]) + int(fields[12])) / tick)

    def stop(self) -> tuple[Counter[str], Counter[str]]:
        """CPU seconds and process counts per role."""
        self._done.set()
        self._thread.join()
        seconds: Counter[str] = Counter({DRIVER: time.process_time() - self._own_start})
        processes: Counter[str] = Counter({DRIVER: 1})
        for role, cpu in self._last.values():
            seconds[role] += cpu
            processes[role] += 1
        return seconds, processes


def _role(pid: int, command: str) -> str | None:
    if pid == os.getpid():
        return None  # the driver: this process, counted by process_time()
    if command.startswith("ray::ModelWorker"):
        return "ModelWorker (model load, prefixes, batches, held-out, figures)"
    if command.startswith("ray::ImplicitFunc"):
        return "Tune trial processes"
    if command.startswith("ray::") or ("ray" in command and "site-packages" in command):
        return "Ray's own processes (GCS, raylet, agents, idle workers)"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--naive-configs", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_mmvp_folder(work / "mmvp", pairs=args.pairs, size=LLAVA_CPU_SHAPE.image_size)
        settings = Settings(
            database_url=f"sqlite:///{work / 'varsweep.db'}",
            mlflow_tracking_uri=f"sqlite:///{work / 'mlruns.db'}",
        )
        request = SweepRequest(
            task="mmvp", model=MODEL, trials=args.trials, data_dir=str(data), batch=args.batch
        )

        # 1. the service
        accounting = CpuAccounting()
        started = time.perf_counter()
        outcome = run_sweep(request, settings, workdir=work)
        sweep_wall = time.perf_counter() - started
        cpu = accounting.stop()
        ray.shutdown()
        study = optuna.load_study(study_name=request.study_name, storage=settings.study_url)
        trials = sorted(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.number)
        configs = [config_from_params(t.params, request.convention) for t in trials]

        # 2. the engine alone, in this process, with the sweep's split and configurations
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        task = get_task("mmvp", data_dir=str(data))
        tuning_groups, heldout_groups = split_groups(task.groups, holdout=request.holdout, seed=request.seed)
        tuning, heldout = task.select(tuning_groups), task.select(heldout_groups)
        model, processor = load_model(MODEL, device="cpu")
        engine = EvalEngine(model, processor, max_batch=args.batch)
        clock, cpu_clock = time.perf_counter(), time.process_time()
        engine.prepare(task, [*tuning.examples, *heldout.examples])
        engine_prefix = time.perf_counter() - clock
        clock = time.perf_counter()
        results = []
        for start in range(0, len(configs), args.batch):
            results += engine.evaluate(task, configs[start : start + args.batch], tuning.examples)
        engine_search = time.perf_counter() - clock
        engine_cpu = time.process_time() - cpu_clock
        same = all(
            tuning.score(r.answers)[outcome.metric] == t.value for r, t in zip(results, trials, strict=True)
        )
        baseline = results[0].choices
        changed = sum(r.choices != baseline for r in results[1:])
        shares = [r.stats.summary()["selected_share"] for r in results if r.stats is not None]

        # 3. naive: full-prompt forwards of the first --naive-configs configurations
        handle = engine.handle
        inputs = {e.id: engine._inputs(task, e)[1] for e in tuning.examples}
        option_ids = {
            e.id: list(option_token_ids(processor, engine._inputs(task, e)[0], e.options))
            for e in tuning.examples
        }
        naive_configs = configs[: max(4, args.naive_configs)]
        clock = time.perf_counter()
        with torch.no_grad():
            for config in naive_configs:
                if config is None:
                    handle.disable()
                else:
                    handle.enable()
                    handle.set(config)
                for e in tuning.examples:
                    logits = model(**inputs[e.id], logits_to_keep=1).logits[0, -1]
                    int(logits[option_ids[e.id]].argmax())
        handle.enable()
        naive_per_eval = (time.perf_counter() - clock) / (len(naive_configs) * len(tuning.examples))
        engine.close()

    t, u = outcome.timings, outcome.utilization
    evaluations = len(configs) * len(tuning.examples)
    # naive re-evaluation of what the sweep evaluated: every trial, then the best and VAR off on the held-out split
    naive_search = naive_per_eval * (evaluations + 2 * len(heldout.examples))
    # the workers prepare their prefixes while the search starts: the search holds both
    sweep_work = t["search"]
    engine_work = engine_prefix + engine_search
    fixed = ("ray_start", "model_load", "trials_start", "heldout", "figures")
    other = sweep_wall - t["search"] - sum(t[k] for k in fixed)
    print(
        f"model: {MODEL} (LLaVA-1.5-shaped: text {LLAVA_CPU_SHAPE.hidden} x {LLAVA_CPU_SHAPE.layers} layers, "
        f"576 image tokens), planted sinks; cpu, {len(os.sched_getaffinity(0))} cores"
    )
    print(
        f"task: mmvp, {args.pairs} pairs ({len(tuning.examples)} tuning / {len(heldout.examples)} held-out "
        f"examples); {len(configs)} trials, --batch {args.batch}; {evaluations} tuning evaluations"
    )
    print()
    print("| run | phase | seconds | seconds / trial | evaluations / s | workers busy |")
    print("|---|---|---|---|---|---|")
    print(f"| sweep (`run_sweep`, local Ray) | whole wall | {sweep_wall:.1f} | | | |")
    print(f"| | Ray start (fixed) | {t['ray_start']:.1f} | | | |")
    print(f"| | model load (fixed) | {t['model_load']:.1f} | | | |")
    print(
        f"| | Tune's trial processes start, the worker waiting for their first calls (fixed: reused from trial "
        f"to trial) | {t['trials_start']:.1f} | | | |"
    )
    print(
        f"| | prefix preparation + search | {t['search']:.1f} | "
        f"{t['search'] / len(configs):.2f} | {evaluations / t['search']:.2f} | {100 * u.busy:.0f}% |"
    )
    print(f"| | of which: prefixes ready after | {t['prefixes']:.1f} | | | |")
    print(f"| | held-out confirmation, best vs VAR off (fixed) | {t['heldout']:.1f} | | | |")
    print(f"| | figures and records after the search (fixed) | {t['figures']:.1f} | | | |")
    print(f"| | plan, store, study, MLflow before Ray; the rest (fixed) | {other:.1f} | | | |")
    print(f"| engine alone (same process) | prefix preparation | {engine_prefix:.1f} | | | |")
    print(
        f"| | {len(configs)} configurations in batches of {args.batch} | {engine_search:.1f} | "
        f"{engine_search / len(configs):.2f} | {evaluations / engine_search:.2f} | 100% |"
    )
    print(
        f"| naive full-prompt | {len(naive_configs)} configurations timed; rate x the sweep's "
        f"{evaluations + 2 * len(heldout.examples)} evaluations | "
        f"{naive_search:.1f} | {naive_search / len(configs):.2f} | {1 / naive_per_eval:.2f} | |"
    )
    print()
    print("| where the CPU went during the sweep | processes | CPU seconds |")
    print("|---|---|---|")
    seconds, processes = cpu
    for role, used in seconds.most_common():
        print(f"| {role} | {processes[role]} | {used:.1f} |")
    print(f"| engine alone, for comparison: prefixes and batches | 1 | {engine_cpu:.1f} |")
    print()
    print(
        f"configurations per engine batch in the sweep: {u.batch_sizes}; trial processes with torch loaded: "
        f"{u.torch_in_trials}"
    )
    print(
        f"engine alone reproduces every trial's value: {'yes' if same else 'no'}; "
        f"configurations that changed a prediction vs VAR off: {changed} of {len(configs) - 1}; "
        f"selected share: min {min(shares):.3f}, max {max(shares):.3f}"
    )
    print(
        f"best: {outcome.metric} tuning {outcome.tuning_value:.4f}, held-out {outcome.heldout_value:.4f} "
        f"vs VAR off {outcome.baseline_heldout:.4f}"
    )
    print(
        f"sweep speedup: {naive_search / sweep_wall:.1f}x vs naive, "
        f"{engine_work / sweep_work:.2f} of the engine alone, workers busy {100 * u.busy:.0f}%"
    )


if __name__ == "__main__":
    main()
