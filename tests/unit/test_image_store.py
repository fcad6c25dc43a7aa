"""The image folder: atomic writes, capability names, A1111 metadata, retention."""

from __future__ import annotations

import errno
import io
import os
import time
from datetime import datetime, timedelta, timezone

import pytest
from PIL import Image

from alice.image_store import ImageStore, a1111_parameters, encode_png, parse_a1111_parameters


def picture(colour=(200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (16, 16), colour)


def params(prompt="a red square", negative="") -> str:
    return a1111_parameters(prompt=prompt, negative_prompt=negative, steps=25, sampler="DPM++ 2M Karras",
                            guidance_scale=7, seed=42, width=512, height=512, model="alice-demo")


def test_a1111_text_and_round_trip():
    text = params(negative="blurry, text")
    assert text == ("a red square\nNegative prompt: blurry, text\n"
                    "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7.0, Seed: 42, Size: 512x512, Model: alice-demo")
    assert "Negative prompt" not in params()
    parsed = parse_a1111_parameters(text)
    assert parsed["prompt"] == "a red square" and parsed["negative_prompt"] == "blurry, text"
    assert parsed["settings"]["Seed"] == "42" and parsed["settings"]["Size"] == "512x512"


@pytest.mark.parametrize("prompt", ["plain", "café crème", "東京の夜 🌃"])
def test_png_carries_parameters_for_any_text(tmp_path, prompt):
    store = ImageStore(tmp_path)
    name = store.save(picture(), params(prompt))
    with Image.open(store.path_for(name)) as image:
        assert image.info["parameters"].startswith(prompt + "\n")
    assert store.read_parameters(name).startswith(prompt)


def test_same_image_same_bytes():
    assert encode_png(picture(), params()) == encode_png(picture(), params())
    assert encode_png(picture(), params()) != encode_png(picture((0, 0, 0)), params())


def test_names_are_128_random_bits(tmp_path):
    store = ImageStore(tmp_path)
    names = {store.save_png(b"x") for _ in range(200)}
    assert len(names) == 200
    assert all(len(n) == 36 and n.endswith(".png") and int(n[:32], 16) >= 0 for n in names)


@pytest.mark.parametrize("name", ["../secret.png", "..%2Fsecret.png", "/etc/passwd", "A" * 32 + ".png",
                                  "0" * 32 + ".jpg", "0" * 31 + ".png", ".tmp-abc", "", "0" * 32 + ".png/.."])
def test_only_valid_existing_names_resolve(tmp_path, name):
    store = ImageStore(tmp_path / "images")
    (tmp_path / "secret.png").write_bytes(b"secret")
    assert store.path_for(name) is None
    assert store.delete(name) is False


def test_full_disk_leaves_nothing_behind(tmp_path, monkeypatch):
    store = ImageStore(tmp_path)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        store.save(picture(), params())
    assert list(tmp_path.iterdir()) == []


def test_partial_files_from_a_crash_are_removed(tmp_path):
    store = ImageStore(tmp_path)
    (tmp_path / ".tmp-abc123").write_bytes(b"half")
    kept = store.save_png(b"whole")
    assert store.remove_partial_files() == 1
    assert [p.name for p in tmp_path.iterdir()] == [kept]


def aged(store: ImageStore, days_old: float, size: int = 100) -> str:
    name = store.save_png(b"x" * size)
    stamp = time.time() - days_old * 86400
    os.utime(store.path_for(name), (stamp, stamp))
    return name


def test_list_newest_first_with_paging(tmp_path):
    store = ImageStore(tmp_path)
    names = [aged(store, days) for days in (3, 2, 1)]
    assert [i.name for i in store.list()] == list(reversed(names))
    assert [i.name for i in store.list(offset=1, limit=1)] == [names[1]]
    assert store.count() == 3 and store.total_bytes() == 300


def test_sweep_by_age_then_size_oldest_first(tmp_path):
    store = ImageStore(tmp_path)
    ancient, old, middle, new = (aged(store, days) for days in (40, 20, 10, 1))
    removed = store.sweep(max_age=timedelta(days=30), max_total_bytes=None)
    assert removed == [ancient]
    removed = store.sweep(max_age=timedelta(days=30), max_total_bytes=150)
    assert removed == [old, middle]
    assert [i.name for i in store.list()] == [new]
    assert store.sweep(max_age=None, max_total_bytes=None, now=datetime.now(timezone.utc)) == []
