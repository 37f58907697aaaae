"""The prefix cache on its own, with no model: entries of known sizes through the two LRU tiers."""

from __future__ import annotations

import torch

from var_core import VARState
from workers.prefix_cache import PrefixCache, Prepared

CPU = torch.device("cpu")


def entry(name: str, seed: int, prefix: int = 6, layers: int = 2) -> Prepared:
    """A prepared example of ``prefix`` prompt tokens with random contents (keys [1, 2, prefix, 4] per layer)."""
    g = torch.Generator().manual_seed(seed)
    visual = torch.zeros(1, prefix, dtype=torch.bool)
    visual[0, 1:4] = True
    return Prepared(
        example_id=name,
        prompt_len=prefix + 3,
        prefix_len=prefix,
        prompt_ids=torch.randint(0, 100, (1, prefix + 3), generator=g),
        keys=[torch.randn(1, 2, prefix, 4, generator=g) for _ in range(layers)],
        values=[torch.randn(1, 2, prefix, 4, generator=g) for _ in range(layers)],
        state=VARState(
            prompt_len=prefix + 3,
            seen=prefix,
            visual=visual,
            candidate=torch.ones(1, prefix, dtype=torch.bool),
            image_end=torch.tensor([4]),
            peak={layer: torch.rand(1, prefix, generator=g) for layer in range(layers)},
            mean_sq={layer: torch.rand(1, prefix, generator=g) for layer in range(layers)},
        ),
        suffix_positions=torch.arange(prefix, prefix + 3)[None],
        option_ids=(7, 9),
    )


def same(a: Prepared, b: Prepared) -> bool:
    return a.example_id == b.example_id and all(
        torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors(), strict=True)
    )


def test_entries_round_trip_through_their_tensors():
    """Every tensor of an entry (the VARState's too) comes back in place from ``with_tensors``."""
    original = entry("a", 0)
    copy = original.with_tensors([t.clone() for t in original.tensors()])
    assert same(copy, original) and copy.state.seen == original.state.seen
    assert copy.nbytes == original.nbytes == sum(t.numel() * t.element_size() for t in original.tensors())


def test_device_tier_spills_least_recently_used_to_host_and_reloads_identically():
    a, b, c = entry("a", 0), entry("b", 1), entry("c", 2)
    cache = PrefixCache(CPU, device_bytes=2 * a.nbytes, host_bytes=10 * a.nbytes, pin=False)
    for e in (a, b):
        cache.put(e.example_id, e)
    assert cache.get("a") is not None  # a is now the most recently used: b goes first
    cache.put("c", c)
    assert list(cache.on_device) == ["a", "c"] and list(cache.on_host) == ["b"]
    assert cache.stats.spills == 1 and cache.stats.evictions == 0 and cache.stats.device_hits == 1
    reloaded = cache.get("b")  # back to the device tier, which spills a in turn
    assert reloaded is not None and same(reloaded, b)
    assert list(cache.on_device) == ["c", "b"] and list(cache.on_host) == ["a"] and cache.stats.host_hits == 1
    assert cache.device_used == 2 * a.nbytes and cache.host_used >= a.nbytes


def test_beyond_both_budgets_entries_are_dropped_and_the_newest_always_stays():
    big = entry("big", 3, prefix=40)
    cache = PrefixCache(
        CPU, device_bytes=1, host_bytes=0, pin=False
    )  # no host tier, a device budget of 1 byte
    cache.put("a", entry("a", 0))
    assert list(cache.on_device) == ["a"]  # alone over budget, kept: it is about to be used
    cache.put("big", big)
    assert list(cache.on_device) == ["big"] and not cache.on_host and cache.stats.evictions == 1
    assert cache.get("a") is None  # dropped: the engine recomputes it
    cache.clear()
    assert not cache.on_device and cache.device_used == cache.host_used == 0
