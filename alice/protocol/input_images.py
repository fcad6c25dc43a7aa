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

from PIL import Image, UnidentifiedImageError

from alice.images.store import ImageStore
from alice.protocol.generation import InvalidRequest

MAX_INPUT_BYTES = 20 * 1024 * 1024
MAX_INPUT_PIXELS = 4096 * 4096  # a decompression bomb stops here, before decoding
_DATA_URI = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)


def decode_input_image(value: str | bytes, generated: ImageStore, param: str = "input_image") -> Image.Image:
    """An RGB image from bytes, base64, a data URI, or an `/images/<name>` URL of this server."""
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
    return image.convert("RGB")


def _served_image(url: str, generated: ImageStore, param: str) -> bytes:
    path = urlparse(url).path
    name = path.removeprefix("/images/") if path.startswith("/images/") else ""
    file = generated.path_for(name)
    if file is None:
        raise InvalidRequest(param, f"{param}: only images this server made (/images/<name>) can be given by URL")
    return file.read_bytes()
