"""JPEG and WebP files with the A1111 text as A1111 writes it, the image store's formats, and
the Images API's quality table."""

from __future__ import annotations

import io
import struct
import typing
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import Image

from alice.engine.spec import OutputFormat
from alice.images.formats import FORMATS, content_type, encode_with_exif
from alice.images.store import ImageStore
from alice.protocol.generation import InvalidRequest
from alice.protocol.image_options import ImageOptions, apply_image_options, quality_steps

TEXT = "a fox in 東京, ünïcode\nNegative prompt: blurry\nSteps: 3, Sampler: Euler, CFG scale: 7.0, Seed: 5, Size: 64x64"


def picture() -> Image.Image:
    gradient = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    return Image.fromarray(gradient)


def user_comment_as_piexif_reads_it(exif: bytes) -> tuple[int, bytes]:
    """(type, bytes) of the Exif IFD's UserComment, read from the TIFF structure by hand, as
    piexif.load does (A1111 reads it so): IFD0 -> ExifIFD pointer (0x8769) -> tag 0x9286."""
    tiff = exif.removeprefix(b"Exif\x00\x00")
    order = "<" if tiff[:2] == b"II" else ">"

    def entries(offset: int) -> dict[int, tuple[int, int, int]]:
        (count,) = struct.unpack_from(order + "H", tiff, offset)
        found = {}
        for index in range(count):
            tag, kind, length, value = struct.unpack_from(order + "HHII", tiff, offset + 2 + 12 * index)
            found[tag] = (kind, length, value)
        return found

    (first,) = struct.unpack_from(order + "I", tiff, 4)
    exif_ifd = entries(first)[0x8769][2]
    kind, length, offset = entries(exif_ifd)[0x9286]
    return kind, tiff[offset:offset + length]


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
def test_jpeg_and_webp_carry_the_parameters_as_a1111_writes_them(tmp_path, output_format):
    store = ImageStore(tmp_path)
    name = store.save(picture(), TEXT, output_format, 90)
    assert name.endswith(FORMATS[output_format].suffix)
    assert store.read_parameters(name) == TEXT
    with Image.open(tmp_path / name) as image:
        assert image.format == FORMATS[output_format].pillow
        kind, comment = user_comment_as_piexif_reads_it(image.info["exif"])
    # piexif.helper.UserComment.dump(text, encoding="unicode"): UNDEFINED (7), "UNICODE\0", UTF-16 BE.
    assert kind == 7 and comment == b"UNICODE\x00" + TEXT.encode("utf-16-be")
    [listed] = store.list()
    assert listed.parameters == TEXT


def test_compression_is_the_quality_and_webp_at_100_is_lossless():
    image = picture()
    sizes = {quality: len(encode_with_exif(image, TEXT, "jpeg", quality)) for quality in (20, 95)}
    assert sizes[20] < sizes[95]
    lossless = Image.open(io.BytesIO(encode_with_exif(image, TEXT, "webp", 100)))
    assert np.array_equal(np.asarray(lossless.convert("RGB")), np.asarray(image))
    lossy = Image.open(io.BytesIO(encode_with_exif(image, TEXT, "webp", 60)))
    assert not np.array_equal(np.asarray(lossy.convert("RGB")), np.asarray(image))


def test_every_output_format_has_a_file_format_and_retention_sweeps_them_all(tmp_path):
    assert set(typing.get_args(OutputFormat)) == set(FORMATS)
    store = ImageStore(tmp_path)
    names = [store.save(picture(), TEXT, output_format) for output_format in FORMATS]
    assert {content_type(name) for name in names} == {"image/png", "image/jpeg", "image/webp"}
    assert store.count() == 3 and all(store.path_for(name) for name in names)
    removed = store.sweep(max_age=timedelta(days=1), max_total_bytes=None,
                          now=datetime.now(timezone.utc) + timedelta(days=2))
    assert sorted(removed) == sorted(names) and store.count() == 0
    with pytest.raises(ValueError):
        store.save_file(b"x", ".gif")  # a name the store would never serve nor sweep


@pytest.mark.parametrize(("default_steps", "expected"), [
    (25, {"low": 13, "medium": 25, "high": 38, "xhigh": 50, "max": 75}),  # Stable Diffusion
    (4, {"low": 2, "medium": 4, "high": 6, "xhigh": 8, "max": 12}),  # FLUX.1 schnell
    (50, {"low": 25, "medium": 50, "high": 75, "xhigh": 100, "max": 150}),
    (1, {"low": 1, "medium": 1, "high": 2, "xhigh": 2, "max": 3}),
])
def test_quality_is_a_multiple_of_the_family_default_steps(default_steps, expected):
    assert {quality: quality_steps(quality, default_steps) for quality in expected} == expected
    assert quality_steps("auto", default_steps) == quality_steps("standard", default_steps) == expected["medium"]
    assert quality_steps(None, default_steps) == expected["medium"]
    assert quality_steps("hd", default_steps) == expected["high"]
    assert quality_steps("max", 60) == 150  # the steps' limit


def test_image_options_map_onto_settings_and_the_client_s_own_win():
    options = ImageOptions(quality="low", input_fidelity="high")
    mapped = apply_image_options(options, {"prompt": "x", "output_format": None}, default_steps=25, editing=True)
    assert mapped == {"prompt": "x", "steps": 13, "strength": 0.4}  # null output_format: the default
    own = apply_image_options(options, {"steps": 7, "strength": 0.9}, default_steps=25, editing=True)
    assert own == {"steps": 7, "strength": 0.9}
    with pytest.raises(InvalidRequest) as transparent:
        apply_image_options(ImageOptions(background="transparent"), {}, default_steps=25, editing=False)
    assert transparent.value.param == "background"
    with pytest.raises(InvalidRequest) as fidelity:
        apply_image_options(ImageOptions(input_fidelity="low"), {}, default_steps=25, editing=False)
    assert fidelity.value.param == "input_fidelity"
