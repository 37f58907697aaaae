"""Sweep throughput: (configuration, example) evaluations per second, naive re-evaluation vs the engine.

Protocol (DESIGN.md "Contract details"): a LLaVA-shaped model (CLIP-style tower at 336/14 = 576 image tokens, text
model 1024 hidden x 8 layers) with planted sinks; MMVP-shaped prompts (an MMVP-format folder written here and read
by the real ``mmvp`` loader: 576 image tokens, ~40 text tokens); 16 configurations (VAR off, the paper's default,
14 seeded random ones) x 32 examples, measured side by side in one run.

* naive: per (configuration, example), one full-prompt forward, vision tower included, with the same patched
  model, attention path and scoring (first-token option logits): what a plain Tune loop around transformers does.
  Processor outputs are computed once beforehand and not timed, to the naive loop's advantage.
* engine: the real ``EvalEngine``, a fresh one: prefixes prepared once per example (timed), then every
  configuration (VAR off included) as a row of one suffix batch per example.

Prints the table, the selected share, how many configurations changed a prediction against VAR off, the measured
limit (naive time per evaluation / the engine's time per evaluation once every prefix is computed, i.e. the ratio
if prefixes were free), and last: ``speedup: <x>x, predictions identical: yes|no``. Imports only torch,
transformers and the project's model code.

    python benchmarks/sweep_throughput.py                    # ~6 minutes on 2 CPU cores
    python benchmarks/sweep_throughput.py --device cuda --shape llava-1.5-7b
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time

import torch

from var_core import VARConfig
from workers.engine import EvalEngine
from workers.models import LLAVA_15_7B_SHAPE, LLAVA_CPU_SHAPE, build_tiny_llava, near_tie_answers, plant_sinks
from workers.synthetic import write_mmvp_folder
from workers.tasks import get_task, option_token_ids


def sample_configs(n: int, seed: int = 0) -> list[VARConfig | None]:
    rng = random.Random(seed)
    configs: list[VARConfig | None] = [
        None,
        VARConfig(rho=0.9),
    ]  # VAR off; the paper's vision-centric default
    while len(configs) < n:
        configs.append(
            VARConfig(tau=rng.uniform(5, 30), rho=rng.uniform(0.3, 1.0), p=rng.uniform(0.1, 1.0), summ=0.2)
        )
    return configs


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (device)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process max RSS)"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["cpu", "llava-1.5-7b"], default="cpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", type=int, default=16)
    parser.add_argument("--examples", type=int, default=32)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = LLAVA_CPU_SHAPE if args.shape == "cpu" else LLAVA_15_7B_SHAPE

    model, processor = build_tiny_llava(shape, device=device, dtype=dtype)
    plant_sinks(model, processor)
    configs = sample_configs(args.configs)
    with tempfile.TemporaryDirectory() as tmp:
        write_mmvp_folder(tmp, pairs=(args.examples + 1) // 2, size=shape.image_size)
        task = get_task("mmvp", data_dir=tmp)
        examples = list(task.examples[: args.examples])
        engine = EvalEngine(model, processor, max_batch=len(configs))
        # a random model answers every question alike; near-tied answer rows, calibrated on this prompt format,
        # make answers depend on the input (see near_tie_answers)
        prepared = {e.id: engine._inputs(task, e) for e in examples}  # (prompt, processor outputs)
        near_tie_answers(model, processor, calibration=prepared[examples[0].id][1])
        handle = engine.handle
        inputs = {i: batch for i, (_, batch) in prepared.items()}
        option_ids = {e.id: option_token_ids(processor, prepared[e.id][0], e.options) for e in examples}
        n_image = int((inputs[examples[0].id]["input_ids"] == model.config.image_token_id).sum())
        n_text = inputs[examples[0].id]["input_ids"].shape[1] - n_image

        # naive: one full forward per (configuration, example)
        reset_peak(device)
        naive: dict[tuple[int, str], int] = {}
        start = time.perf_counter()
        with torch.no_grad():
            for c, config in enumerate(configs):
                if config is None:
                    handle.disable()
                else:
                    handle.enable()
                    handle.set(config)
                for e in examples:
                    logits = model(**inputs[e.id], logits_to_keep=1).logits[0, -1]
                    naive[(c, e.id)] = int(logits[list(option_ids[e.id])].argmax())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        naive_seconds = time.perf_counter() - start
        naive_memory = peak_memory(device)
        handle.enable()

        # the limit: the engine with every prefix already computed (prefix free), per evaluation; this run also
        # grows the allocator's heap to the cache's size, as the naive loop's first forwards warm it for the naive
        engine.prepare(task, examples)
        start = time.perf_counter()
        engine.evaluate(task, configs, examples)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        suffix_seconds = (time.perf_counter() - start) / (len(configs) * len(examples))

        # engine: a fresh one, prefixes included in the time
        engine.close()
        engine = EvalEngine(model, processor, max_batch=len(configs))
        reset_peak(device)
        start = time.perf_counter()
        engine.prepare(task, examples)
        results = engine.evaluate(task, configs, examples)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        engine_seconds = time.perf_counter() - start
        engine_memory = peak_memory(device)
        cache_bytes = sum(p.nbytes for p in engine._cache.on_device.values())
        engine.close()

    evaluations = len(configs) * len(examples)
    identical = all(
        results[c].choices[e.id] == naive[(c, e.id)] for c in range(len(configs)) for e in examples
    )
    baseline = results[0].choices
    changed = sum(any(r.choices[e.id] != baseline[e.id] for e in examples) for r in results[1:])
    shares = [r.stats.summary()["selected_share"] for r in results if r.stats is not None]
    moved = [r.stats.summary()["mass_moved_per_row"] for r in results if r.stats is not None]
    naive_rate, engine_rate = evaluations / naive_seconds, evaluations / engine_seconds
    per_eval_naive = naive_seconds / evaluations

    print(
        f"model: LLaVA-shaped, text {shape.hidden} x {shape.layers} layers, vision {shape.vision_hidden} x "
        f"{shape.vision_layers} at {shape.image_size} px; {dtype}; {device}"
    )
    print(
        f"prompt: {n_image} image tokens + {n_text} text tokens; {len(configs)} configs x {len(examples)} examples"
    )
    print()
    print("| method | evaluations | seconds | evaluations / s | ratio | peak memory |")
    print("|---|---|---|---|---|---|")
    print(
        f"| naive full-prompt | {evaluations} | {naive_seconds:.1f} | {naive_rate:.2f} | 1.00x | {naive_memory} |"
    )
    print(
        f"| engine (prefix once, suffix batch) | {evaluations} | {engine_seconds:.1f} | {engine_rate:.2f} | "
        f"{engine_rate / naive_rate:.2f}x | {engine_memory}; prefix cache {cache_bytes / 2**20:.0f} MiB |"
    )
    print()
    print(
        f"selected share (VAR configs): min {min(shares):.3f}, max {max(shares):.3f}; "
        f"mass moved per row: max {max(moved):.4f}"
    )
    print(f"configs that changed a prediction vs VAR off: {changed} of {len(configs) - 1}")
    print(
        f"measured limit: naive per evaluation {per_eval_naive * 1e3:.1f} ms / suffix only (prefixes computed) "
        f"{suffix_seconds * 1e3:.1f} ms = {per_eval_naive / suffix_seconds:.1f}x"
    )
    print(f"speedup: {engine_rate / naive_rate:.1f}x, predictions identical: {'yes' if identical else 'no'}")


if __name__ == "__main__":
    main()
