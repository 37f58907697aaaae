"""The engine's prefix cache: what VAR configurations do not change about an example, kept within byte budgets.

A :class:`Prepared` entry holds one example's prefix (its keys and values per layer, the prefix tokens'
sink-score components, the prompt ids and the suffix's positions). :class:`PrefixCache` keeps entries in two LRU
tiers, device memory then host memory (one pinned buffer per entry on a GPU, for fast asynchronous reloads);
beyond both budgets an entry is dropped and recomputed by the engine when needed again. :func:`memory_budgets`
sizes the tiers from the memory left free once the model is loaded. Nothing here runs a model.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from var_core import VARState

__all__ = ["Prepared", "CacheStats", "PrefixCache", "memory_budgets"]


@dataclass
class Prepared:
    """Everything about one example that no VAR configuration changes."""

    example_id: str
    prompt_len: int
    prefix_len: int
    # [1, T]: the whole prompt (decoding processors read it, e.g. a repetition penalty)
    prompt_ids: torch.Tensor
    keys: list[torch.Tensor]  # per layer [1, H_kv, P, D]
    values: list[torch.Tensor]
    state: VARState  # sink-score components of the prefix, image positions
    suffix_positions: torch.Tensor  # [1, S], Qwen2-VL M-RoPE: [3, 1, S]
    option_ids: tuple[int, ...] | None

    @property
    def suffix_ids(self) -> torch.Tensor:
        """``[1, S]``: the prompt after the prefix (the question), which every configuration runs."""
        return self.prompt_ids[:, self.prefix_len :]

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor of the entry, in the order :meth:`with_tensors` takes them back."""
        state = self.state
        layers = sorted(state.peak)
        return [
            self.prompt_ids,
            self.suffix_positions,
            state.visual,  # type: ignore[list-item]
            state.candidate,  # type: ignore[list-item]
            state.image_end,  # type: ignore[list-item]
            *(state.peak[layer] for layer in layers),
            *(state.mean_sq[layer] for layer in layers),
            *self.keys,
            *self.values,
        ]

    def with_tensors(self, tensors: Sequence[torch.Tensor]) -> Prepared:
        """This entry with :meth:`tensors` replaced by ``tensors`` (same order, shapes and dtypes)."""
        state, layers, n = self.state, sorted(self.state.peak), len(self.keys)
        it = iter(tensors)
        prompt_ids, positions, visual, candidate, image_end = (next(it) for _ in range(5))
        peak = {layer: next(it) for layer in layers}
        mean_sq = {layer: next(it) for layer in layers}
        keys, values = [next(it) for _ in range(n)], [next(it) for _ in range(n)]
        # every other field of the entry and of its state comes along as it is
        moved = replace(
            state, visual=visual, candidate=candidate, image_end=image_end, peak=peak, mean_sq=mean_sq
        )
        return replace(
            self, prompt_ids=prompt_ids, keys=keys, values=values, state=moved, suffix_positions=positions
        )

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def to(self, device: torch.device) -> Prepared:
        """This entry with its tensors on ``device`` (a copy when the device changes)."""
        return self.with_tensors([t.to(device, non_blocking=True) for t in self.tensors()])


def _pinned_size(nbytes: int) -> int:
    """Bytes a pinned host allocation of ``nbytes`` takes: the CUDA host allocator rounds to a power of two."""
    return 1 << max(nbytes - 1, 0).bit_length()


def _to_host(entry: Prepared, *, pin: bool) -> tuple[Prepared, int]:
    """A host copy of ``entry`` in one buffer (pinned for fast, asynchronous reloads); returns it and its bytes.

    One buffer per entry, not one per tensor: pinned allocations are rounded up to a power of two, which for
    dozens of small tensors would take several times their size; the returned size is what the buffer takes.
    """
    tensors = entry.tensors()
    offsets, total = [], 0
    for t in tensors:
        total = -(-total // 64) * 64  # 64-byte aligned views, for every dtype
        offsets.append(total)
        total += t.numel() * t.element_size()
    buffer = torch.empty(max(total, 1), dtype=torch.uint8, pin_memory=pin)
    views = []
    for t, offset in zip(tensors, offsets, strict=True):
        view = buffer[offset : offset + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
        views.append(view.copy_(t, non_blocking=pin))
    return entry.with_tensors(views), (_pinned_size(total) if pin else total)


@dataclass
class CacheStats:
    prepared: int = 0  # prefixes computed (recomputations included)
    device_hits: int = 0
    host_hits: int = 0
    spills: int = 0  # entries moved from device to host memory
    evictions: int = 0  # entries dropped (recomputed when needed again)
    prepare_seconds: float = 0.0


class PrefixCache:
    """Prepared examples in two LRU tiers: device memory, then (``host_bytes`` > 0) host memory; beyond, dropped."""

    def __init__(self, device: torch.device, device_bytes: int, host_bytes: int, *, pin: bool) -> None:
        self.device = device
        self.device_bytes = device_bytes
        self.host_bytes = host_bytes
        self.pin = pin
        self.on_device: OrderedDict[str, Prepared] = OrderedDict()
        self.on_host: OrderedDict[str, tuple[Prepared, int]] = OrderedDict()  # entry, bytes it takes
        self.device_used = 0  # bytes held by each tier
        self.host_used = 0
        self.stats = CacheStats()

    def get(self, key: str) -> Prepared | None:
        if key in self.on_device:
            self.on_device.move_to_end(key)
            self.stats.device_hits += 1
            return self.on_device[key]
        if key in self.on_host:
            self.stats.host_hits += 1
            entry, size = self.on_host.pop(key)
            self.host_used -= size
            return self.put(key, entry.to(self.device))
        return None

    def put(self, key: str, entry: Prepared) -> Prepared:
        self.on_device[key] = entry
        self.device_used += entry.nbytes
        # the newest entry always stays, even alone over budget: it is about to be used
        while len(self.on_device) > 1 and self.device_used > self.device_bytes:
            old_key, old = self.on_device.popitem(last=False)
            self.device_used -= old.nbytes
            if self.host_bytes > 0:
                copy, size = _to_host(old, pin=self.pin)
                self.on_host[old_key] = (copy, size)
                self.host_used += size
                self.stats.spills += 1
            else:
                self.stats.evictions += 1
        while self.on_host and self.host_used > self.host_bytes:
            _, (_, size) = self.on_host.popitem(last=False)
            self.host_used -= size
            self.stats.evictions += 1
        return entry

    def clear(self) -> None:
        self.on_device.clear()
        self.on_host.clear()
        self.device_used = self.host_used = 0


def _available_host_bytes() -> int:
    """Host memory available to new allocations (Linux ``MemAvailable``; else the free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_budgets(
    device: torch.device, *, headroom: float = 0.2, min_headroom: int = 2 << 30, host_share: float = 0.5
) -> tuple[int, int]:
    """``(device bytes, host bytes)`` for the prefix caches, from the memory free now: call it after the model
    is loaded.

    On a GPU the device tier gets the free device memory less a headroom of ``headroom`` of the total (at least
    ``min_headroom``), left for the suffix batches' activations and the allocator. The host tier gets
    ``host_share`` of the available host memory (pinned memory cannot be swapped out, so not all of it). On a
    CPU the device is host memory, and gets that same share.
    """
    host = int(_available_host_bytes() * host_share)
    if device.type != "cuda":
        return host, host
    free, total = torch.cuda.mem_get_info(device)
    return max(0, int(free - max(min_headroom, headroom * total))), host
