"""JPEG and WebP files with the A1111 `parameters` text, and which file format a stored name has.

AUTOMATIC1111 keeps the text of a JPEG or WebP in the EXIF UserComment, written with
`piexif.helper.UserComment.dump(text, encoding="unicode")`: the 8 bytes `UNICODE\\0`, then the
text in UTF-16 big-endian, in the Exif IFD. It is written the same way here (with Pillow's own
EXIF writer: no piexif needed), so A1111's PNG Info tab and the tools that follow it read ALICE's
JPEGs and WebPs as they read its PNGs. PNGs keep their text chunk (alice/images/store.py).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

EXIF_IFD = 0x8769  # the pointer from IFD0 to the Exif IFD
USER_COMMENT = 0x9286
# piexif.helper.UserComment's prefixes: the character code of the comment, 8 bytes (EXIF 2.3, 4.6.5).
_UNICODE = b"UNICODE\0"
_ASCII = b"ASCII\0\0\0"
_LONG, _UNDEFINED = 4, 7  # TIFF field types


@dataclass(frozen=True)
class FileFormat:
    pillow: str  # Pillow's format name
    suffix: str  # of the stored file's name
    content_type: str


# By the names clients use (`output_format`, alice/engine/spec.py's OutputFormat).
FORMATS = {
    "png": FileFormat("PNG", ".png", "image/png"),
    "jpeg": FileFormat("JPEG", ".jpg", "image/jpeg"),  # .jpg, as A1111 and cameras name them
    "webp": FileFormat("WEBP", ".webp", "image/webp"),
}
_BY_SUFFIX = {fmt.suffix: fmt for fmt in FORMATS.values()}


def content_type(name: str) -> str:
    """The Content-Type of a stored image by its name's suffix (the store names only these)."""
    return _BY_SUFFIX[Path(name).suffix].content_type


def user_comment(text: str) -> bytes:
    """The EXIF block (as Pillow's `exif=` takes it) holding `text` as A1111's piexif writes it.

    Written by hand: Pillow's EXIF writer types the comment BYTE, which piexif reads back as a
    tuple of ints that A1111 then fails to decode; piexif writes it UNDEFINED (7), as here.
    Big-endian TIFF: the header, IFD0 with its one entry (the Exif IFD's offset), the Exif IFD
    with its one entry (the comment's length and offset), then the comment.
    """
    comment = _UNICODE + text.encode("utf-16-be")
    ifd0, exif_ifd = 8, 8 + 18  # an IFD of one entry: its count, the entry, the next IFD's offset
    comment_at = exif_ifd + 18
    return b"".join([
        b"Exif\0\0MM\0\x2a", struct.pack(">I", ifd0),
        struct.pack(">HHHIII", 1, EXIF_IFD, _LONG, 1, exif_ifd, 0),
        struct.pack(">HHHIII", 1, USER_COMMENT, _UNDEFINED, len(comment), comment_at, 0),
        comment,
    ])


def encode_with_exif(image: Image.Image, parameters: str, output_format: str, compression: int) -> bytes:
    """JPEG or WebP bytes at quality `compression` (0-100), the parameters in the EXIF UserComment.

    WebP at 100 is lossless: "no compression loss" is what 100 promises, and WebP can keep it
    (JPEG cannot: its 100 is its best lossy quality).
    """
    fmt = FORMATS[output_format]
    options: dict = {"quality": compression, "exif": user_comment(parameters)}
    if fmt.pillow == "WEBP":
        options.update(lossless=compression == 100, method=4)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=fmt.pillow, **options)
    return buffer.getvalue()


def exif_parameters(path: Path) -> str | None:
    """The A1111 text in a JPEG's or WebP's EXIF UserComment; None where there is none.

    Only the headers are read, never the pixels.
    """
    try:
        with Image.open(path, formats=["JPEG", "WEBP"]) as image:
            raw = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return decode_user_comment(raw) if isinstance(raw, bytes) else None


def decode_user_comment(raw: bytes) -> str | None:
    """A UserComment's text, by its character code (as piexif's UserComment.load reads it)."""
    prefix, body = raw[:8], raw[8:]
    if prefix == _UNICODE:
        return body.decode("utf-16-be", errors="replace")
    if prefix == _ASCII:
        return body.decode("ascii", errors="replace")
    return None
