"""Live previews as clients get them: a PNG, base64, at the size of the image being drawn.

The engine hands over a preview at the latents' resolution (1/8 of the side) or, from a tiny
autoencoder, at the full size; here it is scaled to the image's size (as OpenAI's partial images
are) and encoded once, however many clients poll for it.
"""

from __future__ import annotations

import base64
import functools
import io
from typing import Any

from PIL import Image

from alice.engine.previews import Preview


@functools.lru_cache(maxsize=64)  # keyed by the preview object itself: each is encoded once
def preview_png_b64(preview: Preview, width: int, height: int) -> str:
    """The preview as a base64 PNG of width x height (bilinear: a soft picture, not blocks)."""
    image = preview.image
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)  # fast: a preview is shown once and dropped
    return base64.b64encode(buffer.getvalue()).decode()


def preview_view(preview: Preview, width: int, height: int) -> dict[str, Any]:
    """A preview in the jobs API and the chat stream: which one, after which step, and its PNG."""
    return {
        "index": preview.index,
        "step": preview.step,
        "total_steps": preview.total_steps,
        "b64_json": preview_png_b64(preview, width, height),
    }
