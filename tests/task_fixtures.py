"""Writers of small benchmark folders in each task's real on-disk format (docs/tasks.md)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

# POPE's real label files (MIT licence, tests/data/pope/LICENSE), in the repository so that a clone tests alone.
POPE_DIR = Path(__file__).resolve().parent / "data" / "pope"


def image_bytes(colour: tuple[int, int, int] = (200, 30, 30), fmt: str = "JPEG") -> bytes:
    stream = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(stream, format=fmt)
    return stream.getvalue()


def write_image(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(colour, "PNG" if path.suffix == ".png" else "JPEG"))
    return path


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_parquet(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(list(rows)), path, row_group_size=2)  # several row groups on purpose
    return path


def hf_image(colour: tuple[int, int, int] = (200, 30, 30)) -> dict[str, Any]:
    """A Hugging Face ``Image`` cell: ``{"bytes", "path"}``."""
    return {"bytes": image_bytes(colour), "path": None}


# ---- MMVP
# -------------------------------------------------------------------------------------------------------

MMVP_ROWS = [  # (question, options, answer): pair 1 rows 1-2, pair 2 rows 3-4
    ("Is the door open?", "(a) Open (b) Closed", "(a)"),
    ("Is the door open?", "(a) Open (b) Closed", "(b)"),
    ("Is the dog facing left?", "(a) Yes (b) No", "(b)"),
    ("Is the dog facing left?", "(a) Yes (b) No", "(a)"),
]


def write_mmvp(root: Path, rows: Sequence[Sequence[str]] = MMVP_ROWS, *, header: str = "Index") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "Questions.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow([header, "Question", "Options", "Correct Answer"])
        for index, row in enumerate(rows, start=1):
            writer.writerow([str(index), *row])
            write_image(root / "MMVP Images" / f"{index}.jpg", (index * 40 % 256, 80, 80))
    return root


# ---- POPE
# -------------------------------------------------------------------------------------------------------


def pope_record(question_id: int, image_id: int, obj: str, label: str) -> dict[str, Any]:
    return {
        "question_id": question_id,
        "image": f"COCO_val2014_{image_id:012d}.jpg",
        "text": f"Is there a {obj} in the image?",
        "label": label,
    }


def write_pope(root: Path, splits: Mapping[str, Sequence[Mapping[str, Any]]], *, images: bool = True) -> Path:
    for split, records in splits.items():
        write_jsonl(root / f"coco_pope_{split}.json", records)
        if images:
            for record in records:
                write_image(root / "val2014" / record["image"])
    return root


# ---- CV-Bench
# ---------------------------------------------------------------------------------------------------


def cv_row(
    idx: int, source: str, choices: Sequence[str], answer: str, *, kind: str | None = None
) -> dict[str, Any]:
    kind = kind or ("3D" if source == "Omni3D" else "2D")
    options = "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
    return {
        "idx": idx,
        "type": kind,
        "task": "Depth" if kind == "3D" else "Count",
        "question": f"Question {idx}?",
        "choices": list(choices),
        "answer": answer,
        "prompt": f"Question {idx}? Select from the following choices.\n{options}",
        "filename": f"img/{kind}/{source.lower()}_{idx}.png",
        "source": source,
        "source_dataset": source,
        "source_filename": f"{idx}.png",
        "target_class": None,
        "target_size": None,
        "bbox": None,
    }


# Unequal sources (3 ADE20K, 2 COCO, 2 Omni3D), 2-choice and 4-choice rows.
CV_ROWS = [
    cv_row(0, "ADE20K", ["3", "2", "1", "0"], "(C)"),
    cv_row(1, "ADE20K", ["left", "right"], "(A)"),
    cv_row(2, "ADE20K", ["1", "2", "3", "4"], "(D)"),
    cv_row(3, "COCO", ["above", "below"], "(B)"),
    cv_row(6, "COCO", ["1", "2", "3", "4"], "(A)"),
    cv_row(4, "Omni3D", ["lamp", "chair"], "(A)"),
    cv_row(5, "Omni3D", ["table", "sofa"], "(B)"),
]


def write_cv_bench(root: Path, rows: Sequence[Mapping[str, Any]] = CV_ROWS, *, fmt: str = "jsonl") -> Path:
    for kind in ("2D", "3D"):
        part = [r for r in rows if r["type"] == kind]
        if fmt == "jsonl":
            write_jsonl(root / f"test_{kind.lower()}.jsonl", part)
            for row in part:
                write_image(root / row["filename"])
        else:
            write_parquet(root / f"test_{kind.lower()}.parquet", [{**r, "image": hf_image()} for r in part])
    return root


# ---- CHAIR
# ------------------------------------------------------------------------------------------------------

COCO_CATEGORIES = [
    {"id": 1, "name": "person"},
    {"id": 18, "name": "dog"},
    {"id": 22, "name": "elephant"},
    {"id": 58, "name": "hot dog"},
    {"id": 62, "name": "chair"},
    {"id": 70, "name": "toilet"},
    {"id": 67, "name": "dining table"},
]


def write_coco(
    root: Path, images: Mapping[int, tuple[Sequence[int], Sequence[str]]], *, train: bool = True
) -> Path:
    """``instances_val2014.json`` / ``captions_val2014.json`` for ``{image_id: (category ids, captions)}``."""
    annotations, captions = [], []
    for image_id, (categories, texts) in images.items():
        annotations += [
            {"id": len(annotations) + 1, "image_id": image_id, "category_id": c} for c in categories
        ]
        captions += [{"id": len(captions) + 1, "image_id": image_id, "caption": t} for t in texts]
    image_list = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in images]
    write_json(
        root / "annotations" / "instances_val2014.json",
        {"images": image_list, "annotations": annotations, "categories": COCO_CATEGORIES},
    )
    write_json(
        root / "annotations" / "captions_val2014.json", {"images": image_list, "annotations": captions}
    )
    if train:  # OPERA loads the train2014 files too; empty ones change nothing
        write_json(
            root / "annotations" / "instances_train2014.json",
            {"images": [], "annotations": [], "categories": COCO_CATEGORIES},
        )
        write_json(root / "annotations" / "captions_train2014.json", {"images": [], "annotations": []})
    for image_id in images:
        write_image(root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
    return root


# ---- MME
# --------------------------------------------------------------------------------------------------------

SPLIT_LAYOUT = {"artwork", "celebrity", "landmark", "posters", "scene"}
COGNITION = {"commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"}


def write_mme(root: Path, categories: Mapping[str, Mapping[str, Sequence[tuple[str, str]]]]) -> Path:
    """``{category: {stem: [(question, "Yes"|"No"), ...]}}`` in MME's per-category layouts."""
    for category, items in categories.items():
        folder = root / category
        text_dir, image_dir = (
            (folder / "questions_answers_YN", folder / "images")
            if category in SPLIT_LAYOUT
            else (folder, folder)
        )
        text_dir.mkdir(parents=True, exist_ok=True)
        for stem, lines in items.items():
            (text_dir / f"{stem}.txt").write_text("".join(f"{q}\t{a}\n" for q, a in lines))
            write_image(image_dir / f"{stem}.{'png' if category in COGNITION else 'jpg'}")
    return root


# ---- VQAv2 / VizWiz / GQA
# ---------------------------------------------------------------------------------------


def write_vqav2(root: Path, questions: Sequence[tuple[int, int, str, Sequence[str]]]) -> Path:
    """``[(question_id, image_id, question, ten answers)]`` as the official v2 val2014 files."""
    write_json(
        root / "v2_OpenEnded_mscoco_val2014_questions.json",
        {
            "data_subtype": "val2014",
            "questions": [{"image_id": i, "question": q, "question_id": qid} for qid, i, q, _ in questions],
        },
    )
    write_json(
        root / "v2_mscoco_val2014_annotations.json",
        {
            "annotations": [
                {
                    "question_id": qid,
                    "image_id": i,
                    "multiple_choice_answer": answers[0],
                    "question_type": "what",
                    "answer_type": "other",
                    "answers": [
                        {"answer": a, "answer_confidence": "yes", "answer_id": n + 1}
                        for n, a in enumerate(answers)
                    ],
                }
                for qid, i, _, answers in questions
            ]
        },
    )
    for _, image_id, _, _ in questions:
        write_image(root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
    return root


def write_vizwiz(root: Path, items: Sequence[tuple[str, str, Sequence[str]]]) -> Path:
    """``[(image name, question, answers)]`` as VizWiz's ``val.json``."""
    write_json(
        root / "val.json",
        [
            {
                "image": image,
                "question": q,
                "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers],
                "answer_type": "other",
                "answerable": 1,
            }
            for image, q, answers in items
        ],
    )
    for image, _, _ in items:
        write_image(root / "val" / image)
    return root


def write_gqa(root: Path, items: Mapping[str, tuple[str, str, str]]) -> Path:
    """``{question_id: (image id, question, answer)}`` as ``testdev_balanced_questions.json``."""
    write_json(
        root / "testdev_balanced_questions.json",
        {
            qid: {"imageId": image, "question": q, "answer": a, "fullAnswer": f"It is {a}."}
            for qid, (image, q, a) in items.items()
        },
    )
    for image, _, _ in items.values():
        write_image(root / "images" / f"{image}.jpg")
    return root


# ---- MMHal
# ------------------------------------------------------------------------------------------------------

MMHAL_TYPES = (
    "attribute",
    "adversarial",
    "comparison",
    "counting",
    "relation",
    "environment",
    "holistic",
    "other",
)


def mmhal_records(n: int = 8) -> list[dict[str, Any]]:
    return [
        {
            "question_type": MMHAL_TYPES[i % 8],
            "question_topic": "animal",
            "image_id": f"img{i}",
            "image_src": f"https://example.invalid/photos/{i:04d}_o.jpg",
            "image_content": ["Dog", "Animal"],
            "question": f"What is happening in picture {i}?",
            "gt_answer": f"A dog is sitting ({i}).",
            "model_answer": "",
        }
        for i in range(n)
    ]


def rate_four(request: Any) -> str:
    """A fake MMHal judge (module level, so that the task pickles)."""
    return "The answer is fine. Rating: 4"


def write_mmhal(root: Path, records: Sequence[Mapping[str, Any]] | None = None) -> Path:
    records = mmhal_records() if records is None else records
    write_json(root / "response_template.json", list(records))
    for record in records:
        write_image(root / "images" / Path(record["image_src"]).name)
    return root


# ---- one valid folder per task, for the contract tests
# ------------------------------------------------------------


def build_task_dir(name: str, root: Path) -> tuple[Path, dict[str, Any]]:
    """A small valid data folder for task ``name`` and the ``get_task`` options it needs."""
    if name == "mmvp":
        return write_mmvp(root), {}
    if name == "pope":
        splits = {
            s: [
                pope_record(1, 1, "dog", "yes"),
                pope_record(2, 1, "cat", "no"),
                pope_record(3, 2, "car", "yes"),
                pope_record(4, 2, "bus", "no"),
            ]
            for s in ("random", "popular", "adversarial")
        }
        return write_pope(root, splits), {}
    if name == "cv_bench":
        return write_cv_bench(root), {}
    if name == "chair":
        return write_coco(root, {1: ([18], ["A dog on a bench."]), 2: ([1], ["A man."])}), {}
    if name == "mme":
        return write_mme(
            root,
            {
                "existence": {
                    "0001": [
                        ("Is there a dog? Please answer yes or no.", "Yes"),
                        ("Is there a cat? Please answer yes or no.", "No"),
                    ]
                },
                "code_reasoning": {
                    "0002": [
                        ("Is the output 3? Please answer yes or no.", "Yes"),
                        ("Is the output 4? Please answer yes or no.", "No"),
                    ]
                },
            },
        ), {}
    if name == "vqav2":
        return write_vqav2(
            root, [(10, 1, "What animal?", ["dog"] * 10), (11, 2, "How many?", ["2"] * 10)]
        ), {}
    if name == "vizwiz":
        return write_vizwiz(root, [("VizWiz_val_00000001.jpg", "what is this?", ["soup"] * 10)]), {}
    if name == "gqa":
        return write_gqa(root, {"201": ("n1", "What color is the car?", "red")}), {}
    if name == "mmhal":
        return write_mmhal(root), {"judge": rate_four}
    raise KeyError(name)
