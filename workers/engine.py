"""The sweep-aware evaluation engine: per example, the prefix once; per configuration, only the suffix.

VAR only rewrites attention rows of text after the image and of generated tokens (DESIGN.md, "Why a sweep can be
much faster"). So for each example the vision tower, the forward of the prompt up to the image end, its KV cache
and the prefix tokens' sink-score components (:class:`var_core.VARState`) do not depend on (tau, rho, p). They are
computed once (the text before the image once per prompt format; the last layer stops once its keys are cached)
and kept within a byte budget (device memory, then host memory, then recomputed: :mod:`workers.prefix_cache`); by
default the budgets follow the memory left free once the model is loaded. Every batch of configurations
then runs only the suffix (the question), one configuration per batch row (VAR off is a row too): the suffix enters
as one row, runs once through the layers below the first one VAR may modify, fans out there, and attends to the
prefix through :class:`var_core.SharedPrefix`, one copy for all rows
(:func:`var_core.attention.shared_prefix_attention`). Option tasks score from the last position's logits, so the
last layer works on that position alone; generation tasks decode greedily from the cache under the checkpoint's
generation config (:class:`workers.decoding.GreedyDecoding`). Results equal a plain full-prompt run of the
patched model and ``model.generate(do_sample=False)`` (tests/workers/test_engine.py proves it).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from var_core import CallOptions, SharedPrefix, VARConfig, VARHandle, VARState, family_of, patch
from var_core.errors import VarsweepError
from var_core.families import image_layout, image_token_id, prompt_positions, residual_branches
from workers.decoding import GreedyDecoding
from workers.prefix_cache import CacheStats, PrefixCache, Prepared, memory_budgets
from workers.results import CapturedAttention, ConfigResult
from workers.tasks import Example, Task, option_token_ids

__all__ = ["EvalEngine", "ConfigResult", "Prepared", "CacheStats", "memory_budgets"]

Progress = Callable[[int, int], None]
_HEADS_KEPT = 8  # prompt formats whose text before the image is kept (a task has one or a few)


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
    device memory, ``host_cache_bytes`` those spilled to host memory; anything beyond is recomputed when needed.
    ``None`` (the default) sizes them from the memory free when the engine is built (:func:`memory_budgets`).
    ``host_tier`` turns the host tier on or off: by default on for a GPU (pinned memory) and off on a CPU, where
    host memory is the device; ``True`` on a CPU keeps host copies of evicted prefixes (tests). ``max_batch``
    bounds the configurations run together against one prefix. Decoding follows the model's generation config
    (:class:`workers.decoding.GreedyDecoding`; a setting it cannot reproduce raises here).
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        *,
        handle: VARHandle | None = None,
        cache_bytes: int | None = None,
        host_cache_bytes: int | None = None,
        host_tier: bool | None = None,
        max_batch: int = 16,
    ) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)  # a processor, or a bare tokenizer
        self.family = family_of(model).name
        self.decoding = GreedyDecoding.from_model(model)
        self.handle = handle if handle is not None else patch(model, VARConfig())
        self.device = next(model.parameters()).device
        self.text_config = model.config.get_text_config()
        self.max_batch = max_batch
        self._image_token_id = image_token_id(model)
        self._eos = set(self.decoding.eos_ids)
        self._last_branches = residual_branches(model, len(self.handle.layers) - 1)
        device_budget, host_budget = (
            memory_budgets(self.device) if cache_bytes is None or host_cache_bytes is None else (0, 0)
        )
        host_tier = self.device.type == "cuda" if host_tier is None else host_tier
        self._cache = PrefixCache(
            self.device,
            device_budget if cache_bytes is None else cache_bytes,
            (host_budget if host_cache_bytes is None else host_cache_bytes) if host_tier else 0,
            pin=self.device.type == "cuda",
        )
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
                self._run(
                    task, example, prep, rows[start:end], targets[start:end], collect_stats=collect_stats
                )
        return results

    @torch.no_grad()
    def option_logits(
        self, task: Task, example: Example, configs: Sequence[VARConfig | None]
    ) -> torch.Tensor:
        """``[len(configs), options]`` float32: each configuration's first-token logits of the example's options,
        exactly as :meth:`evaluate` scores them (one suffix batch against the shared prefix)."""
        if task.answer_mode != "options":
            raise VarsweepError(f"task {task.name} answers by generation; it has no option logits")
        configs = list(configs)
        logits = self._run(
            task,
            example,
            self._prepared(task, example),
            configs,
            [[ConfigResult(c)] for c in configs],
            collect_stats=False,
        )
        return logits.float().cpu()

    @torch.no_grad()
    def capture(self, task: Task, example: Example, config: VARConfig) -> CapturedAttention:
        """The last prompt token's attention on the image, before and after VAR, in every layer VAR modifies:
        per layer the visual sinks, the attention before/after per head and the heads selected (numpy)."""
        import numpy as np

        _, inputs = self._inputs(task, example)
        with self.handle.using(config), self.handle.capture() as layers:
            self.model(**inputs, logits_to_keep=1)
        if not layers:
            raise VarsweepError(f"VAR modified no layer of example {example.id} under {config}")
        image_positions = (inputs["input_ids"][0] == self._image_token_id).nonzero().flatten().cpu()
        # the tokens that cover the whole image as one grid (a family fact: LLaVA-NeXT's base tile,
        # InternVL's thumbnail tile, Qwen2-VL's merged patches)
        layout = image_layout(self.model, inputs, len(image_positions))
        image_positions = image_positions[layout.start : layout.start + layout.rows * layout.cols]
        order = sorted(layers)

        def stack(part: str) -> np.ndarray:
            return np.stack([getattr(layers[layer], part)[0][:, image_positions].numpy() for layer in order])

        return CapturedAttention(
            task=task.name,
            example_id=example.id,
            config=config,
            image=np.asarray(example.image.load().convert("RGB"), dtype=np.uint8),
            grid=(layout.rows, layout.cols),
            layers=tuple(order),
            visual_sinks=np.stack([layers[layer].sinks[0][image_positions].numpy() for layer in order]),
            before=stack("before"),
            after=stack("after"),
            selected=np.stack([layers[layer].selected[0].numpy() for layer in order]),
        )

    # ------------------------------------------------------------------ internals
    def _inputs(self, task: Task, example: Example) -> tuple[str, dict[str, torch.Tensor]]:
        prompt = task.build_prompt(example, self.processor, self.family)
        inputs = self.processor(images=example.image.load(), text=prompt, return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        return prompt, {
            k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device))
            for k, v in inputs.items()
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
        # explicit positions (M-RoPE for Qwen2-VL) keep the calls that continue this prefix stateless
        positions = prompt_positions(self.model, inputs)
        # the image's inputs go with the chunk as the processor gave them (pixel_values, LLaVA-NeXT's image_sizes,
        # Qwen2-VL's image_grid_thw, ...); per-token ones (mm_token_type_ids) are cut to the chunk
        chunk = {
            key: value[:, head_len:prefix_len] if value.shape == ids.shape else value
            for key, value in inputs.items()
            if key != "attention_mask"
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
            option_ids = tuple(option_token_ids(self.tokenizer, prompt, example.options))
        return Prepared(
            example_id=example.id,
            prompt_len=prompt_len,
            prefix_len=prefix_len,
            prompt_ids=ids,
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
    ) -> torch.Tensor | None:
        """One suffix batch: a row per configuration (``None``: VAR off), its answers to each row's targets.

        Returns the option logits ``[rows, options]`` of an option task (None for generation)."""
        n = len(configs)
        # one row in: the configurations share the prompt, and the rows fan out at the first layer VAR may modify
        kwargs: dict[str, Any] = {
            "input_ids": prep.suffix_ids,
            "position_ids": prep.suffix_positions,
            "past_key_values": DynamicCache(config=self.text_config),  # the keys after the shared prefix
            "var_state": prep.state.expand(n),
            # the last layer on the last position only: see _last_position_only
            "var_call": CallOptions.continuing(
                prep.state, SharedPrefix(prep.keys, prep.values), last_position_only=True
            ),
            "use_cache": True,
            "logits_to_keep": 1,
        }
        chosen = None
        # a batch of VAR-off rows alone runs the unpatched attention throughout (handle.using switches VAR off)
        with self.handle.using(configs, stats=collect_stats) as run:
            with _last_position_only(self._last_branches):
                out = self.model(**kwargs)
            logits = out.logits[:, -1]
            if task.answer_mode == "options":
                chosen = self._choose(example, prep, logits, targets)
            else:
                self._decode(task, example, prep, out, logits, kwargs, targets)
        if run.stats is not None:
            for slot, (config, results) in enumerate(zip(configs, targets, strict=True)):
                if config is None:  # VAR off keeps no statistics
                    continue
                one = run.stats.select(slot)
                for result in results:
                    result.stats = one if result.stats is None else result.stats + one
        return chosen

    def _choose(
        self, example: Example, prep: Prepared, logits: torch.Tensor, targets: list[list[ConfigResult]]
    ) -> torch.Tensor:
        option_logits = logits[:, list(prep.option_ids)]  # type: ignore[arg-type]
        chosen = option_logits.argmax(dim=-1).tolist()
        for index, results in zip(chosen, targets, strict=True):
            for result in results:
                result.choices[example.id] = index
                result.answers[example.id] = example.options[index]  # type: ignore[index]
        return option_logits

    def _decode(
        self,
        task: Task,
        example: Example,
        prep: Prepared,
        out: Any,
        logits: torch.Tensor,
        kwargs: dict[str, Any],
        targets: list[list[ConfigResult]],
    ) -> None:
        n = logits.shape[0]
        positions = kwargs["position_ids"]
        for layer in out.past_key_values.layers:  # layers below the fan-out ran one row for all
            if layer.keys.shape[0] != n:
                layer.keys, layer.values = (
                    layer.keys.expand(n, -1, -1, -1),
                    layer.values.expand(n, -1, -1, -1),
                )
        # the whole sequence, prompt included, as generate() hands it to the logits processors
        sequences = prep.prompt_ids.expand(n, -1)
        processors = self.decoding.processors(prep.prompt_len, logits.device)
        done = torch.zeros(n, dtype=torch.bool, device=logits.device)
        eos = torch.tensor(self.decoding.eos_ids, dtype=torch.long, device=logits.device)
        for step in range(task.max_new_tokens):
            token = self.decoding.next_tokens(processors, sequences, logits)
            sequences = torch.cat([sequences, token[:, None]], dim=1)
            done |= torch.isin(token, eos)
            if bool(done.all()) or step + 1 == task.max_new_tokens:
                break
            kwargs["input_ids"] = token[:, None]
            kwargs["past_key_values"] = out.past_key_values
            kwargs["position_ids"] = positions[..., -1:] + step + 1  # M-RoPE: all three sections advance
            out = self.model(**kwargs)
            logits = out.logits[:, -1]
        for ids, results in zip(sequences[:, prep.prompt_len :].tolist(), targets, strict=True):
            ids = ids[: next((i for i, t in enumerate(ids) if t in self._eos), len(ids))]
            answer = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            for result in results:
                result.tokens[example.id] = list(ids)
                result.answers[example.id] = answer
