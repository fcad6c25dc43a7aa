"""An embedding named on a model of another family: SD 3's two CLIP encoders are as wide as an
SDXL embedding's pair, yet its pipeline loads no textual inversion; it is skipped, and said so."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from alice.engine.embeddings import embedding_shape, embeddings_applied, spell_embeddings
from alice.engine.families import FAMILIES
from alice.engine.prompt_reading import NamedEmbedding, read_prompts


def test_an_sdxl_shaped_embedding_on_sd3_is_skipped_with_a_note(tmp_path, bare, tiny_family):
    pipe = bare("sd3")
    path = tmp_path / "pair.safetensors"
    save_file({"clip_l": torch.randn(3, 32), "clip_g": torch.randn(3, 32)}, str(path))  # the tiny CLIPs' widths
    with embeddings_applied(pipe, [("pair", path)]):  # before: diffusers' AttributeError, the job failed
        assert spell_embeddings(pipe, "a pair of boots") == "a pair of boots"
    widths, vectors = embedding_shape(path)
    notes = read_prompts(tiny_family("sd3"), FAMILIES["sd3"], "a pair of boots", "",
                         [NamedEmbedding("pair", "other", widths, vectors)])
    assert notes == ("prompt: the embedding 'pair' is for other models (vectors 32 + 32 wide) and sd3 models "
                     "take no embeddings: skipped, its name read as words",)
