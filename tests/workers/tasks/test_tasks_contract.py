"""What every task promises: the docs/tasks.md table row, frozen examples, prompts per family, strict scoring."""

from __future__ import annotations

import dataclasses
import math
import pickle

import pytest
from task_fixtures import build_task_dir

from var_core.errors import ConfigError, UnsupportedModelError, VarsweepError
from workers.tasks import (
    DataError,
    DuplicateTaskError,
    Example,
    Registry,
    ScoringError,
    Task,
    UnknownTaskError,
    get_task,
    task_names,
)
from workers.tasks._base import LLAVA_SYSTEM

# docs/tasks.md top table: group, headline metric, direction, answer mode.
TABLE = {
    "mmvp": ("vision-centric", "pair_accuracy", "maximize", "options"),
    "pope": ("hallucination", "f1", "maximize", "options"),
    "cv_bench": ("vision-centric", "overall", "maximize", "options"),
    "chair": ("hallucination", "chair_s", "minimize", "generate"),
    "mme": ("general", "total", "maximize", "options"),
    "vqav2": ("general", "accuracy", "maximize", "generate"),
    "vizwiz": ("general", "accuracy", "maximize", "generate"),
    "gqa": ("general", "accuracy", "maximize", "generate"),
    "mmhal": ("hallucination", "score", "maximize", "generate"),
}


@pytest.fixture(params=sorted(TABLE))
def loaded(request, tmp_path) -> tuple[Task, object, dict]:
    if request.param == "chair":
        request.getfixturevalue("wordnet")
    data_dir, options = build_task_dir(request.param, tmp_path / request.param)
    return get_task(request.param, data_dir, **options), data_dir, options


def some_predictions(task: Task) -> dict[str, str]:
    """A plausible answer per example: the right option, a reference answer, or a caption."""
    return {e.id: e.answer or (e.references[0] if e.references else "A dog.") for e in task.examples}


def test_registry_lists_exactly_the_table():
    assert set(task_names()) == set(TABLE)


def test_table_row(loaded):
    task, _, _ = loaded
    assert (task.group, task.metric, task.direction, task.answer_mode) == TABLE[task.name]
    expected_tokens = {"chair": 512, "mmhal": 1024}.get(task.name, 16)
    assert task.max_new_tokens == expected_tokens


def test_examples_are_frozen_and_well_formed(loaded):
    task, _, _ = loaded
    ids = [e.id for e in task.examples]
    assert len(set(ids)) == len(ids) and all(isinstance(i, str) for i in ids)
    example = task.examples[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        example.id = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        example.meta["x"] = 1  # type: ignore[index]
    for e in task.examples:
        assert isinstance(e, Example) and e.group and e.question
        if task.answer_mode == "options":
            assert isinstance(e.options, tuple) and e.answer in e.options
            assert task.parse_option(e, e.answer) == e.answer
        else:
            assert e.options is None
    image = example.image.load()
    assert image.mode == "RGB" and image.size == (8, 8)


class LlavaProcessor:
    image_token = "<image>"


class QwenProcessor:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def apply_chat_template(self, messages, *, add_generation_prompt, tokenize):
        self.calls.append((messages, add_generation_prompt, tokenize))
        return (
            "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
            + messages[0]["content"][1]["text"]
        )


def test_prompts_per_family(loaded):
    task, _, _ = loaded
    example = task.examples[0]
    text = task.text(example)
    assert (
        task.build_prompt(example, LlavaProcessor(), "llava")
        == f"{LLAVA_SYSTEM} USER: <image>\n{text} ASSISTANT:"
    )
    qwen = QwenProcessor()
    assert task.build_prompt(example, qwen, "qwen2_vl").endswith(text)
    messages, add_generation_prompt, tokenize = qwen.calls[0]
    assert messages == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    assert add_generation_prompt is True and tokenize is False
    with pytest.raises(UnsupportedModelError, match="family 'blip'"):
        task.build_prompt(example, qwen, "blip")


def test_llava_prompt_uses_the_processors_image_token(loaded):
    task, _, _ = loaded
    processor = LlavaProcessor()
    processor.image_token = "<img>"
    assert "USER: <img>\n" in task.build_prompt(task.examples[0], processor, "llava")
    assert "USER: <image>\n" in task.build_prompt(task.examples[0], object(), "llava")


def test_score_has_headline_and_stderr_and_is_deterministic(loaded):
    task, _, _ = loaded
    predictions = some_predictions(task)
    frozen = dict(predictions)
    first = task.score(predictions)
    assert predictions == frozen
    assert task.metric in first and f"{task.metric}_stderr" in first
    assert all(isinstance(v, float) for v in first.values())
    second = task.score(predictions)
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] or (math.isnan(first[k]) and math.isnan(second[k])) for k in first)


def test_score_names_missing_and_unknown_ids(loaded):
    task, _, _ = loaded
    predictions = some_predictions(task)
    missing_id = task.examples[-1].id
    del predictions[missing_id]
    with pytest.raises(ScoringError, match=f"no prediction: '{missing_id}'"):
        task.score(predictions)
    predictions = {**some_predictions(task), "no-such-id": "A"}
    with pytest.raises(ScoringError, match="not examples of this task: 'no-such-id'"):
        task.score(predictions)
    predictions = {**some_predictions(task), task.examples[0].id: None}
    with pytest.raises(ScoringError, match="must be strings"):
        task.score(predictions)


def test_limit_keeps_whole_first_groups(loaded):
    task, data_dir, options = loaded
    first = task.groups[0]
    limited = get_task(task.name, data_dir, limit=1, **options)
    assert limited.groups == (first,)
    assert [e.id for e in limited.examples] == [e.id for e in task.examples if e.group == first]
    with pytest.raises(ConfigError, match="limit=0"):
        get_task(task.name, data_dir, limit=0, **options)


def test_select_restricts_to_groups(loaded):
    task, _, _ = loaded
    last = task.groups[-1]
    assert task.select([last]).groups == (last,)
    with pytest.raises(ConfigError, match="unknown group"):
        task.select(["no-such-group"])


def test_check_images_names_the_first_bad_file(loaded):
    task, _, _ = loaded
    task.check_images()
    bad = task.examples[-1].image
    if bad.row is not None:
        pytest.skip("images live inside a parquet file")
    bad.path.write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot open image") as caught:
        task.check_images()
    assert str(bad.path) in str(caught.value) and "\n" not in str(caught.value)
    bad.path.unlink()
    with pytest.raises(DataError, match=f"{bad.path}: image file not found"):
        task.check_images()


def test_get_task_and_score_need_no_images(loaded):
    task, data_dir, options = loaded
    for example in task.examples:
        if example.image.row is None and example.image.path.exists():
            example.image.path.unlink()
    again = get_task(task.name, data_dir, **options)
    assert again.score(some_predictions(again))


@pytest.mark.parametrize("name", ["mmvp", "mme", "mmhal"])
def test_split_is_rejected_where_there_is_none(name, tmp_path):
    data_dir, options = build_task_dir(name, tmp_path)
    with pytest.raises(ConfigError, match="has no split 'x'"):
        get_task(name, data_dir, split="x", **options)


def test_unknown_task_suggests_near_names():
    with pytest.raises(UnknownTaskError) as caught:
        get_task("popee", "/nonexistent")
    error = caught.value
    assert isinstance(error, VarsweepError) and isinstance(error, KeyError) and isinstance(error, ValueError)
    assert str(error).startswith("unknown task 'popee'. Did you mean: pope?")
    assert "mmvp" in str(error)


def test_registry_rejects_duplicates_and_loads_lazily():
    registry: Registry = Registry("task")
    registry.register("json", "json:dumps")
    with pytest.raises(DuplicateTaskError, match="'json' is already registered"):
        registry.register("json", "json:loads")
    import json

    assert registry.get("json") is json.dumps
    with pytest.raises(UnknownTaskError, match="Did you mean: json"):
        registry.get("jsn")


def test_get_task_needs_an_existing_data_dir(tmp_path):
    with pytest.raises(
        DataError, match="task 'pope' needs data_dir.*hub downloads are known for cv_bench, mmvp"
    ):
        get_task("pope")
    with pytest.raises(DataError, match="is not a folder"):
        get_task("mmvp", tmp_path / "absent")


def test_tasks_pickle_for_workers(loaded):
    """Tasks travel to Ray workers: a plain pickle round trip keeps examples, prompts and scores."""
    task, _, _ = loaded
    again = pickle.loads(pickle.dumps(task))
    assert again.examples == task.examples and dict(again.metadata) == dict(task.metadata)
    assert again.text(again.examples[0]) == task.text(task.examples[0])
    predictions = some_predictions(task)
    assert again.score(predictions).keys() == task.score(predictions).keys()


def test_hub_dataset_is_downloaded_then_read_by_the_same_loader(tmp_path, monkeypatch):
    """``hf://`` goes through huggingface_hub.snapshot_download (here answered from a local copy: no network)."""
    import huggingface_hub
    from task_fixtures import write_cv_bench

    copy = write_cv_bench(tmp_path / "hub-copy", fmt="parquet")
    asked = []

    def fake_download(repo_id, *, repo_type, allow_patterns):
        asked.append((repo_id, repo_type, tuple(allow_patterns)))
        return str(copy)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    from_hub = get_task("cv_bench", data_dir="hf://nyu-visionx/CV-Bench")
    assert asked[0][:2] == ("nyu-visionx/CV-Bench", "dataset") and "test_2d.parquet" in asked[0][2]
    local = get_task("cv_bench", data_dir=copy)
    assert [e.id for e in from_hub.examples] == [e.id for e in local.examples]
    get_task("cv_bench")  # no data_dir: the task's default dataset
    assert asked[1][0] == "nyu-visionx/CV-Bench"


def test_hub_unreachable_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="cannot download dataset 'lmms-lab-eval/MMVP' for task 'mmvp'"):
        get_task("mmvp", data_dir="hf://lmms-lab-eval/MMVP")
