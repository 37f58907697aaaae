"""Synthetic benchmark folders in real on-disk formats, for demos, tests and benchmarks (labelled as synthetic).

The images are generated shapes; the questions ask about them honestly (the colour of the large circle), so a
real model could answer them. Nothing here pretends to be benchmark data.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

__all__ = ["write_mmvp_folder", "write_gqa_folder", "COLOURS"]

COLOURS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple")


def _circle_image(rng: random.Random, colour: str, size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), rng.choice(["white", "gray", "beige", "lightblue"]))
    draw = ImageDraw.Draw(image)
    r = rng.randint(size // 6, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour, outline="black")
    for _ in range(3):  # small distractors
        x, y, s = rng.randint(0, size - 8), rng.randint(0, size - 8), rng.randint(3, 8)
        draw.rectangle((x, y, x + s, y + s), fill=rng.choice(COLOURS))
    return image


def write_mmvp_folder(folder: str | Path, *, pairs: int, size: int = 112, seed: int = 0) -> Path:
    """An MMVP-format folder: ``Questions.csv`` (real header, ``lndex`` typo included) + ``MMVP Images/{i}.jpg``.

    Each pair asks one question about two images whose answers differ, as MMVP's pairs do.
    """
    folder = Path(folder)
    images = folder / "MMVP Images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with open(folder / "Questions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["lndex", "Question", "Options", "Correct Answer"])
        for pair in range(pairs):
            a, b = rng.sample(COLOURS, 2)
            question = f"Is the large circle in the picture {a} or {b}?"
            for k, colour in enumerate((a, b)):
                index = 2 * pair + k + 1
                _circle_image(rng, colour, size).save(images / f"{index}.jpg", quality=90)
                options = f"(a) {a.capitalize()} (b) {b.capitalize()}"
                writer.writerow([index, question, options, "(a)" if k == 0 else "(b)"])
    return folder


def write_gqa_folder(folder: str | Path, *, questions: int, size: int = 112, seed: int = 0) -> Path:
    """A GQA-format folder (``testdev_balanced_questions.json`` + ``images/``): a generation task."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    entries = {}
    for i in range(questions):
        colour = rng.choice(COLOURS)
        image_id = f"syn{i:04d}"
        _circle_image(rng, colour, size).save(folder / "images" / f"{image_id}.jpg", quality=90)
        entries[f"q{i:04d}"] = {
            "imageId": image_id,
            "question": "What color is the large circle?",
            "answer": colour,
        }
    (folder / "testdev_balanced_questions.json").write_text(json.dumps(entries, indent=1))
    return folder
