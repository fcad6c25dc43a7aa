"""The offline tokenizer and the tiny demo pipeline: built without a network, deterministic, fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPTokenizer

from alice.demo_training.shapes import WORDS
from alice.engine.demo import DEMO_MODEL_DIR, build_demo_architecture, save_demo_pipeline
from alice.engine.pipelines import choose_placement, load_pipeline
from alice.engine.tokenizer import learn_merges, write_offline_clip_tokenizer


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
    first = build_demo_architecture()
    second = build_demo_architecture()
    assert torch.equal(torch.rand(4), expected_next)
    for component in ("unet", "vae", "text_encoder"):
        a, b = getattr(first, component).state_dict(), getattr(second, component).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[key], b[key]) for key in a), component
    other = build_demo_architecture(seed=1)
    assert not torch.equal(first.unet.conv_in.weight, other.unet.conv_in.weight)


def test_shipped_demo_is_sd15_shaped(pipe) -> None:
    """The trained demo, loaded as the service loads it: SD 1.5's classes at a tiny size."""
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 64
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.sample_size * 8 == 64
    assert pipe.text_encoder.config.eos_token_id == pipe.tokenizer.eos_token_id
    assert pipe.tokenizer.model_max_length == pipe.text_encoder.config.max_position_embeddings == 16
    scheduler = pipe.scheduler.config  # the schedule it was trained with
    assert (scheduler.beta_schedule, scheduler.beta_start, scheduler.beta_end) == ("linear", 0.0001, 0.02)
    assert scheduler.num_train_timesteps == 1000 and scheduler.prediction_type == "epsilon"
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    assert pipe.unet.dtype == torch.float32  # stored in fp16, served in the CPU's dtype


def test_shipped_weights_are_small_half_precision_safetensors() -> None:
    from safetensors import safe_open

    files = list(DEMO_MODEL_DIR.rglob("*.safetensors"))
    assert {f.parent.name for f in files} == {"unet", "vae", "text_encoder"}
    assert not list(DEMO_MODEL_DIR.rglob("*.bin"))
    assert sum(f.stat().st_size for f in files) < 15e6
    for file in files:
        with safe_open(str(file), "pt") as weights:
            assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"F16"}, file


def test_every_word_of_the_demo_world_is_one_token(pipe) -> None:
    for word in WORDS:
        assert len(pipe.tokenizer.tokenize(word)) == 1, word
    caption = "a small red circle on a blue background, top left"
    assert len(pipe.tokenizer(caption).input_ids) <= pipe.tokenizer.model_max_length


def test_learned_merges_make_each_word_one_symbol_whatever_they_share() -> None:
    # "red" and "green" share "re": merging "r"+"e" first would break "green" apart.
    words = ["red", "green", "reed", "greener", "x"]
    merges = learn_merges(words)
    assert len(merges) == len(set(merges))
    with_words = write_and_load(words)
    for word in words:
        assert with_words.tokenize(word) == [word + "</w>"], word


def write_and_load(words) -> CLIPTokenizer:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        write_offline_clip_tokenizer(Path(folder), 16, words)
        return CLIPTokenizer.from_pretrained(folder)


def test_untrained_architecture_matches_the_shipped_demo(pipe) -> None:
    fresh = build_demo_architecture()
    for component in ("unet", "vae", "text_encoder"):
        shipped = {k: v.shape for k, v in getattr(pipe, component).state_dict().items()}
        built = {k: v.shape for k, v in getattr(fresh, component).state_dict().items()}
        if component == "text_encoder":  # the vocabulary differs: the demo's words are merged
            shipped = {k: v for k, v in shipped.items() if "token_embedding" not in k}
            built = {k: v for k, v in built.items() if "token_embedding" not in k}
        assert shipped == built, component


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


def test_same_seed_same_pixels(pipe) -> None:
    first, again, other = _generate(pipe, 7), _generate(pipe, 7), _generate(pipe, 8)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
