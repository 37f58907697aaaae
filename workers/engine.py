"""The sweep-aware evaluation engine: per example, the prefix once; per configuration, only the suffix.

VAR only rewrites attention rows of text after the image and of generated tokens (DESIGN.md, "Why a sweep can be
much faster"). So for each example the vision tower, the forward of the prompt up to the image end, its KV cache
and the prefix tokens' sink-score components (:class:`var_core.VARState`) do not depend on (tau, rho, p). They are
computed once (the text before the image once per prompt format; the last layer stops once its keys are cached)
and kept within a byte budget (device memory, then host memory, then recomputed). Every batch of configurations
then runs only the suffix (the question), one configuration per batch row (VAR off is a row too): the suffix enters
as one row, runs once through the layers below the first one VAR may modify, fans out there, and attends to the
prefix through :class:`var_core.SharedPrefix`, one copy for all rows
(:func:`var_core.attention.shared_prefix_attention`). Option tasks score from the last position's logits, so the
last layer works on that position alone; generation tasks decode greedily from the cache. Results equal a plain
full-prompt run of the patched model (tests/engine prove it).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from var_core import SharedPrefix, VARConfig, VARHandle, VARState, family_of, patch
from var_core.errors import VarsweepError
from var_core.families import image_token_id, residual_branches
from workers.results import ConfigResult
from workers.tasks import Example, Task, option_token_ids

__all__ = ["EvalEngine", "ConfigResult", "Prepared", "CacheStats"]

Progress = Callable[[int, int], None]
_HEADS_KEPT = 8  # prompt formats whose text before the image is kept (a task has one or a few)


@dataclass
class Prepared:
    """Everything about one example that no VAR configuration changes."""

    example_id: str
    prompt_len: int
    prefix_len: int
    suffix_ids: torch.Tensor  # [1, S]
    keys: list[torch.Tensor]  # per layer [1, H_kv, P, D]
    values: list[torch.Tensor]
    state: VARState  # sink-score components of the prefix, image positions
    suffix_positions: torch.Tensor  # [1, S], Qwen2-VL M-RoPE: [3, 1, S]
    option_ids: tuple[int, ...] | None

    @property
    def nbytes(self) -> int:
        tensors = [*self.keys, *self.values, *self.state.peak.values(), *self.state.mean_sq.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: torch.device) -> Prepared:
        """This entry with its tensors on ``device`` (a copy when the device changes)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        state = self.state
        moved = VARState(
            prompt_len=state.prompt_len,
            seen=state.seen,
            visual=move(state.visual),  # type: ignore[arg-type]
            candidate=move(state.candidate),  # type: ignore[arg-type]
            image_end=move(state.image_end),  # type: ignore[arg-type]
            peak={k: move(v) for k, v in state.peak.items()},
            mean_sq={k: move(v) for k, v in state.mean_sq.items()},
        )
        return Prepared(
            example_id=self.example_id,
            prompt_len=self.prompt_len,
            prefix_len=self.prefix_len,
            suffix_ids=move(self.suffix_ids),
            keys=[move(k) for k in self.keys],
            values=[move(v) for v in self.values],
            state=moved,
            suffix_positions=move(self.suffix_positions),
            option_ids=self.option_ids,
        )


@dataclass
class CacheStats:
    prepared: int = 0  # prefixes computed (recomputations included)
    device_hits: int = 0
    host_hits: int = 0
    evictions: int = 0
    prepare_seconds: float = 0.0


class _PrefixCache:
    """Prepared examples in two LRU tiers: device memory, then host memory; beyond both, dropped."""

    def __init__(self, device: torch.device, device_bytes: int, host_bytes: int) -> None:
        self.device = device
        self.device_bytes = device_bytes
        self.host_bytes = host_bytes if device.type != "cpu" else 0  # on a CPU, host memory is the device
        self.on_device: OrderedDict[str, Prepared] = OrderedDict()
        self.on_host: OrderedDict[str, Prepared] = OrderedDict()
        self.stats = CacheStats()

    def get(self, key: str) -> Prepared | None:
        if key in self.on_device:
            self.on_device.move_to_end(key)
            self.stats.device_hits += 1
            return self.on_device[key]
        if key in self.on_host:
            self.stats.host_hits += 1
            return self.put(key, self.on_host.pop(key).to(self.device))
        return None

    def put(self, key: str, entry: Prepared) -> Prepared:
        self.on_device[key] = entry
        self._shrink(self.on_device, self.device_bytes, spill=self.host_bytes > 0)
        self._shrink(self.on_host, self.host_bytes, spill=False)
        return entry

    def _shrink(self, tier: OrderedDict[str, Prepared], budget: int, *, spill: bool) -> None:
        # the newest entry always stays, even alone over budget: it is about to be used
        while len(tier) > 1 and sum(e.nbytes for e in tier.values()) > budget:
            key, entry = tier.popitem(last=False)
            if spill:
                self.on_host[key] = entry.to(torch.device("cpu"))
            else:
                self.stats.evictions += 1

    def clear(self) -> None:
        self.on_device.clear()
        self.on_host.clear()


def _keys_values(cache: DynamicCache) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, the keys and the values a cache holds."""
    return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]


@contextmanager
def _last_position_only(branches: list[nn.Module]) -> Iterator[None]:
    """Run the last decoder layer's residual branches (attention output projection, MLP) on the last position.

    Only the last position's logits are read (``logits_to_keep=1``), and the layer's keys and values, which later
    calls attend to, are computed before these branches. The other positions' outputs of this layer become wrong
    (the one branch output is added to every position) and are never read.
    """

    def last(module: nn.Module, args: tuple) -> tuple:
        return (args[0][:, -1:], *args[1:])

    hooks = [branch.register_forward_pre_hook(last) for branch in branches]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


class EvalEngine:
    """Evaluates batches of VAR configurations on a task's examples, reusing per-example prefixes.

    The engine owns a VAR patch on ``model`` (or uses ``handle``). ``cache_bytes`` bounds the prefixes kept in
    device memory, ``host_cache_bytes`` those spilled to host memory (GPU only); anything beyond is recomputed
    when needed. ``max_batch`` bounds the configurations run together against one prefix.
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        *,
        handle: VARHandle | None = None,
        cache_bytes: int = 8 << 30,
        host_cache_bytes: int = 32 << 30,
        max_batch: int = 16,
    ) -> None:
        self.model = model
        self.processor = processor
        self.family = family_of(model).name
        self.handle = handle if handle is not None else patch(model, VARConfig())
        self.device = next(model.parameters()).device
        self.text_config = model.config.get_text_config()
        self.max_batch = max_batch
        self._image_token_id = image_token_id(model)
        self._eos = self._eos_ids()
        self._last_branches = residual_branches(model, len(self.handle.layers) - 1)
        self._cache = _PrefixCache(self.device, cache_bytes, host_cache_bytes)
        self._heads: OrderedDict[tuple[int, ...], tuple[list[torch.Tensor], list[torch.Tensor], VARState]] = (
            OrderedDict()
        )

    @property
    def cache_stats(self) -> CacheStats:
        return self._cache.stats

    def close(self) -> None:
        self._cache.clear()
        self._heads.clear()
        self.handle.remove()

    # ------------------------------------------------------------------ public
    def prepare(self, task: Task, examples: Sequence[Example], progress: Progress | None = None) -> None:
        """Compute (or find) the prefix of every example; ``progress(done, total)`` after each."""
        for done, example in enumerate(examples, 1):
            self._prepared(task, example)
            if progress is not None:
                progress(done, len(examples))

    @torch.no_grad()
    def evaluate(
        self,
        task: Task,
        configs: Sequence[VARConfig | None],
        examples: Sequence[Example],
        *,
        collect_stats: bool = True,
    ) -> list[ConfigResult]:
        """Per configuration (``None`` = VAR off), the answers on ``examples``, in the order of ``configs``."""
        results = [ConfigResult(config=c) for c in configs]
        # one batch row per distinct configuration: every VAR-off slot shares one row
        rows: list[VARConfig | None] = [c for c in configs if c is not None]
        targets = [[results[i]] for i, c in enumerate(configs) if c is not None]
        if len(rows) < len(configs):
            rows.append(None)
            targets.append([r for r in results if r.config is None])
        for example in examples:
            prep = self._prepared(task, example)
            for start in range(0, len(rows), self.max_batch):
                end = start + self.max_batch
                self._run(task, example, prep, rows[start:end], targets[start:end], collect_stats=collect_stats)
        return results

    @torch.no_grad()
    def capture(self, task: Task, example: Example, config: VARConfig) -> dict[str, Any]:
        """The last prompt token's attention on the image, before and after VAR, in every layer VAR modifies.

        Plain data (numpy) in the fields of ``dashboards.AttentionCapture``: the image as shown (fitted to the
        token grid), the grid, the layers, per layer the visual sinks, the attention before/after per head, and
        the heads selected.
        """
        import numpy as np
        from PIL import ImageOps

        _, inputs = self._inputs(task, example)
        self.handle.enable()
        self.handle.set(config)
        with self.handle.capture() as layers:
            self.model(**inputs, logits_to_keep=1)
        if not layers:
            raise VarsweepError(f"VAR modified no layer of example {example.id} under {config}")
        image_positions = (inputs["input_ids"][0] == self._image_token_id).nonzero().flatten().cpu()
        order = sorted(layers)
        if "image_grid_thw" in inputs:  # Qwen2-VL: patches merged merge x merge into one token
            merge = int(self.model.config.vision_config.spatial_merge_size)
            _, rows, cols = (int(v) for v in inputs["image_grid_thw"][0])
            grid = (rows // merge, cols // merge)
        else:
            side = int(round(len(image_positions) ** 0.5))
            grid = (side, len(image_positions) // max(side, 1))
        cell = max(1, 448 // max(grid))
        shown = ImageOps.fit(example.image.load(), (grid[1] * cell, grid[0] * cell))

        def stack(part: str) -> np.ndarray:
            return np.stack([getattr(layers[layer], part)[0][:, image_positions].numpy() for layer in order])

        return {
            "image": np.asarray(shown, dtype=np.uint8),
            "grid": grid,
            "layers": tuple(order),
            "visual_sinks": np.stack([layers[layer].sinks[0][image_positions].numpy() for layer in order]),
            "before": stack("before"),
            "after": stack("after"),
            "selected": np.stack([layers[layer].selected[0].numpy() for layer in order]),
            "title": f"{task.name} {example.id}: tau {config.tau:.1f}, rho {config.rho:.2f}, p {config.p:.2f} "
            f"({config.convention})",
        }

    # ------------------------------------------------------------------ internals
    def _eos_ids(self) -> set[int]:
        ids = set()
        for source in (getattr(self.model, "generation_config", None), self.text_config):
            eos = getattr(source, "eos_token_id", None)
            ids.update([eos] if isinstance(eos, int) else list(eos or []))
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if tokenizer.eos_token_id is not None:
            ids.add(tokenizer.eos_token_id)
        return ids

    def _inputs(self, task: Task, example: Example) -> tuple[str, dict[str, torch.Tensor]]:
        prompt = task.build_prompt(example, self.processor, self.family)
        inputs = self.processor(images=example.image.load(), text=prompt, return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        return prompt, {
            k: (v.to(self.device, dtype) if k == "pixel_values" else v.to(self.device)) for k, v in inputs.items()
        }

    def _prepared(self, task: Task, example: Example) -> Prepared:
        key = f"{task.name}\x00{example.id}"
        entry = self._cache.get(key)
        if entry is None:
            start = time.perf_counter()
            entry = self._cache.put(key, self._compute_prefix(task, example))
            self._cache.stats.prepared += 1
            self._cache.stats.prepare_seconds += time.perf_counter() - start
        return entry

    @torch.no_grad()
    def _compute_prefix(self, task: Task, example: Example) -> Prepared:
        prompt, inputs = self._inputs(task, example)
        ids = inputs["input_ids"]
        image = (ids[0] == self._image_token_id).nonzero()
        if len(image) == 0:
            raise VarsweepError(f"example {example.id}: the prompt has no image token")
        prefix_len = int(image[-1]) + 1
        prompt_len = ids.shape[1]
        if prefix_len >= prompt_len:
            raise VarsweepError(f"example {example.id}: no text after the image; VAR has nothing to act on")
        head_len = int(image[0])  # the text before the image: the same in every example of a prompt format
        positions = torch.arange(prompt_len, device=ids.device)[None]
        chunk = {"input_ids": ids[:, head_len:prefix_len], "pixel_values": inputs["pixel_values"]}
        if "image_grid_thw" in inputs:  # Qwen2-VL: explicit M-RoPE positions, stateless across calls
            positions, _ = self.model.model.get_rope_index(
                ids, mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
            )
            chunk |= {
                "image_grid_thw": inputs["image_grid_thw"],
                "mm_token_type_ids": inputs["mm_token_type_ids"][:, head_len:prefix_len],
            }
        chunk["position_ids"] = positions[..., head_len:prefix_len]
        cache = DynamicCache(config=self.text_config)
        state = self.handle.new_state(prompt_len=prompt_len)
        if head_len > 0:
            head_keys, head_values, head_state = self._head(ids[:, :head_len], positions[..., :head_len])
            for layer, (key, value) in enumerate(zip(head_keys, head_values, strict=True)):
                cache.update(key, value, layer)
            state = head_state.continued(prompt_len)
        self.handle.enable()
        # the backbone (no LM head for prefix positions), stopped once the last layer's keys are cached
        cache = self.handle.prefill(self.model.model, past_key_values=cache, var_state=state, **chunk)
        keys, values = _keys_values(cache)
        option_ids = None
        if task.answer_mode == "options":
            tokenizer = getattr(self.processor, "tokenizer", self.processor)
            option_ids = tuple(option_token_ids(tokenizer, prompt, example.options))
        return Prepared(
            example_id=example.id,
            prompt_len=prompt_len,
            prefix_len=prefix_len,
            suffix_ids=ids[:, prefix_len:],
            keys=keys,
            values=values,
            state=state,
            suffix_positions=positions[..., prefix_len:],
            option_ids=option_ids,
        )

    def _head(
        self, ids: torch.Tensor, positions: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], VARState]:
        """Keys, values and sink-score components of a prompt's text before the image, computed once per text."""
        key = tuple(ids[0].tolist())
        if key in self._heads:
            self._heads.move_to_end(key)
            return self._heads[key]
        state = self.handle.new_state()
        self.handle.enable()
        cache = self.handle.prefill(
            self.model.model,
            input_ids=ids,
            position_ids=positions,
            past_key_values=DynamicCache(config=self.text_config),
            var_state=state,
        )
        self._heads[key] = (*_keys_values(cache), state)
        while len(self._heads) > _HEADS_KEPT:
            self._heads.popitem(last=False)
        return self._heads[key]

    def _run(
        self,
        task: Task,
        example: Example,
        prep: Prepared,
        configs: list[VARConfig | None],
        targets: list[list[ConfigResult]],
        *,
        collect_stats: bool,
    ) -> None:
        """One suffix batch: a row per configuration (``None``: VAR off), its answers to each row's targets."""
        n = len(configs)
        # one row in: the configurations share the prompt, and the rows fan out at the first layer VAR may modify
        kwargs: dict[str, Any] = {
            "input_ids": prep.suffix_ids,
            "position_ids": prep.suffix_positions,
            "past_key_values": DynamicCache(config=self.text_config),  # the keys after the shared prefix
            "var_state": prep.state.expand(n, shared_prefix=SharedPrefix(prep.keys, prep.values)),
            "use_cache": True,
            "logits_to_keep": 1,
        }
        kwargs["var_state"].last_position_only = True  # see _last_position_only
        var_rows = any(c is not None for c in configs)
        if var_rows:
            self.handle.enable()
            self.handle.set(configs)
            self.handle.collect_stats = collect_stats
        else:  # VAR off alone: the unpatched attention throughout
            self.handle.disable()
        try:
            with _last_position_only(self._last_branches):
                out = self.model(**kwargs)
            logits = out.logits[:, -1]
            if task.answer_mode == "options":
                self._choose(example, prep, logits, targets)
            else:
                self._decode(task, example, out, logits, kwargs, targets)
        finally:
            if var_rows and collect_stats:
                stats = self.handle.stats(reset=True)
                for slot, (config, results) in enumerate(zip(configs, targets, strict=True)):
                    if config is None:  # VAR off keeps no statistics
                        continue
                    one = stats.select(slot)
                    for result in results:
                        result.stats = one if result.stats is None else result.stats + one
            self.handle.collect_stats = False
            self.handle.enable()

    def _choose(
        self, example: Example, prep: Prepared, logits: torch.Tensor, targets: list[list[ConfigResult]]
    ) -> None:
        option_logits = logits[:, list(prep.option_ids)]  # type: ignore[arg-type]
        chosen = option_logits.argmax(dim=-1).tolist()
        for index, results in zip(chosen, targets, strict=True):
            for result in results:
                result.choices[example.id] = index
                result.answers[example.id] = example.options[index]  # type: ignore[index]

    def _decode(
        self,
        task: Task,
        example: Example,
        out: Any,
        logits: torch.Tensor,
        kwargs: dict[str, Any],
        targets: list[list[ConfigResult]],
    ) -> None:
        n = logits.shape[0]
        positions = kwargs["position_ids"]
        for layer in out.past_key_values.layers:  # layers below the fan-out ran one row for all
            if layer.keys.shape[0] != n:
                layer.keys, layer.values = layer.keys.expand(n, -1, -1, -1), layer.values.expand(n, -1, -1, -1)
        generated = torch.empty(n, 0, dtype=torch.long, device=logits.device)
        done = torch.zeros(n, dtype=torch.bool, device=logits.device)
        eos = torch.tensor(sorted(self._eos), device=logits.device)
        for step in range(task.max_new_tokens):
            token = logits.argmax(dim=-1)
            generated = torch.cat([generated, token[:, None]], dim=1)
            done |= torch.isin(token, eos)
            if bool(done.all()) or step + 1 == task.max_new_tokens:
                break
            kwargs["input_ids"] = token[:, None]
            kwargs["past_key_values"] = out.past_key_values
            kwargs["position_ids"] = positions[..., -1:] + step + 1  # M-RoPE: all three sections advance
            out = self.model(**kwargs)
            logits = out.logits[:, -1]
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        for ids, results in zip(generated.tolist(), targets, strict=True):
            ids = ids[: next((i for i, t in enumerate(ids) if t in self._eos), len(ids))]
            answer = tokenizer.decode(ids, skip_special_tokens=True).strip()
            for result in results:
                result.tokens[example.id] = list(ids)
                result.answers[example.id] = answer
