"""The image folder: atomic writes, capability names, A1111 metadata, retention."""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image

from alice.images.store import TEMP_PREFIX, ImageStore, encode_png
from alice.protocol.a1111 import a1111_parameters, parse_a1111_parameters

VALID_NAME = re.compile(r"[0-9a-f]{32}\.png")


def picture(colour: tuple[int, int, int] = (200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (16, 16), colour)


def params(prompt: str = "a red square", negative: str = "", **extra: str) -> str:
    return a1111_parameters(prompt=prompt, negative_prompt=negative, steps=25, sampler="DPM++ 2M Karras",
                            guidance_scale=7.5, seed=42, width=512, height=768, model="alice-demo",
                            extra=extra or None)


def names_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- A1111 parameters text ---------------------------------------------------------------


def test_a1111_text_is_exactly_what_a1111_writes():
    assert params(negative="blurry, text") == (
        "a red square\nNegative prompt: blurry, text\n"
        "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 512x768, Model: alice-demo")
    assert params() == ("a red square\n"
                        "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 512x768, Model: alice-demo")


@pytest.mark.parametrize(("guidance", "written"), [(7.5, "7.5"), (7, "7.0"), (7.0, "7.0"), (1, "1.0"), (12.25, "12.25")])
def test_cfg_scale_is_written_as_a_python_float(guidance, written):
    text = a1111_parameters(prompt="p", negative_prompt="", steps=1, sampler="Euler", guidance_scale=guidance,
                            seed=0, width=8, height=8, model="m")
    assert f"CFG scale: {written}," in text


def test_extra_settings_are_appended_and_quoted_like_a1111():
    text = params(**{"Denoising strength": "0.6", "LoRAs": "ink:0.8 paper:1"})
    assert text.endswith('Model: alice-demo, Denoising strength: 0.6, LoRAs: "ink:0.8 paper:1"')
    assert parse_a1111_parameters(text)["settings"]["LoRAs"] == "ink:0.8 paper:1"


def test_a_setting_name_a1111_cannot_read_is_refused():
    with pytest.raises(ValueError):
        params(**{"Bad, key": "1"})


@pytest.mark.parametrize(("prompt", "negative"), [
    ("a red square", ""),
    ("a red square", "blurry, text"),
    ("castle: tall, grey, (detailed:1.2)", "low quality: jpeg"),
    ("line one\nline two\n", "neg one\nneg two"),
    ("東京の夜 🌃", "ぼやけた"),
    ("", ""),
])
def test_parse_round_trip(prompt, negative):
    parsed = parse_a1111_parameters(params(prompt, negative, **{"Denoising strength": "0.6"}))
    assert parsed["prompt"] == prompt and parsed["negative_prompt"] == negative
    assert parsed["settings"] == {"Steps": "25", "Sampler": "DPM++ 2M Karras", "CFG scale": "7.5", "Seed": "42",
                                  "Size": "512x768", "Model": "alice-demo", "Denoising strength": "0.6"}


def test_parse_reads_text_written_by_a1111_itself():
    text = ('masterpiece, a cat\nNegative prompt: lowres\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, '
            'CFG scale: 7, Seed: 1234, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, '
            'Lora hashes: "cat: e3b0c44298fc, ink: 1a2b3c", Version: v1.10.1')
    parsed = parse_a1111_parameters(text)
    assert parsed["prompt"] == "masterpiece, a cat" and parsed["negative_prompt"] == "lowres"
    assert parsed["settings"]["Lora hashes"] == "cat: e3b0c44298fc, ink: 1a2b3c"
    assert parsed["settings"]["Version"] == "v1.10.1" and parsed["settings"]["CFG scale"] == "7"


def test_parse_text_without_settings_line_is_all_prompt():
    assert parse_a1111_parameters("just a prompt") == {"prompt": "just a prompt", "negative_prompt": "",
                                                        "settings": {}}


# --- PNG encoding ------------------------------------------------------------------------


@pytest.mark.parametrize(("prompt", "chunk"), [
    ("plain", b"tEXt"), ("café crème", b"tEXt"), ("東京の夜 🌃", b"iTXt"), ("emoji only 🎨", b"iTXt")])
def test_png_carries_parameters_for_any_text(tmp_path, prompt, chunk):
    store = ImageStore(tmp_path)
    name = store.save(picture(), params(prompt))
    data = store.path_for(name).read_bytes()
    assert chunk + b"parameters\0" in data  # latin-1 goes in tEXt, anything else in UTF-8 iTXt
    with Image.open(store.path_for(name)) as image:
        assert image.info["parameters"] == params(prompt)
        assert image.text["parameters"] == params(prompt)
        assert image.size == (16, 16) and image.getpixel((0, 0)) == (200, 30, 30)
    assert store.read_parameters(name) == params(prompt)


def test_a_negative_prompt_outside_latin1_also_goes_in_itxt(tmp_path):
    store = ImageStore(tmp_path)
    text = params("plain", "no 🙅")
    name = store.save(picture(), text)
    assert b"iTXtparameters\0" in store.path_for(name).read_bytes()
    assert parse_a1111_parameters(store.read_parameters(name))["negative_prompt"] == "no 🙅"


def test_same_image_and_text_give_the_same_bytes():
    assert encode_png(picture(), params()) == encode_png(picture(), params())
    assert encode_png(picture(), params("東京")) == encode_png(picture(), params("東京"))
    assert encode_png(picture(), params()) != encode_png(picture((0, 0, 0)), params())
    assert encode_png(picture(), params()) != encode_png(picture(), params("another prompt"))
    assert b"tIME" not in encode_png(picture(), params())


def test_exif_of_a_source_image_is_not_copied(tmp_path):
    exif = Image.Exif()
    exif[0x010F] = "SecretCamera"  # Make
    buffer = io.BytesIO()
    picture().save(buffer, format="JPEG", exif=exif)
    with Image.open(buffer) as source:
        assert "exif" in source.info
        data = encode_png(source, "")
    assert b"eXIf" not in data and b"SecretCamera" not in data


# --- names and atomic writes -------------------------------------------------------------


def test_names_are_128_random_bits_and_unique(tmp_path):
    store = ImageStore(tmp_path)
    names = [store.save_png(b"same bytes every time") for _ in range(200)]
    assert len(set(names)) == 200
    assert all(VALID_NAME.fullmatch(name) for name in names)
    assert names_in(tmp_path) == sorted(names)
    assert (tmp_path / names[0]).stat().st_mode & 0o777 == 0o644


def test_store_creates_its_folder(tmp_path):
    store = ImageStore(tmp_path / "data" / "images")
    assert (tmp_path / "data" / "images").is_dir() and store.count() == 0


def test_full_disk_at_fsync_leaves_nothing_behind(tmp_path, monkeypatch):
    store = ImageStore(tmp_path)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)  # a full disk can't be made for real in a unit test
    with pytest.raises(OSError) as raised:
        store.save(picture(), params())
    assert raised.value.errno == errno.ENOSPC
    assert names_in(tmp_path) == []


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE")
def test_write_that_fails_half_way_leaves_nothing_behind(tmp_path):
    """A real short write: the file-size limit makes write() fail with EFBIG part way through."""
    import resource

    store = ImageStore(tmp_path)
    kept = store.save(picture(), params())
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # report EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(OSError) as raised:
            store.save_png(os.urandom(64 * 1024))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert raised.value.errno == errno.EFBIG
    assert names_in(tmp_path) == [kept]


def test_partial_files_from_a_crash_are_removed(tmp_path):
    store = ImageStore(tmp_path)
    (tmp_path / ".tmp-abc123").write_bytes(b"half")
    (tmp_path / ".tmp-def456").write_bytes(b"")
    kept = store.save_png(b"whole")
    assert store.list()[0].name == kept and store.count() == 1  # temp files are never listed
    assert store.remove_partial_files() == 2
    assert names_in(tmp_path) == [kept]
    assert store.remove_partial_files() == 0


# --- name validation ---------------------------------------------------------------------

HEX = "0123456789abcdef" * 2


@pytest.mark.parametrize("name", [
    "../secret.png",
    "..%2Fsecret.png",
    "%2e%2e%2fsecret.png",
    "%2e%2e/" + HEX + ".png",
    "../outside/" + HEX + ".png",
    "/etc/passwd",
    "SECRET",  # replaced below by the absolute path of an existing file outside the store
    HEX.upper() + ".png",
    HEX + ".PNG",
    HEX + ".gif",  # a format the store does not write
    HEX,
    HEX[:31] + ".png",
    HEX + "0.png",
    "g" * 32 + ".png",
    ".tmp-" + HEX,
    ".tmp-abc.png",
    HEX + ".png\n",
    " " + HEX + ".png",
    HEX + ".png/..",
    HEX + ".png\0",
    "./" + HEX + ".png",
    "",
    ".",
    "..",
])
def test_only_valid_existing_names_resolve(tmp_path, name):
    store = ImageStore(tmp_path / "images")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / (HEX + ".png")).write_bytes(b"outside")
    # Files that exist under names close to the requested ones, so only validation can say no.
    (tmp_path / "images" / (HEX + ".gif")).write_bytes(b"gif")
    (tmp_path / "images" / (".tmp-" + HEX)).write_bytes(b"half")
    (tmp_path / "images" / ".tmp-abc.png").write_bytes(b"half")
    if name == "SECRET":
        name = str(secret)
    assert store.path_for(name) is None
    assert store.read_parameters(name) is None
    assert store.delete(name) is False
    assert secret.read_bytes() == b"secret"
    assert (tmp_path / "outside" / (HEX + ".png")).exists()


def test_valid_name_resolves_inside_the_folder_and_can_be_deleted(tmp_path):
    store = ImageStore(tmp_path)
    name = store.save(picture(), params())
    path = store.path_for(name)
    assert path is not None and path.parent == tmp_path and path.name == name
    assert store.path_for(HEX + ".png") is None  # valid but never stored
    assert store.delete(name) is True
    assert store.delete(name) is False and store.path_for(name) is None


def test_a_symlink_or_folder_with_a_valid_name_is_not_served(tmp_path):
    store = ImageStore(tmp_path / "images")
    (tmp_path / "secret.png").write_bytes(b"secret")
    link = "a" * 32 + ".png"
    (tmp_path / "images" / link).symlink_to(tmp_path / "secret.png")
    folder = "b" * 32 + ".png"
    (tmp_path / "images" / folder).mkdir()
    assert store.path_for(link) is None and store.path_for(folder) is None
    assert store.count() == 0 and store.list() == []


def test_read_parameters_of_a_file_that_is_not_a_png_is_none(tmp_path):
    store = ImageStore(tmp_path)
    assert store.read_parameters(store.save_png(b"not a png")) is None
    assert store.read_parameters(store.save_png(encode_png(picture(), params())[:40])) is None


# --- listing and retention ---------------------------------------------------------------


def aged(store: ImageStore, days_old: float, size: int = 100) -> str:
    """Store `size` bytes whose mtime is `days_old` days ago."""
    name = store.save_png(b"x" * size)
    stamp = time.time() - days_old * 86400
    os.utime(store.path_for(name), (stamp, stamp))
    return name


def test_list_newest_first_with_paging(tmp_path):
    store = ImageStore(tmp_path)
    names = [aged(store, days) for days in (3, 2, 1)]
    assert [i.name for i in store.list()] == names[::-1]
    assert [i.name for i in store.list(offset=1, limit=1)] == [names[1]]
    assert [i.name for i in store.list(offset=2, limit=5)] == [names[0]]
    assert store.list(offset=3) == [] and store.list(limit=0) == []
    assert store.count() == 3 and store.total_bytes() == 300


def test_list_breaks_mtime_ties_by_name_and_reads_parameters(tmp_path):
    store = ImageStore(tmp_path)
    names = [store.save(picture(), params(f"prompt {i}")) for i in range(3)]
    stamp = time.time() - 60
    for name in names:
        os.utime(store.path_for(name), (stamp, stamp))
    listed = store.list()
    assert [i.name for i in listed] == sorted(names, reverse=True)
    first = listed[0]
    assert first.parameters == params(f"prompt {names.index(first.name)}")
    assert first.size_bytes == store.path_for(first.name).stat().st_size
    assert first.created.tzinfo is not None and first.created.utcoffset() == timedelta(0)
    assert abs(first.created.timestamp() - stamp) < 1
    with pytest.raises(AttributeError):
        first.name = "other"  # frozen


def test_sweep_by_age_removes_only_the_old(tmp_path, caplog):
    store = ImageStore(tmp_path)
    ancient, old, new = (aged(store, days) for days in (40, 31, 1))
    with caplog.at_level(logging.INFO, logger="alice.images"):
        removed = store.sweep(max_age=timedelta(days=30), max_total_bytes=None)
    assert sorted(removed) == sorted([ancient, old])
    assert [i.name for i in store.list()] == [new]
    assert "removed 2 images" in caplog.text
    assert ancient not in caplog.text and "red square" not in caplog.text
    assert store.sweep(max_age=timedelta(days=30), max_total_bytes=None) == []


def test_sweep_by_age_uses_the_given_now(tmp_path):
    store = ImageStore(tmp_path)
    name = aged(store, 1)
    assert store.sweep(max_age=timedelta(days=2), max_total_bytes=None) == []
    later = datetime.now(timezone.utc) + timedelta(days=5)
    assert store.sweep(max_age=timedelta(days=2), max_total_bytes=None, now=later) == [name]


def test_sweep_by_size_removes_the_oldest_first(tmp_path):
    store = ImageStore(tmp_path)
    oldest, older, newer, newest = (aged(store, days) for days in (4, 3, 2, 1))
    assert store.sweep(max_age=None, max_total_bytes=400) == []
    assert store.sweep(max_age=None, max_total_bytes=250) == [oldest, older]
    assert [i.name for i in store.list()] == [newest, newer] and store.total_bytes() == 200
    assert store.sweep(max_age=None, max_total_bytes=0) == [newer, newest]
    assert store.count() == 0


def test_sweep_by_age_then_size(tmp_path):
    store = ImageStore(tmp_path)
    ancient, old, middle, new = (aged(store, days) for days in (40, 20, 10, 1))
    removed = store.sweep(max_age=timedelta(days=30), max_total_bytes=150)
    assert removed == [ancient, old, middle]
    assert [i.name for i in store.list()] == [new]
    assert store.sweep(max_age=None, max_total_bytes=None) == []


def test_sweep_ignores_temp_files_and_leaves_them_alone(tmp_path):
    store = ImageStore(tmp_path)
    (tmp_path / ".tmp-inflight").write_bytes(b"y" * 10_000)
    kept = aged(store, 1)
    assert store.sweep(max_age=timedelta(days=30), max_total_bytes=100) == []
    assert names_in(tmp_path) == sorted([".tmp-inflight", kept])


def test_sweep_survives_files_deleted_meanwhile(tmp_path, monkeypatch):
    store = ImageStore(tmp_path)
    oldest, middle, newest = (aged(store, days) for days in (3, 2, 1))
    real_unlink = os.unlink

    def someone_else_got_there_first(path, *args, **kwargs):
        # Another process (a second worker, an admin) removes the file between scan and unlink.
        if Path(path).name == oldest:
            real_unlink(path)
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", someone_else_got_there_first)
    removed = store.sweep(max_age=None, max_total_bytes=100)
    assert removed == [middle]  # the vanished one still counted as freed space
    assert [i.name for i in store.list()] == [newest]



def test_sweep_logs_and_goes_on_when_a_file_cannot_be_deleted(tmp_path, monkeypatch, caplog):
    store = ImageStore(tmp_path)
    stuck, old = aged(store, 50), aged(store, 40)
    real_unlink = os.unlink

    def refuse_one(path, *args, **kwargs):
        # EACCES can't be made for real here: the tests may run as root, which ignores modes.
        if Path(path).name == stuck:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", refuse_one)
    with caplog.at_level(logging.INFO, logger="alice.images"):
        assert store.sweep(max_age=timedelta(days=30), max_total_bytes=None) == [old]
    assert store.path_for(stuck) is not None
    assert "could not remove" in caplog.text and stuck not in caplog.text


def test_in_a_shared_folder_only_old_partial_files_go(tmp_path):
    """Replicas share the image folder: at start one must not delete another's save in flight."""
    store = ImageStore(tmp_path / "images")
    in_flight, left_by_a_crash = store.root / f"{TEMP_PREFIX}now.png", store.root / f"{TEMP_PREFIX}old.png"
    in_flight.write_bytes(b"x")
    left_by_a_crash.write_bytes(b"x")
    os.utime(left_by_a_crash, (time.time() - 7200, time.time() - 7200))
    assert store.remove_partial_files(older_than_s=3600) == 1
    assert in_flight.exists() and not left_by_a_crash.exists()
    assert store.remove_partial_files() == 1 and not in_flight.exists()  # one server alone: all go
