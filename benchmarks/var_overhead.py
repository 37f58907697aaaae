"""Generate time with VAR: unpatched SDPA vs the VAR fast path vs the eager reference (the released code's way).

One run measures all three side by side, interleaved, on a LLaVA-1.5-shaped model with planted sinks: 576 image
tokens (CLIP at 336 px / 14), ~50 prompt text tokens (LLaVA's system prompt, a short question), 20 new tokens.
Prints a table of medians and ratios, and
the selected share and attention mass moved, so that it is visible that VAR acted.

    python benchmarks/var_overhead.py                      # CPU-scaled model (2 cores: ~2 minutes)
    python benchmarks/var_overhead.py --shape llava-1.5-7b --device cuda --dtype bfloat16

Imports only torch, transformers and the project's model code.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from PIL import Image

from var_core import VARConfig, patch
from workers.models import LLAVA_15_7B_SHAPE, LLAVA_CPU_SHAPE, build_tiny_llava, plant_sinks

QUESTION = "Are the butterfly's feet visible? (a) Yes (b) No"
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["cpu", "llava-1.5-7b"], default="cpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    shape = LLAVA_CPU_SHAPE if args.shape == "cpu" else LLAVA_15_7B_SHAPE
    if device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))

    model, processor = build_tiny_llava(shape, device=device, dtype=dtype)
    plant_sinks(model, processor)
    prompt = f"{SYSTEM} USER: <image>\n{QUESTION} ASSISTANT:"
    image = Image.new("RGB", (shape.image_size, shape.image_size), (120, 160, 200))
    inputs = processor(images=image, text=prompt, return_tensors="pt").to(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    n_image = int((inputs["input_ids"] == model.config.image_token_id).sum())
    n_text = inputs["input_ids"].shape[1] - n_image
    config = VARConfig()  # the paper's default: tau 20, rho 0.5, p 0.4, summ 0.2

    def generate() -> torch.Tensor:
        with torch.no_grad():
            return model.generate(
                **inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False
            )

    paths = ["unpatched SDPA", "VAR fast path", "eager reference"]
    times: dict[str, list[float]] = {p: [] for p in paths}
    tokens: dict[str, torch.Tensor] = {}
    stats: dict[str, dict[str, float]] = {}
    for repeat in range(args.repeats + 1):  # the first round warms up
        for name in paths:
            handle = None
            if name != "unpatched SDPA":
                handle = patch(model, config, path="fast" if name == "VAR fast path" else "eager")
                handle.collect_stats = repeat == 0
            try:
                sync(device)
                start = time.perf_counter()
                out = generate()
                sync(device)
                elapsed = time.perf_counter() - start
            finally:
                if handle is not None:
                    if repeat == 0:
                        stats[name] = handle.stats().summary()
                    handle.remove()
            if repeat == 0:
                tokens[name] = out
            else:
                times[name].append(elapsed)

    base = statistics.median(times["unpatched SDPA"])
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    )
    print(
        f"model: LLaVA-1.5-shaped, text hidden {shape.hidden} x {shape.layers} layers, {shape.heads} heads, "
        f"vision {shape.vision_hidden} x {shape.vision_layers} at {shape.image_size} px; {dtype}; "
        f"device {device.type} ({device_name}, {torch.get_num_threads()} threads)"
    )
    print(
        f"prompt: {n_image} image tokens + {n_text} text tokens; {args.new_tokens} new tokens; "
        f"median of {args.repeats}; VAR {config}"
    )
    print()
    print("| path | generate (ms) | vs unpatched SDPA | selected share | mass moved per row |")
    print("|---|---|---|---|---|")
    for name in paths:
        median = statistics.median(times[name])
        s = stats.get(name)
        share = f"{s['selected_share']:.3f}" if s else "-"
        moved = f"{s['mass_moved_per_row']:.4f}" if s else "-"
        print(f"| {name} | {median * 1e3:.1f} | {median / base:.3f}x | {share} | {moved} |")
    same = torch.equal(tokens["VAR fast path"], tokens["eager reference"])
    print()
    print(f"fast path tokens == eager reference tokens: {'yes' if same else 'no'}")


if __name__ == "__main__":
    main()
