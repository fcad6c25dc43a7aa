"""Textual-inversion embeddings: A1111's file layouts imported into the store, and named in
prompts on the demo model and the tiny SDXL; the model is clean again after."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from alice.engine.embeddings import EMBEDDING_FILE, embedding_family, embeddings_applied, read_embedding
from alice.engine.generate import GenerationSpec, run_generation
from alice.models import store as model_store
from alice.models.checkpoints import import_checkpoint_file

SPEC = GenerationSpec(prompt="a red circle on a blue background", seed=5, width=64, height=64, steps=3,
                      scheduler="ddim")


def _vectors(width: int, count: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed)) * 0.5


def test_each_a1111_layout_is_read_and_its_family_told_by_width(tmp_path):
    torch.save({"string_to_param": {"*": _vectors(768)}, "name": "x", "step": 1}, tmp_path / "a.pt")
    torch.save({"emb_params": _vectors(1024)}, tmp_path / "b.pt")
    save_file({"emb_params": _vectors(768)}, str(tmp_path / "c.safetensors"))
    save_file({"clip_l": _vectors(768), "clip_g": _vectors(1280)}, str(tmp_path / "d.safetensors"))
    families = [embedding_family(read_embedding(tmp_path / f)) for f in ("a.pt", "b.pt", "c.safetensors", "d.safetensors")]
    assert families == ["sd15", "sd2", "sd15", "sdxl"]


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    class Hostile:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"string_to_param": {"*": Hostile()}}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a readable embedding"):
        read_embedding(tmp_path / "evil.pt")


def test_imported_embedding_changes_the_image_when_named_only(tmp_path, bentoml_home, demo_pipeline):
    pipe, config = demo_pipeline
    torch.save({"string_to_param": {"*": _vectors(64, seed=1) * 4}}, tmp_path / "pt-layout.pt")
    save_file({"emb_params": _vectors(64, seed=2) * 4}, str(tmp_path / "st-layout.safetensors"))
    stored = [import_checkpoint_file(tmp_path / "pt-layout.pt", "ptstyle"),
              import_checkpoint_file(tmp_path / "st-layout.safetensors", "ststyle")]
    assert [m.kind for m in stored] == [model_store.EMBEDDING] * 2 and {m.name for m in model_store.embeddings()} == {
        "ptstyle", "ststyle"}
    files = [(m.name, m.path / EMBEDDING_FILE) for m in stored]
    vocabulary = len(pipe.tokenizer)

    def draw(prompt: str) -> np.ndarray:
        with embeddings_applied(pipe, files):
            image = run_generation(pipe, config, dataclasses.replace(SPEC, prompt=prompt)).images[0]
        return np.asarray(image).astype(int)

    plain = draw(SPEC.prompt)
    assert np.array_equal(plain, np.asarray(run_generation(pipe, config, SPEC).images[0]).astype(int))
    with_pt = draw(SPEC.prompt + " PtStyle")  # the name, case ignored
    assert not np.array_equal(plain, with_pt)
    assert not np.array_equal(with_pt, draw(SPEC.prompt + " ststyle"))
    assert not np.array_equal(with_pt, draw(SPEC.prompt + " (ptstyle:1.4)"))  # weighted like any word
    assert len(pipe.tokenizer) == vocabulary and pipe.text_encoder.get_input_embeddings().weight.shape[0] == vocabulary


def test_sdxl_embedding_fills_both_encoders(tmp_path, sdxl_pipeline):
    pipe = sdxl_pipeline
    save_file({"clip_l": _vectors(32, seed=3) * 4, "clip_g": _vectors(32, seed=4) * 4}, str(tmp_path / "xl.safetensors"))
    files = [("xlstyle", tmp_path / "xl.safetensors")]
    spec = dataclasses.replace(SPEC, prompt="a castle", scheduler="euler", steps=2)

    def draw(prompt: str) -> np.ndarray:
        with embeddings_applied(pipe, files):
            return np.asarray(run_generation(pipe, pipe.scheduler.config, dataclasses.replace(spec, prompt=prompt)).images[0])

    assert not np.array_equal(draw("a castle"), draw("a castle, xlstyle"))
    assert "<alice-embedding-0>" not in pipe.tokenizer_2.get_vocab()


def test_the_limit_before_the_queue_counts_an_embedding_as_the_engine_reads_it(tmp_path, bentoml_home, demo_pipeline):
    """A prompt naming an embedding of 20 vectors: what read_prompts counts before the queue is
    what the engine's chunks hold once the embedding is loaded (20 tokens, not its name's words)."""
    from pathlib import Path

    from alice.engine.embeddings import embedding_shape, spell_embeddings
    from alice.engine.families import FAMILIES
    from alice.engine.prompt_embeds import token_chunks
    from alice.engine.prompt_reading import NamedEmbedding, PromptTooLong, read_prompts

    pipe, _ = demo_pipeline
    save_file({"emb_params": _vectors(64, count=20)}, str(tmp_path / "wide.safetensors"))
    stored = import_checkpoint_file(tmp_path / "wide.safetensors", "wide20")
    widths, vectors = embedding_shape(stored.path / EMBEDDING_FILE)
    assert (widths, vectors) == ((64,), 20)
    named = [NamedEmbedding("wide20", stored.family, widths, vectors)]
    demo = Path(__import__("alice").__file__).parent / "demo_model"
    for reds, chunks in ((90, 8), (93, 9)):
        prompt = " ".join(["red"] * reds) + " Wide20"
        with embeddings_applied(pipe, [("wide20", stored.path / EMBEDDING_FILE)]):
            drawn = token_chunks(pipe, pipe.tokenizer, spell_embeddings(pipe, prompt))
        assert len(drawn) == chunks and sum(len(chunk.tokens) for chunk in drawn) == reds + 20
        if chunks <= 8:
            assert read_prompts(demo, FAMILIES["sd15"], prompt, "", named) == ()
        else:
            with pytest.raises(PromptTooLong, match=f"prompt is {reds + 20} tokens in {chunks} chunks"):
                read_prompts(demo, FAMILIES["sd15"], prompt, "", named)
    # Counted as words, the name would pass: 93 reds and a name of a few tokens fit 8 chunks.
    assert read_prompts(demo, FAMILIES["sd15"], " ".join(["red"] * 93) + " Wide20", "") == ()
