"""How sink dimensions are found, and that the way they were found is said (docs/method.md sec. 1)."""

from __future__ import annotations

import warnings

import pytest
from torch import nn
from transformers import LlamaConfig, LlavaConfig, Qwen2_5_VLConfig

from var_core import SINK_DIMS, SinkDimsAssumedWarning, SinkDimsError, find_sink_dims, record_sink_dims
from workers.models import TINY_SINK_DIMS, load_model, model_sink_dims

LLAMA_2_7B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 11008,
}


class ConfigOnly(nn.Module):
    """A model as far as sink dims go: only its config is read (no 7B weights)."""

    def __init__(self, config, name: str = "") -> None:
        super().__init__()
        config._name_or_path = name
        self.config = config


def test_hub_id_in_the_table_says_so_without_warning():
    model = ConfigOnly(LlavaConfig(text_config=LlamaConfig(**LLAMA_2_7B)), "llava-hf/llava-1.5-7b-hf")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = find_sink_dims(model)
    assert found.dims == SINK_DIMS["llama-2-7b"] and not found.assumed
    assert found.source == "hub id llava-hf/llava-1.5-7b-hf -> llama-2-7b (docs/method.md sec. 1)"


def test_shape_only_match_warns_and_names_the_assumption():
    """A Qwen2.5-VL-7B has Qwen2-VL-7B's text shape: its dims are an assumption, and it is said out loud."""
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 3584,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "intermediate_size": 18944,
        }
    )
    model = ConfigOnly(config, "Qwen/Qwen2.5-VL-7B-Instruct")
    with pytest.warns(
        SinkDimsAssumedWarning, match=r"ASSUMED for Qwen/Qwen2.5-VL-7B-Instruct: .* shape of qwen2-7b"
    ):
        found = find_sink_dims(model)
    assert found.dims == SINK_DIMS["qwen2-7b"] and found.assumed
    assert found.source.startswith(
        "assumed: the text model of Qwen/Qwen2.5-VL-7B-Instruct has qwen2-7b's shape"
    )


def test_given_and_recorded_dims_win_and_keep_their_source():
    model = ConfigOnly(LlavaConfig(text_config=LlamaConfig(**LLAMA_2_7B)), "some/llava-finetune")
    assert find_sink_dims(model, [7, 9]).source == "given"
    record_sink_dims(model, [11], "discovered: median over 6 samples")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # recorded dims: no shape guess, no warning
        found = find_sink_dims(model)
    assert found.dims == (11,) and found.source == "discovered: median over 6 samples"
    with pytest.raises(SinkDimsError, match="out of range for hidden size 4096"):
        find_sink_dims(model, [4096])


def test_unknown_model_asks_for_dims():
    model = ConfigOnly(
        LlavaConfig(text_config=LlamaConfig(hidden_size=256, num_hidden_layers=2)), "some/model"
    )
    with pytest.raises(SinkDimsError, match="no sink dimensions known for some/model.*record_sink_dims"):
        find_sink_dims(model)


def test_load_model_takes_given_or_discovered_dims():
    """load_model(sink_dims=...) is what --sink-dims / --discover-sink-dims call: given dims are recorded as such;
    discovery on a preset finds the planted dims and says how."""
    model, _ = load_model("tiny-internvl", device="cpu", sink_dims=[3, 4])
    assert model_sink_dims(model).dims == (3, 4) and model_sink_dims(model).source == "given"
    model, _ = load_model("tiny-internvl", device="cpu", sink_dims="discover")
    found = model_sink_dims(model)
    assert set(found.dims) == set(TINY_SINK_DIMS)
    assert found.source.startswith("discovered: median over 6 (prompt, layer>=2) samples")
    with pytest.raises(SinkDimsError, match="give dimensions"):
        load_model("tiny-internvl", device="cpu", sink_dims="auto")
