"""Task, Example and ImageRef: a benchmark is data + prompt + scorer (STYLE.md house rule 8).

A :class:`Task` holds its examples, a function that writes the task's text for one example, a pure scorer over
all examples, and (option tasks) the parser that maps a raw answer to one of the example's options. The prompt
wrapper per model family lives here, so every task shares it (LLaVA:llava/conversation.py ``conv_vicuna_v1``;
Qwen2-VL and InternVL: the processor's own chat template).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from var_core.errors import ConfigError, UnsupportedModelError
from workers.tasks._errors import DataError, ScoringError

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "ImageRef",
    "Example",
    "TaskSpec",
    "Task",
    "render_prompt",
    "keep_first_groups",
    "check_split",
    "check_limit",
    "LLAVA_SYSTEM",
    "FAMILIES",
    "TASK_GROUPS",
]

FAMILIES: tuple[str, ...] = ("llava", "qwen2_vl", "internvl")
TASK_GROUPS: tuple[str, ...] = ("general", "hallucination", "vision-centric")
DIRECTIONS: tuple[str, ...] = ("maximize", "minimize")
ANSWER_MODES: tuple[str, ...] = ("options", "generate")

# LLaVA:llava/conversation.py conv_vicuna_v1.system
LLAVA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


class FrozenMapping(Mapping[str, Any]):
    """A read-only mapping that pickles (``types.MappingProxyType`` does not; tasks travel to workers)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"FrozenMapping({self._data!r})"

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        return FrozenMapping, (self._data,)


@dataclass(frozen=True)
class ImageRef:
    """A lazily read image: a file, or the cell ``column`` of row ``row`` (from 1) of a parquet file."""

    path: Path
    row: int | None = None
    column: str = "image"

    def describe(self) -> str:
        return str(self.path) if self.row is None else f"{self.path} row {self.row} column {self.column!r}"

    def load(self, max_pixels: int | None = None) -> Image.Image:
        """The image in RGB, fully decoded.

        ``max_pixels`` refuses a larger image from its header, before anything is decoded (a decompression bomb: a
        small file that decodes to gigabytes); PIL's own bomb check applies as well.

        Raises:
            DataError: the file (or cell) is missing, not an image, too large, or truncated; the message names it.
        """
        import warnings

        from PIL import Image, UnidentifiedImageError

        try:
            with warnings.catch_warnings():
                # the limit here says it in one line
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(self._source()) as image:
                    width, height = image.size
                    if max_pixels is not None and width * height > max_pixels:
                        raise DataError(
                            f"{self.describe()}: {width}x{height} is {width * height} pixels, more than the limit "
                            f"of {max_pixels} (VARSWEEP_MAX_IMAGE_PIXELS)"
                        )
                    image.load()
                    return image.convert("RGB")
        except DataError:
            raise
        except Image.DecompressionBombError as e:
            raise DataError(f"{self.describe()}: refused as a decompression bomb ({e})") from e
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f"{self.describe()}: cannot open image: {e}") from e

    def _source(self) -> Any:
        if self.row is None:
            if not self.path.is_file():
                raise DataError(f"{self.path}: image file not found")
            return self.path
        import io

        from workers.tasks._io import read_parquet_cell

        cell = read_parquet_cell(self.path, row=self.row, column=self.column)
        data = cell.get("bytes") if isinstance(cell, dict) else cell  # Hugging Face Image = {bytes, path}
        if not isinstance(data, bytes) or not data:
            raise DataError(f"{self.describe()}: no image bytes in the cell")
        return io.BytesIO(data)


@dataclass(frozen=True)
class Example:
    """One question about one image.

    ``group`` is the task's group key (MMVP pair, POPE image, ...): shards, limits and held-out splits never
    cut a group. ``options`` are the answer strings whose first-token logits an option task compares (e.g.
    ``("A", "B")`` or ``("Yes", "No")``); ``answer`` is the correct option or answer string, ``references``
    any further ground truth (VQA's ten answers, CHAIR's ground-truth objects).
    """

    id: str
    group: str
    question: str
    image: ImageRef
    options: tuple[str, ...] | None = None
    answer: str | None = None
    references: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta", FrozenMapping(self.meta))


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """What a task is, independent of its data: the docs/tasks.md table row."""

    name: str
    group: str
    metric: str
    direction: str
    answer_mode: str
    max_new_tokens: int
    # the other metrics of the scorer that are better when lower (the headline's own direction is ``direction``)
    lower_is_better: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for attr, allowed in (
            ("group", TASK_GROUPS),
            ("direction", DIRECTIONS),
            ("answer_mode", ANSWER_MODES),
        ):
            if getattr(self, attr) not in allowed:
                raise ConfigError(f"task {self.name}: {attr}={getattr(self, attr)!r} is not one of {allowed}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ConfigError(f"task {self.name}: max_new_tokens={self.max_new_tokens!r} must be an int")
        if self.max_new_tokens < 1:
            raise ConfigError(f"task {self.name}: max_new_tokens={self.max_new_tokens} must be >= 1")


Scorer = Callable[[Sequence[Example], Mapping[str, str]], dict[str, float]]
OptionParser = Callable[[Example, str], "str | None"]


@dataclass(frozen=True, kw_only=True, eq=False)
class Task:
    """A loaded benchmark: examples, prompt text, scorer. Build it with ``workers.tasks.get_task``.

    ``score(predictions)`` maps example id -> raw answer text (for option tasks: the chosen option's text,
    e.g. ``"A"`` or ``"Yes"``; for generation tasks: the decoded text) to metrics. It is pure and
    deterministic, needs exactly one prediction per example, and counts answers it cannot parse as wrong
    (``invalid_rate`` says how many).
    """

    spec: TaskSpec
    examples: tuple[Example, ...]
    text: Callable[[Example], str]
    scorer: Scorer
    option_parser: OptionParser | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.examples:
            raise DataError(f"task {self.spec.name}: no examples")
        if (self.spec.answer_mode == "options") != (self.option_parser is not None):
            raise ConfigError(f"task {self.spec.name}: an option task needs an option parser, and only it")
        object.__setattr__(self, "metadata", FrozenMapping(self.metadata))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def group(self) -> str:
        """The task's rho group: "general", "hallucination" or "vision-centric"."""
        return self.spec.group

    @property
    def metric(self) -> str:
        """The headline metric (a key of :meth:`score`'s result)."""
        return self.spec.metric

    @property
    def direction(self) -> str:
        """``"maximize"`` or ``"minimize"``: how the headline metric is optimised."""
        return self.spec.direction

    @property
    def answer_mode(self) -> str:
        """``"options"`` (first-token logits of ``Example.options``) or ``"generate"``."""
        return self.spec.answer_mode

    @property
    def max_new_tokens(self) -> int:
        return self.spec.max_new_tokens

    @property
    def groups(self) -> tuple[str, ...]:
        """Group keys in the order they first appear."""
        return tuple(dict.fromkeys(example.group for example in self.examples))

    def metrics(self) -> tuple[str, ...]:
        """The names a sweep may optimise: the scorer's metrics, less standard errors, counts and descriptions
        (``invalid_rate``, POPE's ``yes_ratio`` and confusion cells)."""
        answers = {e.id: (e.options[0] if e.options else "") for e in self.examples}
        skipped = {"invalid_rate", "yes_ratio", "tp", "fp", "tn", "fn"}
        return tuple(
            n
            for n in self.score(answers)
            if not n.endswith("_stderr") and n.rsplit("/", 1)[-1] not in skipped
        )

    def direction_of(self, metric: str) -> str:
        """``"maximize"`` or ``"minimize"``: how ``metric`` is optimised.

        Raises:
            ConfigError: ``metric`` is not one of :meth:`metrics`; the message lists them.
        """
        names = self.metrics()
        if metric not in names:
            raise ConfigError(
                f"task {self.name} has no metric {metric!r} to optimise; it has {', '.join(names)}"
            )
        if metric == self.metric:
            return self.direction
        return "minimize" if metric.rsplit("/", 1)[-1] in self.spec.lower_is_better else "maximize"

    def check_text(self, forbidden: Iterable[str], source: str) -> None:
        """Refuse questions that contain any of ``forbidden`` (the model's image placeholders: the processor would
        count them as images).

        Raises:
            DataError: one line naming ``source`` (the data), the example and the string.
        """
        strings = [s for s in forbidden if s]
        for example in self.examples:
            text = self.text(example)
            for string in strings:
                if string in text:
                    raise DataError(
                        f"{source}: example {example.id}: the question contains {string!r}, the model's image "
                        "placeholder; remove it from the data"
                    )

    def build_prompt(self, example: Example, processor: Any, family: str) -> str:
        """The full prompt text for ``processor``, image placeholder included (see :func:`render_prompt`)."""
        return render_prompt(self.text(example), processor=processor, family=family)

    def parse_option(self, example: Example, raw: str) -> str | None:
        """The option of ``example`` that ``raw`` answers, or ``None`` when unparseable (option tasks)."""
        if self.option_parser is None:
            raise ConfigError(f"task {self.name} answers by generation; it has no options to parse")
        return self.option_parser(example, raw)

    def score(self, predictions: Mapping[str, str]) -> dict[str, float]:
        """Metrics of ``predictions`` (example id -> raw answer); see the class docstring.

        Raises:
            ScoringError: ids of the task have no prediction, or predictions name ids the task does not have.
        """
        check_predictions(self.examples, predictions)
        return self.scorer(self.examples, predictions)

    def select(self, groups: Iterable[str]) -> Task:
        """The same task restricted to ``groups`` (in the task's order); unknown group keys are an error."""
        wanted = set(groups)
        unknown = wanted - set(self.groups)
        if unknown:
            raise ConfigError(f"task {self.name}: unknown group(s) {_preview(sorted(unknown))}")
        return replace(self, examples=tuple(e for e in self.examples if e.group in wanted))

    def check_images(self, max_pixels: int | None = None) -> None:
        """Open every image once, in example order (see :meth:`ImageRef.load` for ``max_pixels``).

        Raises:
            DataError: one line naming the first image that is missing, too large or cannot be decoded.
        """
        seen: set[ImageRef] = set()
        for example in self.examples:
            if example.image not in seen:
                seen.add(example.image)
                example.image.load(max_pixels)


def render_prompt(text: str, *, processor: Any, family: str) -> str:
    """Wrap a task's text in the model family's conversation, with the image placeholder before the text.

    * ``"llava"`` (LLaVA-1.5 / LLaVA-NeXT): vicuna_v1, ``"{system} USER: {image}\\n{text} ASSISTANT:"`` with
      the processor's ``image_token`` (``"<image>"`` when it has none) (LLaVA:llava/conversation.py,
      model_vqa_loader.py).
    * ``"qwen2_vl"`` (Qwen2-VL / Qwen2.5-VL) and ``"internvl"`` (the HF-format InternVL checkpoints): the
      processor's chat template over one user turn holding an image and the text, with the generation prompt.

    Raises:
        UnsupportedModelError: ``family`` is not one of :data:`FAMILIES`.
    """
    if family == "llava":
        image_token = getattr(processor, "image_token", None) or "<image>"
        return f"{LLAVA_SYSTEM} USER: {image_token}\n{text} ASSISTANT:"
    if family in ("qwen2_vl", "internvl"):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    raise UnsupportedModelError(f"no prompt format for model family {family!r}; known: {', '.join(FAMILIES)}")


def check_split(task: str, split: str | None, allowed: Sequence[str]) -> tuple[str, ...]:
    """The splits to load: all of ``allowed`` for ``None``, else ``(split,)`` if it is allowed."""
    if split is None:
        return tuple(allowed)
    if split not in allowed:
        choices = ", ".join(allowed) if allowed else "none (pass split=None)"
        raise ConfigError(f"task {task} has no split {split!r}; splits: {choices}")
    return (split,)


def check_limit(limit: int | None) -> int | None:
    """``limit`` if it is None or a positive int, else a ConfigError."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit={limit!r} must be a positive int (a number of groups) or None")
    return limit


def keep_first_groups(examples: Sequence[Example], limit: int | None) -> tuple[Example, ...]:
    """The examples of the first ``limit`` groups (all when ``None``), in their original order."""
    if check_limit(limit) is None:
        return tuple(examples)
    kept = set(list(dict.fromkeys(e.group for e in examples))[:limit])
    return tuple(e for e in examples if e.group in kept)


def check_predictions(examples: Sequence[Example], predictions: Mapping[str, str]) -> None:
    """Exactly one string prediction per example id; errors name the offending ids."""
    ids = [e.id for e in examples]
    missing = [i for i in ids if i not in predictions]
    if missing:
        raise ScoringError(f"{len(missing)} example id(s) have no prediction: {_preview(missing)}")
    extra = sorted(set(predictions) - set(ids))
    if extra:
        raise ScoringError(f"{len(extra)} prediction id(s) are not examples of this task: {_preview(extra)}")
    wrong = [i for i in ids if not isinstance(predictions[i], str)]
    if wrong:
        raise ScoringError(f"predictions must be strings; not for id(s) {_preview(wrong)}")


def _preview(ids: Sequence[str], n: int = 10) -> str:
    shown = ", ".join(repr(i) for i in ids[:n])
    return shown + (f", ... ({len(ids) - n} more)" if len(ids) > n else "")
