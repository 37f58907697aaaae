"""The offline tiny presets: test and demo models that ``workers.models.load_model`` builds by name.

They are the real architectures with random weights from a fixed seed and a tokenizer and processor built
locally, so they need no download; each processor carries the real checkpoint's chat template:

* ``tiny-llava``: LlavaForConditionalGeneration (CLIP tower at feature layer -2, 2-layer GELU projector),
  llava-hf/llava-1.5 prompt format;
* ``tiny-llava-next``: LlavaNextForConditionalGeneration, anyres: a base tile plus crops chosen from
  ``image_grid_pinpoints`` by the image's size (``image_sizes``), unpadded, an ``image_newline`` token per row;
  llava-hf/llava-v1.6-vicuna prompt format;
* ``tiny-qwen2-vl``: Qwen2VLForConditionalGeneration (M-RoPE), Qwen2-VL's chat template;
* ``tiny-qwen2.5-vl``: Qwen2_5_VLForConditionalGeneration (window attention in the vision tower, full attention
  in its last block, M-RoPE), Qwen2.5-VL's chat template;
* ``tiny-internvl``: transformers' InternVLForConditionalGeneration (the HF-format InternVL3 checkpoints:
  InternViT tower, pixel shuffle, Qwen2 text model), tiles of the image plus a thumbnail, ``<img>`` ...
  ``</img>``; the -hf checkpoints' chat template.

A random model has no massive activations, so the presets come with sinks planted (:func:`plant_sinks`) and
near-tied answer tokens (:func:`near_tie_answers`): BOS / ``<|im_start|>``, newline and period tokens and a few
image tokens get a massive value in :data:`TINY_SINK_DIMS`, recorded in ``config.text_config.sink_dims`` so that
``var_core.patch`` finds them. ``planted=False`` gives the bare random model.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn
from transformers import (
    CLIPVisionConfig,
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

from var_core.errors import VarsweepError
from var_core.families import backbone, decoder_layers, family_of, image_token_id
from var_core.sink_dims import record_sink_dims
from workers.processors import image_only_processor

__all__ = [
    "PRESETS",
    "TINY_SINK_DIMS",
    "PlantedSinks",
    "TinyShape",
    "LLAVA_CPU_SHAPE",
    "LLAVA_15_7B_SHAPE",
    "TINY_LLAVA_NEXT_SHAPE",
    "TINY_INTERNVL_SHAPE",
    "plant_sinks",
    "near_tie_answers",
    "build_tiny_llava",
    "build_tiny_llava_next",
    "build_tiny_qwen2_vl",
    "build_tiny_qwen2_5_vl",
    "build_tiny_internvl",
]

TINY_SINK_DIMS: tuple[int, ...] = (101, 517)
_SEED = 0


@dataclass(frozen=True)
class TinyShape:
    """Sizes of a tiny preset's text model. hidden >= 512 lets phi reach tau = 20 (phi <= sqrt(D), docs/method.md sec. 7)."""

    hidden: int = 768
    layers: int = 4
    heads: int = 12
    kv_heads: int = 4
    intermediate: int = 1536
    vocab: int = 0  # 0: the tokenizer's size; larger pads the embedding (LLaVA-1.5: 32064)
    # the vision tower's input: LLaVA (112 / 14)^2 = 64 image tokens; Qwen2-VL: images resized to 224 px -> 64;
    # LLaVA-NeXT and InternVL: the tile size (TINY_LLAVA_NEXT_SHAPE, TINY_INTERNVL_SHAPE)
    image_size: int = 112
    vision_hidden: int = 64
    vision_layers: int = 3
    vision_heads: int = 4
    vision_intermediate: int = 128


# LLaVA-1.5's shape scaled to 2 CPU cores for benchmarks: CLIP-style tower at 336 px / 14 (576 image tokens),
# a text model of 1024 hidden x 8 layers; the tower is ~4% of the text model's weights, as in LLaVA-1.5-7B.
LLAVA_CPU_SHAPE = TinyShape(
    hidden=1024,
    layers=8,
    heads=16,
    kv_heads=16,
    intermediate=2816,
    image_size=336,
    vision_hidden=256,
    vision_layers=4,
    vision_heads=4,
    vision_intermediate=1024,
)

# LLaVA-1.5-7B: Vicuna-7B text model, CLIP ViT-L/14 at 336 px (576 image tokens), feature layer -2.
LLAVA_15_7B_SHAPE = TinyShape(
    hidden=4096,
    layers=32,
    heads=32,
    kv_heads=32,
    intermediate=11008,
    vocab=32064,
    image_size=336,
    vision_hidden=1024,
    vision_layers=24,
    vision_heads=16,
    vision_intermediate=4096,
)


# The real llava-hf/llava-1.5-*-hf chat template: with a system message this renders LLaVA-1.5's vicuna_v1
# conversation "<system> USER: <image>\n<text> ASSISTANT:".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# The real Qwen/Qwen2-VL-*-Instruct chat template (without video numbering).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The HF-format InternVL checkpoints' chat template (OpenGVLab/InternVL3-*-hf): no default system turn, the image
# placeholder <IMG_CONTEXT> on its own line before the text.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Text the tiny tokenizers are trained on: the prompt wording of the supported tasks, so prompts tokenise into
# words (as with real tokenizers) and every answer option starts with a token of its own.
_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.",
    "USER: ASSISTANT: You are a helpful assistant.",
    "system\nYou are a helpful assistant.",
    "user\nIs it red?",
    "assistant\nYes",
    "Answer with the option's letter from the given choices directly.",
    "Answer the question using a single word or phrase. Please answer yes or no.",
    "Is there a dog in the image? Is the circle red or blue? Are the butterfly's feet visible?",
    "What is shown in this image? How many objects are in the image? Select from the following choices.",
    "When the provided information is insufficient, respond with 'Unanswerable'. Options: Question: Hint:",
    "Please describe this image in detail. The answer is",
    " A B C D E F (a) (b) (c) (d) A. B. C. D. Yes No yes no Open Closed left right up down",
    " red blue green yellow black white orange purple gray beige Red Blue Green Yellow Black White Orange Purple",
    " square circle triangle large small top bottom one two three four picture photo color colour shape",
    " Is the large circle in the picture red or blue? What color is the large circle? Are there any dogs?",
    " person man woman people car bus truck bicycle cat dog horse bird table chair cup bottle plate sign",
    " in on at of to with from for by the a an is are was were be this that there these those it its",
] + [" A", " B", " C", " D", " Yes", " No", " yes", " no", "\n"] * 20


def _train_tokenizer(specials: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(_CORPUS * 4, trainer)
    return raw


def _llava_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import processors

    raw = _train_tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<image>"])
    raw.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", raw.token_to_id("<s>"))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.padding_side = "left"
    tokenizer.chat_template = LLAVA_CHAT_TEMPLATE
    return tokenizer


def _chat_tokenizer(named: dict[str, str], template: str) -> PreTrainedTokenizerFast:
    """A ChatML tokenizer (Qwen2 vocabulary's specials) with the model's named special tokens."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *dict.fromkeys(named.values())]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(specials),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=named,
    )
    tokenizer.padding_side = "left"
    tokenizer.chat_template = template
    return tokenizer


def _qwen_tokenizer() -> PreTrainedTokenizerFast:
    named = {
        "vision_bos_token": "<|vision_start|>",
        "vision_eos_token": "<|vision_end|>",
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
    }
    return _chat_tokenizer(named, QWEN2_VL_CHAT_TEMPLATE)


def _internvl_tokenizer() -> PreTrainedTokenizerFast:
    # the names InternVLProcessor reads (tokenizer.start_image_token, .context_image_token, ...)
    named = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    return _chat_tokenizer(named, INTERNVL_CHAT_TEMPLATE)


def _text_kwargs(shape: TinyShape, tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    return {
        "vocab_size": max(len(tokenizer), shape.vocab),
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "max_position_embeddings": 4096,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id
        if tokenizer.bos_token_id is not None
        else tokenizer.eos_token_id,
    }


def _clip_config(shape: TinyShape) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=shape.vision_hidden,
        intermediate_size=shape.vision_intermediate,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        image_size=shape.image_size,
        patch_size=14,
        projection_dim=shape.vision_hidden,
    )


def _clip_image_processor(shape: TinyShape, cls_name: str = "CLIPImageProcessor", **kwargs: Any) -> Any:
    # without torchvision transformers falls back to the PIL backend, with a notice; ask for that backend here
    from transformers.utils import is_torchvision_available

    return getattr(transformers, cls_name if is_torchvision_available() else f"{cls_name}Pil")(
        size={"shortest_edge": shape.image_size},
        crop_size={"height": shape.image_size, "width": shape.image_size},
        **kwargs,
    )


def build_tiny_llava(
    shape: TinyShape = TinyShape(),
    *,
    seed: int = _SEED,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, ProcessorMixin]:
    """LLaVA-1.5 architecture (Llama text model, CLIP ViT tower at feature layer -2, GELU projector), random.

    Weights are initialised directly on ``device`` in ``dtype`` (a 7B-shaped model builds in seconds on a GPU).
    """
    tokenizer = _llava_tokenizer()
    config = LlavaConfig(
        text_config=LlamaConfig(**_text_kwargs(shape, tokenizer)),
        vision_config=_clip_config(shape),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=(shape.image_size // 14) ** 2,
    )
    model = _construct(LlavaForConditionalGeneration, config, seed=seed, device=device, dtype=dtype)
    processor = transformers.LlavaProcessor(
        image_processor=_clip_image_processor(shape),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, dropped by the "default" strategy
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return model, processor


# LLaVA-NeXT's base tile is half of TinyShape's image: a 112 px image takes a 2 x 2 grid of crops
TINY_LLAVA_NEXT_SHAPE = TinyShape(image_size=56)


def build_tiny_llava_next(
    shape: TinyShape = TINY_LLAVA_NEXT_SHAPE,
    *,
    seed: int = _SEED,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, ProcessorMixin]:
    """LLaVA-NeXT (1.6) architecture, random: LLaVA-1.5's parts plus anyres.

    The image is resized to the best of ``image_grid_pinpoints`` (1 x 2 to 3 x 1 tiles of the tower's size) for
    its size (``image_sizes``), cut into crops, and each crop's features are unpadded to the image's aspect ratio,
    with an ``image_newline`` token after each feature row; a base tile of the whole image comes first.
    A 112 px square image gives 16 base + 64 crop + 8 newline = 88 image tokens.
    """
    tokenizer = _llava_tokenizer()
    side = shape.image_size
    pinpoints = [[side, 2 * side], [2 * side, side], [2 * side, 2 * side], [3 * side, side], [side, 3 * side]]
    config = LlavaNextConfig(
        text_config=LlamaConfig(**_text_kwargs(shape, tokenizer)),
        vision_config=_clip_config(shape),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_grid_pinpoints=pinpoints,
    )
    model = _construct(LlavaNextForConditionalGeneration, config, seed=seed, device=device, dtype=dtype)
    processor = transformers.LlavaNextProcessor(
        image_processor=_clip_image_processor(
            shape, "LlavaNextImageProcessor", image_grid_pinpoints=pinpoints
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,  # llava-hf/llava-v1.6-vicuna-*: the same vicuna_v1 format
    )
    return model, processor


def _qwen_text_config(shape: TinyShape, tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    head_dim = shape.hidden // shape.heads
    section = [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]  # sums to head_dim / 2, as Qwen2-VL's
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": section}
    return {**_text_kwargs(shape, tokenizer), "rope_parameters": rope}


def _build_qwen_vl(
    config_cls: type,
    model_cls: type,
    processor_cls: type[ProcessorMixin],
    vision_config: dict[str, Any],
    shape: TinyShape,
    *,
    seed: int,
    device: str | torch.device,
    dtype: torch.dtype,
) -> tuple[nn.Module, ProcessorMixin]:
    """A Qwen2-VL-style model (Qwen2 text model with M-RoPE, 2 x 2 patch merger) and its processor."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = _qwen_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens}
    config = config_cls(
        text_config=_qwen_text_config(shape, tokenizer),
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = _construct(model_cls, config, seed=seed, device=device, dtype=dtype)
    pixels = (2 * shape.image_size) ** 2  # every image resized to 2 x image_size square: 8 x 8 tokens at 112
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels},
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    processor = image_only_processor(processor_cls)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,  # Qwen2.5-VL-*-Instruct ships the same template
    )
    return model, processor


def build_tiny_qwen2_vl(
    shape: TinyShape = TinyShape(),
    *,
    seed: int = _SEED,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, ProcessorMixin]:
    """Qwen2-VL architecture (Qwen2 text model with M-RoPE, Qwen2-VL vision tower and merger), random."""
    vision = {
        "depth": shape.vision_layers,
        "embed_dim": shape.vision_hidden,
        "hidden_size": shape.hidden,
        "num_heads": shape.vision_heads,
        "mlp_ratio": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    return _build_qwen_vl(
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        transformers.Qwen2VLProcessor,
        vision,
        shape,
        seed=seed,
        device=device,
        dtype=dtype,
    )


def build_tiny_qwen2_5_vl(
    shape: TinyShape = TinyShape(),
    *,
    seed: int = _SEED,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, ProcessorMixin]:
    """Qwen2.5-VL architecture, random: Qwen2-VL's text model and merger, a vision tower with window attention.

    Windows of 56 px (2 x 2 merged tokens) in every vision block but the last, which attends over the whole
    image, as Qwen2.5-VL's ``fullatt_block_indexes``; an image of 8 x 8 tokens spans 16 windows. The generation
    config carries what Qwen2.5-VL-*-Instruct's changes greedy decoding with: ``repetition_penalty`` 1.05 and
    two end tokens (``<|im_end|>``, ``<|endoftext|>``); its sampling settings are left out.
    """
    vision = {
        "depth": shape.vision_layers,
        "hidden_size": shape.vision_hidden,
        "out_hidden_size": shape.hidden,
        "intermediate_size": shape.vision_intermediate,
        "num_heads": shape.vision_heads,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [shape.vision_layers - 1],
    }
    model, processor = _build_qwen_vl(
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        transformers.Qwen2_5_VLProcessor,
        vision,
        shape,
        seed=seed,
        device=device,
        dtype=dtype,
    )
    tokenizer = processor.tokenizer
    model.generation_config.repetition_penalty = 1.05
    model.generation_config.eos_token_id = [
        tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")
    ]
    return model, processor


# InternVL's tile is half of TinyShape's image, in 7 px patches: 8 x 8 patches, 4 x 4 tokens after the pixel
# shuffle; a 112 px square image gives 2 x 2 crops and a thumbnail, 80 image tokens
TINY_INTERNVL_SHAPE = TinyShape(image_size=56)


def build_tiny_internvl(
    shape: TinyShape = TINY_INTERNVL_SHAPE,
    *,
    seed: int = _SEED,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, ProcessorMixin]:
    """InternVL architecture (transformers' InternVLForConditionalGeneration, the HF-format InternVL3), random.

    InternViT-style tower (CLS token, layer scale), pixel shuffle (downsample ratio 0.5), LayerNorm-MLP projector,
    Qwen2 text model. The image processor crops the image into up to 4 tiles by its aspect ratio and adds a
    thumbnail tile; the processor writes ``<img>`` + ``<IMG_CONTEXT>`` x tokens + ``</img>``.
    """
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    tokenizer = _internvl_tokenizer()
    patch = 7
    tokens_per_tile = (shape.image_size // patch // 2) ** 2
    config = InternVLConfig(
        text_config=Qwen2Config(**_text_kwargs(shape, tokenizer)),
        vision_config={
            "hidden_size": shape.vision_hidden,
            "intermediate_size": shape.vision_intermediate,
            "num_hidden_layers": shape.vision_layers,
            "num_attention_heads": shape.vision_heads,
            "image_size": shape.image_size,
            "patch_size": patch,
        },
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=tokens_per_tile,
        downsample_ratio=0.5,
    )
    model = _construct(InternVLForConditionalGeneration, config, seed=seed, device=device, dtype=dtype)
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": shape.image_size, "width": shape.image_size},
        crop_to_patches=True,
        min_patches=1,
        max_patches=4,
        image_mean=[0.485, 0.456, 0.406],  # ImageNet statistics, as the -hf checkpoints
        image_std=[0.229, 0.224, 0.225],
    )
    processor = image_only_processor(transformers.InternVLProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        image_seq_length=tokens_per_tile,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    return model, processor


def _construct(
    cls: type, config: Any, *, seed: int, device: str | torch.device, dtype: torch.dtype
) -> nn.Module:
    """``cls(config)`` with weights drawn from ``seed``, on ``device`` in ``dtype``; the caller's random state and
    default dtype are left as they were."""
    on_gpu = [torch.device(device)] if torch.device(device).type == "cuda" else []
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.random.fork_rng(devices=on_gpu), torch.device(device):
            torch.manual_seed(seed)
            model = cls(config)
    finally:
        torch.set_default_dtype(default_dtype)
    return model.eval()


class PlantedSinks:
    """Massive activations planted in a model's language-model input (a test and demo device).

    Adds ``magnitude * weights[i]`` in ``dims[i]`` to the input embedding of every token whose id is in
    ``token_ids`` and of the image tokens at ``image_positions`` (0-based, counted within each row's image tokens),
    before the first decoder layer; the residual stream then carries them through every layer, as the massive
    activations of real LLMs are carried (docs/method.md sec. 1). Remove with :meth:`remove`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        dims: Sequence[int],
        weights: Sequence[float],
        magnitude: float,
        token_ids: Sequence[int],
        image_positions: Sequence[int],
        attention_gain: float = 1.0,
    ) -> None:
        if len(dims) != len(weights):
            raise VarsweepError(f"plant_sinks: {len(dims)} dims but {len(weights)} weights")
        self.dims, self.token_ids, self.image_positions = (
            tuple(dims),
            tuple(token_ids),
            tuple(image_positions),
        )
        self._add = torch.zeros(model.config.get_text_config().hidden_size)
        self._add[list(dims)] = torch.tensor([magnitude * w for w in weights])
        self._image_id = image_token_id(model)
        self._pending: torch.Tensor | None = None  # [B, T] planted positions of the call in flight
        # Real massive-activation tokens draw attention (they are attention sinks): scaling the key weights of the
        # sink dimensions gives their keys a large norm, so many heads attend to them, as in real LLMs.
        self._key_weights = [layer.self_attn.k_proj.weight for layer in decoder_layers(model)]
        self._gain = attention_gain
        with torch.no_grad():
            for weight in self._key_weights:
                weight[:, list(dims)] *= attention_gain
        outer = backbone(model)
        inner = outer.language_model
        self._hooks = [
            outer.register_forward_pre_hook(self._find_positions, with_kwargs=True),
            inner.register_forward_pre_hook(self._plant, with_kwargs=True),
        ]

    def _find_positions(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            self._pending = None
            return
        image = input_ids == self._image_id
        rank = image.long().cumsum(dim=1) - 1
        planted = torch.isin(input_ids, torch.tensor(self.token_ids, device=input_ids.device))
        planted |= image & torch.isin(rank, torch.tensor(self.image_positions, device=input_ids.device))
        self._pending = planted

    def _plant(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
        planted, self._pending = self._pending, None
        embeds = kwargs.get("inputs_embeds")
        if planted is None or embeds is None or not bool(planted.any()):
            return None
        add = self._add.to(embeds.device, embeds.dtype)
        kwargs["inputs_embeds"] = embeds + planted[..., None].to(embeds.dtype) * add
        return args, kwargs

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        with torch.no_grad():
            for weight in self._key_weights:
                weight[:, list(self.dims)] /= self._gain
        self._key_weights = []


def plant_sinks(
    model: nn.Module,
    processor: ProcessorMixin,
    *,
    dims: Sequence[int] = TINY_SINK_DIMS,
    weights: Sequence[float] | None = None,
    magnitude: float = 30.0,
    text_tokens: Sequence[str] | None = None,
    image_positions: Sequence[int] = (5, 27, 44, 70),  # 70: in the whole-image tile of InternVL (80 tokens)
    attention_gain: float = 8.0,
) -> PlantedSinks:
    """Plant massive activations in ``dims`` on BOS-like, newline and period tokens and a few image tokens.

    The first dim gets the full ``magnitude``, the others a third of it, so phi approaches ~0.95 sqrt(D) on the
    sinks (real LLaVA-1.5-7B: phi ~ 50 against ~ 5 elsewhere). ``attention_gain`` scales the key weights of those
    dims in every layer so that the sinks draw attention, as real sinks do. Records ``dims`` as
    ``config.text_config.sink_dims`` (var_core.record_sink_dims) so that :func:`var_core.patch` uses them.
    """
    tokenizer = processor.tokenizer
    if text_tokens is None:
        first = tokenizer.bos_token if tokenizer.bos_token is not None else "<|im_start|>"
        text_tokens = [first, "Ċ", "."]  # byte-level BPE spells "\n" as "Ċ"
    ids = [tokenizer.convert_tokens_to_ids(t) for t in text_tokens]
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise VarsweepError(f"plant_sinks: some of {list(text_tokens)} are not tokens of this tokenizer")
    weights = tuple(weights) if weights is not None else (1.0,) + (1 / 3,) * (len(dims) - 1)
    planted = PlantedSinks(
        model,
        dims=dims,
        weights=weights,
        magnitude=magnitude,
        token_ids=ids,
        image_positions=image_positions,
        attention_gain=attention_gain,
    )
    record_sink_dims(model, dims, "planted (workers.presets.plant_sinks)")
    return planted


# Answer tokens of the option tasks, as the tiny tokenizers spell them after "ASSISTANT:" (with a space) and after
# Qwen2-VL's "assistant\n" (without).
ANSWER_TOKENS = ("ĠA", "ĠB", "ĠC", "ĠD", "ĠYes", "ĠNo", "A", "B", "C", "D", "Yes", "No")


@torch.no_grad()
def near_tie_answers(
    model: nn.Module,
    processor: ProcessorMixin,
    *,
    tokens: Sequence[str] = ANSWER_TOKENS,
    calibration: Mapping[str, torch.Tensor] | None = None,
    seed: int = 1,
) -> None:
    """Give the answer tokens' output rows a shared row plus small random differences that the final state's
    prompt-independent part does not see.

    A random LM head adds a fixed margin between two answers that dwarfs what the image or VAR changes, so a random
    model answers every question alike. Here the rows differ only in directions orthogonal to the final state of a
    calibration prompt (one forward), so answers hinge on what varies between inputs, as real models' answers do
    on hard questions; a sweep then has something to tune and VAR can change answers.
    """
    from PIL import Image

    tokenizer = processor.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    ids = [i for i in ids if i is not None and i != tokenizer.unk_token_id]
    device = next(model.parameters()).device
    if calibration is None:  # an option question in the model family's benchmark prompt format
        from workers.tasks import render_prompt

        text = "Is the circle red or blue?\nA. Red\nB. Blue\nAnswer with the option's letter from the given choices directly."
        prompt = render_prompt(text, processor=processor, family=family_of(model).name)
        calibration = processor(
            images=Image.new("RGB", (112, 112), (128, 128, 128)), text=prompt, return_tensors="pt"
        )
    inputs = {k: v.to(device) for k, v in calibration.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(next(model.parameters()).dtype)
    common = model(**inputs, output_hidden_states=True).hidden_states[-1][0, -1].float()
    common = common / common.norm()
    weight = model.get_output_embeddings().weight
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(ids), weight.shape[1], generator=generator).to(device)
    noise -= (noise @ common)[:, None] * common[None, :]
    rows = weight[ids].float()
    weight[ids] = (rows.mean(dim=0) + 0.05 * rows.std() * noise).to(weight.dtype)


PRESETS = {
    "tiny-llava": build_tiny_llava,
    "tiny-llava-next": build_tiny_llava_next,
    "tiny-qwen2-vl": build_tiny_qwen2_vl,
    "tiny-qwen2.5-vl": build_tiny_qwen2_5_vl,
    "tiny-internvl": build_tiny_internvl,
    # the benchmarks' model, for sweeps measured end to end (benchmarks/sweep_service.py): LLAVA_CPU_SHAPE
    "llava-cpu-bench": functools.partial(build_tiny_llava, LLAVA_CPU_SHAPE),
}
