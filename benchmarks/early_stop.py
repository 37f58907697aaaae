"""Early stopping over examples (``--early-stop asha``) against none, measured side by side in one run.

1. The benchmark shape (as ``benchmarks/sweep_service.py``: ``llava-cpu-bench``, a 16-pair MMVP-format folder, 48
   trials): the real service twice, without and with ``--early-stop asha``, on the same split and seed. Reported:
   (configuration, example) evaluations spent on the tuning split, wall time, and each sweep's best value and
   configuration.
2. A synthetic objective with a known optimum and per-example noise, no model: the real search (Ray Tune, the
   ASHA scheduler, ``StudySearcher``, the rungs) over stand-in workers. Each answers an example correctly with
   probability 0.4 + 0.45 * f(tau, rho, p), f the bump of ``benchmarks/tpe_batching.py`` (1 at its optimum), drawn
   once per (configuration, example), so a configuration's score on few examples is noisy. For several seeds:
   how often ASHA keeps the truly best configuration it tried (highest f) to the last rung, the true value of the
   configuration each sweep calls best, and the evaluations spent.

    python benchmarks/early_stop.py                  # both parts, ~25 minutes on 2 CPU cores
    python benchmarks/early_stop.py --skip-model     # the synthetic part only
    python benchmarks/early_stop.py --skip-synthetic --metric accuracy   # the model part on a finer metric
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import statistics
import tempfile
import time
from pathlib import Path

import optuna
import ray
from tpe_batching import objective

from sweep.fidelity import Rungs
from sweep.search import space_for
from sweep.service import SweepRequest, run_sweep, split_groups
from sweep.settings import Settings
from sweep.tuning import SearchHooks, open_study, prepare_study, run_search
from workers.models import LLAVA_CPU_SHAPE
from workers.results import ConfigResult
from workers.synthetic import write_mmvp_folder
from workers.tasks import get_task

State = optuna.trial.TrialState


def evaluations_spent(study: optuna.Study) -> int:
    """Tuning examples seen, summed over the trials that finished (complete or pruned)."""
    trials = study.get_trials(states=(State.COMPLETE, State.PRUNED))
    return sum(max(t.intermediate_values) for t in trials if t.intermediate_values)


def model_part(args: argparse.Namespace) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_mmvp_folder(Path(tmp) / "mmvp", pairs=args.pairs, size=LLAVA_CPU_SHAPE.image_size)
        for mode in ("off", "asha"):
            work = Path(tmp) / mode
            work.mkdir()
            settings = Settings(
                database_url=f"sqlite:///{work / 'varsweep.db'}",
                mlflow_tracking_uri=f"sqlite:///{work / 'mlruns.db'}",
            )
            request = SweepRequest(
                task="mmvp",
                model="llava-cpu-bench",
                trials=args.trials,
                data_dir=str(data),
                batch=args.batch,
                early_stop=mode,
                metric=args.metric,
            )
            started = time.perf_counter()
            outcome = run_sweep(request, settings, workdir=work)
            wall = time.perf_counter() - started
            ray.shutdown()
            study = optuna.load_study(study_name=request.study_name, storage=settings.study_url)
            pruned = len(study.get_trials(states=(State.PRUNED,)))
            rows.append((mode, evaluations_spent(study), pruned, wall, outcome))
    print(
        f"## 1. benchmark shape: llava-cpu-bench, {args.pairs} MMVP pairs, {args.trials} trials, --batch "
        f"{args.batch}, metric {args.metric}"
    )
    print()
    print(
        "| --early-stop | tuning evaluations | trials stopped early | wall (s) | best (tuning) | best (held-out) | "
        "best configuration |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode, spent, pruned, wall, o in rows:
        p = o.best_params
        print(
            f"| {mode} | {spent} | {pruned} | {wall:.1f} | {o.tuning_value:.4f} | {o.heldout_value:.4f} | "
            f"tau {p['tau']:.2f} rho {p['rho']:.3f} p {p['p']:.3f} |"
        )
    print(f"evaluations saved by asha: {1 - rows[1][1] / rows[0][1]:.0%}")
    print()


@ray.remote(num_cpus=0.1)
class StandIn:
    """A worker that answers from the synthetic objective: correct with probability 0.4 + 0.45 f(config)."""

    def __init__(self, task) -> None:
        self.examples = {e.group: [] for e in task.examples}
        for e in task.examples:
            self.examples[e.group].append(e)

    def evaluate(self, configs, split, groups=None):
        results = []
        for config in configs:
            chance = 0.4 + 0.45 * (objective(config.tau, config.rho, config.p) if config is not None else 0.0)
            answers = {}
            for group in groups:
                for e in self.examples[group]:
                    key = f"{config}|{e.id}".encode()
                    draw = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
                    answers[e.id] = e.answer if draw < chance else next(o for o in e.options if o != e.answer)
            results.append(ConfigResult(config=config, answers=answers))
        return results


def synthetic_part(args: argparse.Namespace) -> None:
    ignore = SearchHooks(
        on_start=lambda *a: None, on_rung=lambda r: None, on_end=lambda r: None, on_error=lambda n: None
    )
    results: dict[str, list[tuple[float, bool, int]]] = {"off": [], "asha": []}
    with tempfile.TemporaryDirectory() as tmp:
        task = get_task(
            "mmvp", data_dir=str(write_mmvp_folder(Path(tmp) / "mmvp", pairs=args.synthetic_pairs))
        )
        tuning_groups, _ = split_groups(task.groups, holdout=0.3, seed=0)
        tuning = task.select(tuning_groups)
        space = space_for("vision-centric", "paper")
        ray.init(num_cpus=3, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        actor = StandIn.remote(tuning)
        for seed in range(args.seeds):
            for mode in ("off", "asha"):
                rungs = (
                    Rungs.geometric(tuning_groups, seed=seed)
                    if mode == "asha"
                    else Rungs.single(tuning_groups)
                )
                study = open_study(
                    name=f"synthetic-{mode}-{seed}",
                    url=f"sqlite:///{Path(tmp) / 'studies.db'}",
                    direction="maximize",
                    seed=seed,
                )
                prepare_study(study, space)
                run_search(
                    study=study,
                    space=space,
                    trials=args.trials,
                    batch=args.batch,
                    rungs=rungs,
                    early_stop=mode,
                    actors=[actor],
                    task=tuning,
                    metric="accuracy",
                    direction="maximize",
                    storage_path=Path(tmp) / "tune",
                    hooks=ignore,
                )
                finished = study.get_trials(states=(State.COMPLETE, State.PRUNED))
                truth = {
                    t.number: objective(t.params["tau"], t.params["rho"], t.params["p"]) for t in finished
                }
                truly_best = max(finished, key=lambda t: truth[t.number])
                kept = truly_best.state == State.COMPLETE
                results[mode].append((truth[study.best_trial.number], kept, evaluations_spent(study)))
        ray.shutdown()
    print(
        f"## 2. synthetic objective: {args.seeds} seeds, {args.trials} trials, --batch {args.batch}, "
        f"{len(tuning.examples)} tuning examples in {len(tuning_groups)} groups; true optimum f = 1"
    )
    print()
    print(
        "| --early-stop | truly best configuration kept to the last rung | true f of the chosen best: mean | worst | "
        "tuning evaluations: mean |"
    )
    print("|---|---|---|---|---|")
    for mode, rows in results.items():
        kept = sum(k for _, k, _ in rows)
        print(
            f"| {mode} | {kept} of {len(rows)} | {statistics.mean(v for v, _, _ in rows):.3f} | "
            f"{min(v for v, _, _ in rows):.3f} | {statistics.mean(e for _, _, e in rows):.0f} |"
        )
    off = statistics.mean(e for _, _, e in results["off"])
    asha = statistics.mean(e for _, _, e in results["asha"])
    print(f"evaluations saved by asha: {1 - asha / off:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--metric", default="pair_accuracy")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--synthetic-pairs", type=int, default=60)
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not args.skip_model:
        model_part(args)
    if not args.skip_synthetic:
        synthetic_part(args)


if __name__ == "__main__":
    main()
