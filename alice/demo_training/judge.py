"""Judge a demo picture by its pixels: which named colours, which shape, where.

The background is what lies outside the box the caption asks for; the shape is what inside
that box is not background. Every pixel is first named by its nearest colour, so soft
edges and small tints do not move the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from alice.demo_training.shapes import COLOURS, SIDE, Scene

_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[name] for name in _NAMES], dtype=np.float32)
# How much of its bounding box each shape fills: pi/4, 1, 1/2.
_FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}


@dataclass(frozen=True)
class Verdict:
    shape_colour: str | None  # None: nothing but background where the shape should be
    background: str
    shape: str | None
    centre: tuple[float, float] | None  # of the shape's pixels, in 64 px coordinates (larger pictures are shrunk)

    def colours_right(self, scene: Scene) -> bool:
        return self.shape_colour == scene.colour and self.background == scene.background

    def place_right(self, scene: Scene) -> bool:
        """The shape's centre within a quarter of the side of where the caption puts it."""
        if self.centre is None:
            return False
        (x, y), (want_x, want_y) = self.centre, scene.centre
        return max(abs(x - want_x), abs(y - want_y)) <= SIDE / 4

    def __str__(self) -> str:
        return f"{self.shape_colour} {self.shape} on {self.background}"


def name_pixels(image: Image.Image) -> np.ndarray:
    """Each pixel's nearest named colour, as an index into COLOURS, at 64x64."""
    if image.size != (SIDE, SIDE):
        image = image.resize((SIDE, SIDE), Image.Resampling.BOX)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    distances = ((pixels[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(axis=-1)
    return distances.argmin(axis=-1)


def judge(image: Image.Image, scene: Scene) -> Verdict:
    """What the picture shows, looking where `scene` says the shape should be."""
    named = name_pixels(image)
    cx, cy = scene.centre
    margin = scene.half_width + 4  # the drawn shape may be jittered and scaled by 10%
    ys, xs = np.mgrid[0:SIDE, 0:SIDE]
    inside = (abs(xs + 0.5 - cx) <= margin) & (abs(ys + 0.5 - cy) <= margin)
    background = int(np.bincount(named[~inside], minlength=len(_NAMES)).argmax())
    shape_pixels = inside & (named != background)
    # A few stray pixels are noise, not a shape: ask for a tenth of the smallest shape.
    if shape_pixels.sum() < 0.1 * (2 * 8) ** 2 * _FILL["triangle"]:
        return Verdict(None, _NAMES[background], None, None)
    shape_colour = int(np.bincount(named[shape_pixels], minlength=len(_NAMES)).argmax())
    mine = named == shape_colour
    rows, cols = np.nonzero(mine & inside)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    fill = len(rows) / box
    shape = min(_FILL, key=lambda name: abs(_FILL[name] - fill))
    return Verdict(_NAMES[shape_colour], _NAMES[background], shape, (cols.mean() + 0.5, rows.mean() + 0.5))
