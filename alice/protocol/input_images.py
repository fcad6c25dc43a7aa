"""Input images for img2img as clients send them: decoded and checked before the queue.

Clients send base64, a data URI, or the URL of an image ALICE itself served. URLs are
resolved in ALICE's own image store by name and never fetched: fetching arbitrary URLs
from a GPU box on a home network would let any client probe that network.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from urllib.parse import urlparse

from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from alice.engine.masks import extend_canvas, has_alpha, mask_from_alpha
from alice.images.store import ImageStore
from alice.protocol.generation import InvalidRequest

MAX_INPUT_BYTES = 20 * 1024 * 1024
MAX_INPUT_PIXELS = 4096 * 4096  # a decompression bomb stops here, before decoding
_DATA_URI = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)


def read_input_image(value: str | bytes, generated: ImageStore, param: str = "input_image") -> Image.Image:
    """An image from bytes, base64, a data URI, or an `/images/<name>` URL of this server, as
    sent: its mode, alpha and `format` kept (a mask's transparency is its meaning)."""
    if isinstance(value, bytes):
        data = value
    elif value.startswith(("http://", "https://", "/images/")):
        data = _served_image(value, generated, param)
    else:
        try:
            data = base64.b64decode(_DATA_URI.sub("", value.strip()), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(param, f"{param} must be base64, a data URI, or an image URL of this server") from None
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidRequest(param, f"{param} is over {MAX_INPUT_BYTES // (1024 * 1024)} MB")
    try:
        image = Image.open(io.BytesIO(data))
        size = (image.width, image.height)
        if size[0] * size[1] <= MAX_INPUT_PIXELS:
            image.load()
    except Image.DecompressionBombError:
        raise InvalidRequest(param, f"{param} has too many pixels; at most {MAX_INPUT_PIXELS}") from None
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise InvalidRequest(param, f"{param} is not an image PIL can read (PNG, JPEG, WebP, ...)") from None
    except (ValueError, EOFError) as exc:  # e.g. a PNG text chunk that inflates past Pillow's MAX_TEXT_CHUNK
        raise InvalidRequest(param, f"{param} could not be read: {exc}") from None
    if size[0] * size[1] > MAX_INPUT_PIXELS:
        raise InvalidRequest(param, f"{param} is {size[0]}x{size[1]}; at most {MAX_INPUT_PIXELS} pixels")
    return image


@dataclass(frozen=True)
class EditInputs:
    """The input image of an edit (its alpha kept: its transparent pixels get filled before
    drawing) and, for a masked edit, the area to redraw ("L", 255 = redraw)."""

    image: Image.Image
    mask: Image.Image | None


def edit_inputs(
    image_value: str | bytes, mask_value: str | bytes | None, generated: ImageStore,
    outpaint: tuple[int, int, int, int] | None = None,
) -> EditInputs:
    """The input image and what to redraw of it, OpenAI's way: the mask's fully transparent
    pixels; without a mask, the image's own fully transparent pixels (none: plain img2img).
    With `outpaint` (left, top, right, bottom), the image on a canvas larger by those borders,
    which are redrawn too. InvalidRequest (param `mask`) for a mask that is no PNG, has no
    alpha channel, is not the image's size, or marks nothing to redraw."""
    image = read_input_image(image_value, generated)
    if mask_value is not None:
        mask = read_mask(mask_value, generated, image.size)
    else:
        mask = mask_from_alpha(image)
    if outpaint and any(outpaint):
        left, top, right, bottom = outpaint
        pixels = (image.width + left + right) * (image.height + top + bottom)
        if pixels > MAX_INPUT_PIXELS:
            raise InvalidRequest("outpaint", f"outpaint: the extended image would have {pixels} pixels; "
                                             f"at most {MAX_INPUT_PIXELS}")
        image = extend_canvas(image, left, top, right, bottom)
        canvas = Image.new("L", image.size, 255)  # the new border: drawn
        canvas.paste(mask if mask is not None else Image.new("L", (image.width - left - right,
                                                                   image.height - top - bottom), 0), (left, top))
        mask = canvas
    return EditInputs(image, mask)


def read_mask(value: str | bytes, generated: ImageStore, size: tuple[int, int]) -> Image.Image:
    """The area to redraw ("L", 255 = redraw) of an OpenAI-style mask: a PNG of the image's size
    whose fully transparent pixels (alpha 0) mark it."""
    mask = read_input_image(value, generated, "mask")
    if mask.format != "PNG":
        raise InvalidRequest("mask", f"mask must be a PNG with an alpha channel (its fully transparent pixels are "
                                     f"redrawn), not {mask.format or 'this format'}")
    if not has_alpha(mask):
        raise InvalidRequest("mask", "mask is a PNG without an alpha channel: its fully transparent pixels "
                                     "(alpha 0) mark the area to redraw")
    if mask.size != size:
        raise InvalidRequest("mask", f"mask is {mask.width}x{mask.height} and the image {size[0]}x{size[1]}: "
                                     "they must be the same size")
    area = mask_from_alpha(mask)
    if area is None:
        raise InvalidRequest("mask", "mask has no fully transparent pixel (alpha 0): nothing to redraw")
    return area


def _served_image(url: str, generated: ImageStore, param: str) -> bytes:
    path = urlparse(url).path
    name = path.removeprefix("/images/") if path.startswith("/images/") else ""
    file = generated.path_for(name)
    if file is None:
        raise InvalidRequest(param, f"{param}: only images this server made (/images/<name>) can be given by URL")
    return file.read_bytes()
