"""What batching costs the search: TPE with B trials in flight vs one at a time, on a cheap synthetic objective.

Same protocol as a sweep (``sweep.tuning``): the vision-centric search space of ``sweep.search``, a study that
starts with the baseline (VAR off) and the paper's defaults, ``TPESampler(seed, constant_liar=True)``, and B trials
in flight. Trials of a batch finish together, and each one told frees a slot that is refilled at once, as Ray
Tune's concurrency limiter does. The objective has a known optimum (1.0 at tau 24, rho 0.82, p 0.55) and a sharp
ridge in rho, as VAR's response does (heads selected or not), plus per-trial noise (sd 0.02). Reported: the true
value of the configuration each study ends up calling best after N trials (mean, and the worst seed), over seeds.

    python benchmarks/tpe_batching.py            # ~1 minute
"""

from __future__ import annotations

import argparse
import math
import random
import statistics

import optuna

from sweep.search import space_for


def objective(tau: float, rho: float, p: float) -> float:
    """The true value (no noise): a bump in (tau, p), sharp in rho."""
    return math.exp(-(((tau - 24) / 9) ** 2) - ((rho - 0.82) / 0.06) ** 2 - ((p - 0.55) / 0.3) ** 2)


def run(batch: int, seed: int, trials: int, noise: float) -> float:
    space = space_for("vision-centric", "paper")
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial(space.baseline())
    study.enqueue_trial(space.paper_defaults())
    rng = random.Random(seed)
    running: list[optuna.trial.Trial] = []
    asked = 0

    def ask() -> None:
        nonlocal asked
        trial = study.ask()
        space.suggest(trial)
        running.append(trial)
        asked += 1

    while asked < min(batch, trials):
        ask()
    while running:
        finished, running[:] = running[:batch], running[batch:]
        for trial in finished:  # each result told frees a slot, refilled before the next result is told
            p = trial.params
            study.tell(trial, objective(p["tau"], p["rho"], p["p"]) + rng.gauss(0, noise))
            if asked < trials:
                ask()
    best = study.best_trial.params
    return objective(best["tau"], best["rho"], best["p"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"{args.trials} trials, {args.seeds} seeds, noise sd {args.noise}; true optimum 1.000")
    print()
    print(
        "| batch (trials in flight) | true value of the best found: mean | median | worst seed | "
        "seeds within 0.05 of the optimum |"
    )
    print("|---|---|---|---|---|")
    for batch in args.batches:
        values = [run(batch, seed, args.trials, args.noise) for seed in range(args.seeds)]
        near = sum(v >= 0.95 for v in values)
        print(
            f"| {batch} | {statistics.mean(values):.3f} | {statistics.median(values):.3f} | {min(values):.3f} | "
            f"{near} of {args.seeds} |"
        )


if __name__ == "__main__":
    main()
