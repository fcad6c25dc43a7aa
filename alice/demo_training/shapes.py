"""The demo model's world: flat shapes in named colours on named backgrounds, captioned.

Everything here is drawn by code from a seed, so the data set, the held-out combinations and
the evaluation prompts are the same on every machine.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIDE = 64  # pixels; the demo model's native size
_SUPERSAMPLE = 4  # draw 4x larger and shrink, for smooth edges like a real picture

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (245, 220, 40),
    "green": (40, 170, 60),
    "blue": (35, 80, 220),
    "purple": (140, 50, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
# Half the shape's width, in pixels at 64 px. "" is the size when a caption names none.
SIZES = {"small": 8.0, "": 12.0, "large": 17.0}
SIZE_WORDS = {"small": ("small", "tiny"), "": ("",), "large": ("large", "big")}
# Centre of the shape as a fraction of the side. "" = the middle.
POSITIONS = {
    "": (0.5, 0.5),
    "top left": (0.28, 0.28),
    "top right": (0.72, 0.28),
    "bottom left": (0.28, 0.72),
    "bottom right": (0.72, 0.72),
}
_MIDDLE = ("middle", "center")
# How a person might write the same picture; {size} may be empty, {where} too. "a" becomes
# "an" before a vowel ("an orange circle"). Every one fits the tokenizer's 16 tokens.
TEMPLATES = (
    "a {size} {colour} {shape} on a {background} background{where_comma}",
    "{size} {colour} {shape} on {background}{where_comma}",
    "a {size} {colour} {shape} {where_in} on a {background} background",
    "a picture of a {size} {colour} {shape} on {background}{where_comma}",
    "a {size} {colour} {shape} with a {background} background{where_comma}",
    "a {size} {colour} {shape} on a {background} background {where_in}",
    "{size} {colour} {shape} {where_in} with a {background} background",
)
WORDS = (
    *COLOURS,
    *SHAPES,
    *(word for words in SIZE_WORDS.values() for phrase in words for word in phrase.split()),
    *(word for place in POSITIONS for word in place.split()),
    *"a an the and in on of with picture background middle center corner".split(),
)


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    size: str = ""
    position: str = ""

    @property
    def centre(self) -> tuple[float, float]:
        x, y = POSITIONS[self.position]
        return x * SIDE, y * SIDE

    @property
    def half_width(self) -> float:
        return SIZES[self.size]

    def caption(self, template: int = 0, rng: random.Random | None = None) -> str:
        """The scene in words; `rng` picks synonyms ("big" for "large"), else the first."""
        size = SIZE_WORDS[self.size]
        size_word = rng.choice(size) if rng else size[0]
        if self.position:
            where_comma, where_in = f", {self.position}", f"in the {self.position} corner"
        else:
            where_comma, where_in = "", f"in the {rng.choice(_MIDDLE) if rng else _MIDDLE[0]}"
        text = TEMPLATES[template].format(
            size=size_word,
            colour=self.colour,
            shape=self.shape,
            background=self.background,
            where_comma=where_comma,
            where_in=where_in,
        )
        text = " ".join(text.split())  # an empty size leaves a double space
        return re.sub(r"\ba (?=[aeiou])", "an ", text)


def draw(scene: Scene, jitter: random.Random | None = None) -> Image.Image:
    """The scene as a 64x64 RGB image; `jitter` moves and scales the shape a little."""
    cx, cy = scene.centre
    half = scene.half_width
    if jitter:
        cx, cy = cx + jitter.uniform(-2, 2), cy + jitter.uniform(-2, 2)
        half *= jitter.uniform(0.9, 1.1)
    k = _SUPERSAMPLE
    image = Image.new("RGB", (SIDE * k, SIDE * k), COLOURS[scene.background])
    pen = ImageDraw.Draw(image)
    box = [(cx - half) * k, (cy - half) * k, (cx + half) * k, (cy + half) * k]
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        pen.ellipse(box, fill=fill)
    elif scene.shape == "square":
        pen.rectangle(box, fill=fill)
    else:  # triangle, point up, filling its box's width at the bottom
        pen.polygon([(cx * k, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
    return image.resize((SIDE, SIDE), Image.Resampling.BOX)


def colour_combinations() -> list[tuple[str, str, str]]:
    """Every (shape colour, shape, background colour) with two different colours."""
    return [
        (colour, shape, background)
        for colour, shape, background in itertools.product(COLOURS, SHAPES, COLOURS)
        if colour != background
    ]


def held_out_combinations() -> list[tuple[str, str, str]]:
    """24 combinations never shown in training, for the evaluation.

    Each colour is held out three times as a shape colour and three times as a background,
    each shape eight times, so the model must have learned the words, not the pictures.
    """
    names = list(COLOURS)
    return sorted(
        (colour, SHAPES[j], names[(i + offset) % len(names)])
        for i, colour in enumerate(names)
        for j, offset in enumerate((1, 3, 6))
    )


def training_scenes(count: int, seed: int) -> tuple[list[Scene], list[str], np.ndarray]:
    """`count` random scenes outside the held-out combinations, their captions and pixels.

    Pixels are uint8, shape (count, 64, 64, 3).
    """
    rng = random.Random(seed)
    held_out = set(held_out_combinations())
    allowed = [combo for combo in colour_combinations() if combo not in held_out]
    scenes, captions = [], []
    pixels = np.empty((count, SIDE, SIDE, 3), dtype=np.uint8)
    for i in range(count):
        colour, shape, background = rng.choice(allowed)
        scene = Scene(colour, shape, background, rng.choice(list(SIZES)), rng.choice(list(POSITIONS)))
        scenes.append(scene)
        captions.append(scene.caption(rng.randrange(len(TEMPLATES)), rng))
        pixels[i] = np.asarray(draw(scene, rng))
    return scenes, captions, pixels


def evaluation_prompts(seed: int = 1) -> list[tuple[Scene, str]]:
    """Four prompts per held-out combination, each with the scene it asks for.

    First, as the evaluation always had: one in the middle at the default size, one at a
    random size and place, both in the first phrasing. Then two more at random sizes and
    places in the other phrasings, so every way of writing a picture is judged too.
    """
    rng = random.Random(seed)
    prompts = []
    for colour, shape, background in held_out_combinations():
        middle = Scene(colour, shape, background)
        anywhere = Scene(colour, shape, background, rng.choice(list(SIZES)), rng.choice(list(POSITIONS)))
        prompts += [(middle, middle.caption()), (anywhere, anywhere.caption())]
    for index, (colour, shape, background) in enumerate(held_out_combinations() * 2):
        scene = Scene(colour, shape, background, rng.choice(list(SIZES)), rng.choice(list(POSITIONS)))
        prompts.append((scene, scene.caption(1 + index % (len(TEMPLATES) - 1), rng)))
    return prompts


def evaluation_scenes(seed: int = 1) -> list[Scene]:
    """The scenes of `evaluation_prompts`, in the same order."""
    return [scene for scene, _ in evaluation_prompts(seed)]
