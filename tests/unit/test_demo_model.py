"""The offline tokenizer and the tiny demo pipeline: built without a network, deterministic, fast."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPTokenizer

from alice.engine.demo import build_demo_pipeline, save_demo_pipeline
from alice.engine.pipelines import choose_placement, load_pipeline
from alice.engine.tokenizer import write_offline_clip_tokenizer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread for this module: on a small, busy machine torch's default thread
    count can make a 0.1 s generation take seconds (its threads spin waiting for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> CLIPTokenizer:
    folder = tmp_path_factory.mktemp("tokenizer")
    write_offline_clip_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory):
    """The demo pipeline saved and loaded back the way the service loads models."""
    folder = tmp_path_factory.mktemp("demo")
    save_demo_pipeline(folder)
    return load_pipeline(folder, choose_placement("cpu"))


def test_tokenizer_files(tmp_path: Path) -> None:
    write_offline_clip_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    assert (tmp_path / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")


@pytest.mark.parametrize(
    "text", ["crème brûlée à la façon Ångström", "東京の夜景、水墨画", "🐱🚀 👩‍👩‍👧 ❤️", "tab\tnew\nline \x00"]
)
def test_any_text_has_no_unknown_token(tokenizer: CLIPTokenizer, text: str) -> None:
    ids = tokenizer(text).input_ids
    # unk is <|endoftext|> in CLIP, so it may only appear as the closing token
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1]
    # nothing lost: it decodes back to the text as CLIP normalises it (lowercase, one space)
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded.replace(" ", "") == "".join(text.lower().split())


def test_merges_apply(tokenizer: CLIPTokenizer) -> None:
    assert tokenizer.tokenize("the cat and") == ["the</w>", "c", "a", "t</w>", "and</w>"]


def test_long_text_truncates_to_77(tokenizer: CLIPTokenizer) -> None:
    assert tokenizer.model_max_length == 77
    ids = tokenizer("a very long prompt " * 100, truncation=True, max_length=tokenizer.model_max_length).input_ids
    assert len(ids) == 77 and ids[-1] == tokenizer.eos_token_id
    padded = tokenizer("short", padding="max_length", truncation=True, max_length=tokenizer.model_max_length)
    assert len(padded.input_ids) == 77


def test_build_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(1234)
    expected_next = torch.rand(4)
    torch.manual_seed(1234)
    first = build_demo_pipeline()
    second = build_demo_pipeline()
    assert torch.equal(torch.rand(4), expected_next)
    for component in ("unet", "vae", "text_encoder"):
        a, b = getattr(first, component).state_dict(), getattr(second, component).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[key], b[key]) for key in a), component
    other = build_demo_pipeline(seed=1)
    assert not torch.equal(first.unet.conv_in.weight, other.unet.conv_in.weight)


def test_shape_is_sd15_like() -> None:
    pipe = build_demo_pipeline()
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 32
    assert pipe.vae_scale_factor == 8
    assert pipe.text_encoder.config.eos_token_id == pipe.tokenizer.eos_token_id
    scheduler = pipe.scheduler.config
    assert (scheduler.beta_schedule, scheduler.beta_start, scheduler.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert scheduler.num_train_timesteps == 1000 and scheduler.steps_offset == 1
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    size = sum(p.numel() * p.element_size() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
    assert 2e6 < size < 8e6


def _generate(pipe, seed: int) -> np.ndarray:
    image = pipe(
        "a red circle on a blue background",
        num_inference_steps=4,
        width=64,
        height=64,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    assert image.size == (64, 64)
    return np.asarray(image)


def test_generation_is_fast(pipe) -> None:
    _generate(pipe, 0)  # warm-up
    started = time.perf_counter()
    _generate(pipe, 0)
    assert time.perf_counter() - started < 1.0


def test_same_seed_same_pixels(pipe) -> None:
    first, again, other = _generate(pipe, 7), _generate(pipe, 7), _generate(pipe, 8)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
