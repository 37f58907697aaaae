"""Regenerate this synthetic MMVP-format sample: ``Questions.csv`` and ``MMVP Images/{1..20}.jpg``.

Usage: ``python examples/mmvp-sample/make_sample.py [OUT_DIR]`` (default: the folder of this script).

Ten pairs of simple PIL drawings; in each pair the two images differ only in the property the shared question
asks about, so the two rows have opposite answers, as in MMVP. Everything is drawn from fixed coordinates and
colours (no randomness), so the output is the same on every run.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 112
LIGHT, DARK = (235, 235, 225), (30, 30, 40)
RED, BLUE, GREEN, ORANGE, BLACK = (210, 40, 40), (40, 70, 200), (40, 150, 60), (240, 150, 30), (20, 20, 20)

Draw = Callable[[ImageDraw.ImageDraw], None]


def circle(colour: tuple[int, int, int], *, fill: bool = True) -> Draw:
    return lambda d: d.ellipse((28, 28, 84, 84), fill=colour if fill else None, outline=colour, width=4)


def square_at(x: int) -> Draw:
    return lambda d: d.rectangle((x, 40, x + 32, 72), fill=GREEN)


def dots(n: int) -> Draw:
    def draw(d: ImageDraw.ImageDraw) -> None:
        for i in range(n):
            x = 20 + i * 30
            d.ellipse((x, 46, x + 18, 64), fill=BLACK)

    return draw


def triangle(up: bool) -> Draw:
    points = [(56, 24), (24, 88), (88, 88)] if up else [(56, 88), (24, 24), (88, 24)]
    return lambda d: d.polygon(points, fill=ORANGE)


def bar(horizontal: bool) -> Draw:
    box = (16, 48, 96, 64) if horizontal else (48, 16, 64, 96)
    return lambda d: d.rectangle(box, fill=BLUE)


def small_square(inside: bool) -> Draw:
    def draw(d: ImageDraw.ImageDraw) -> None:
        d.ellipse((8, 8, 72, 72), outline=BLACK, width=3)
        x, y = (32, 32) if inside else (84, 84)
        d.rectangle((x, y, x + 14, y + 14), fill=RED)

    return draw


def line(dashed: bool) -> Draw:
    def draw(d: ImageDraw.ImageDraw) -> None:
        step = 16 if dashed else 80
        for x in range(16, 96, step):
            d.line((x, 56, min(x + (8 if dashed else 80), 96), 56), fill=BLACK, width=5)

    return draw


def bigger(circle_bigger: bool) -> Draw:
    def draw(d: ImageDraw.ImageDraw) -> None:
        r_circle, half_square = (22, 8) if circle_bigger else (8, 22)
        d.ellipse((30 - r_circle, 56 - r_circle, 30 + r_circle, 56 + r_circle), fill=RED)
        d.rectangle((82 - half_square, 56 - half_square, 82 + half_square, 56 + half_square), fill=BLUE)

    return draw


def nothing(d: ImageDraw.ImageDraw) -> None:
    d.ellipse((44, 44, 68, 68), fill=GREEN)


# (question, option a, option b, drawing for answer a, drawing for answer b, background a, background b, a
# first?)
PAIRS: list[tuple[str, str, str, Draw, Draw, tuple[int, int, int], tuple[int, int, int], bool]] = [
    ("Is the circle red or blue?", "Red", "Blue", circle(RED), circle(BLUE), LIGHT, LIGHT, True),
    (
        "Is the green square on the left or on the right?",
        "Left",
        "Right",
        square_at(12),
        square_at(68),
        LIGHT,
        LIGHT,
        False,
    ),
    ("How many black dots are there?", "Two", "Three", dots(2), dots(3), LIGHT, LIGHT, True),
    (
        "Is the triangle pointing up or down?",
        "Up",
        "Down",
        triangle(True),
        triangle(False),
        LIGHT,
        LIGHT,
        False,
    ),
    (
        "Is the blue bar horizontal or vertical?",
        "Horizontal",
        "Vertical",
        bar(True),
        bar(False),
        LIGHT,
        LIGHT,
        True,
    ),
    (
        "Is the circle filled or only outlined?",
        "Filled",
        "Only outlined",
        circle(BLUE),
        circle(BLUE, fill=False),
        LIGHT,
        LIGHT,
        True,
    ),
    ("Is the background light or dark?", "Light", "Dark", nothing, nothing, LIGHT, DARK, False),
    (
        "Is the red square inside or outside the circle?",
        "Inside",
        "Outside",
        small_square(True),
        small_square(False),
        LIGHT,
        LIGHT,
        True,
    ),
    ("Is the black line solid or dashed?", "Solid", "Dashed", line(False), line(True), LIGHT, LIGHT, False),
    (
        "Which shape is larger, the circle or the square?",
        "The circle",
        "The square",
        bigger(True),
        bigger(False),
        LIGHT,
        LIGHT,
        True,
    ),
]


def render(draw: Draw, background: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), background)
    draw(ImageDraw.Draw(image))
    return image


def make_sample(out_dir: Path) -> None:
    """Write ``Questions.csv`` and ``MMVP Images/`` under ``out_dir``."""
    images = out_dir / "MMVP Images"
    images.mkdir(parents=True, exist_ok=True)
    rows = [["Index", "Question", "Options", "Correct Answer"]]
    for question, a, b, draw_a, draw_b, back_a, back_b, a_first in PAIRS:
        versions = [("(a)", draw_a, back_a), ("(b)", draw_b, back_b)]
        for answer, draw, background in versions if a_first else versions[::-1]:
            index = len(rows)
            render(draw, background).save(images / f"{index}.jpg", quality=90)
            rows.append([str(index), question, f"(a) {a} (b) {b}", answer])
    with (out_dir / "Questions.csv").open("w", newline="", encoding="utf-8") as stream:
        csv.writer(stream, lineterminator="\n").writerows(rows)


if __name__ == "__main__":
    make_sample(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
