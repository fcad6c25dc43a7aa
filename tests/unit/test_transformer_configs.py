"""The shipped FLUX.1 schnell and SD 3.5 Medium architecture folders (alice/configs, written by
build_configs.py): each model built from its folder on the meta device has the released model's
parameter count (/work/shared/families.md section 2), the folder is its family's, and the T5
tokenizer stand-in gives ids the real T5 embedding takes, padded to its 512 tokens."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, CLIPTokenizer, T5TokenizerFast

from alice.engine.families import detect_family, family_named
from alice.engine.pipeline_configs import native_size
from alice.engine.single_file import CONFIGS

# folder: family, component -> (class, parameters, buffers); buffers only where they are weights on disk
SHIPPED = {
    "flux1-schnell": ("flux1-schnell", {
        "transformer": ("FluxTransformer2DModel", 11_891_178_560),  # 11.89 B
        "text_encoder": ("CLIPTextModel", 123_060_480),  # CLIP-L 0.12 B
        "text_encoder_2": ("T5EncoderModel", 4_762_310_656),  # T5-v1.1-XXL encoder 4.76 B
        "vae": ("AutoencoderKL", 83_819_683),
    }),
    "sd35-medium": ("sd3", {
        "transformer": ("SD3Transformer2DModel", 2_243_171_520),  # 2.24 B (+ the position buffer below)
        "text_encoder": ("CLIPTextModelWithProjection", 123_650_304),  # CLIP-L and its projection
        "text_encoder_2": ("CLIPTextModelWithProjection", 694_659_840),  # OpenCLIP bigG 0.695 B
        "text_encoder_3": ("T5EncoderModel", 4_762_310_656),
        "vae": ("AutoencoderKL", 83_819_683),
    }),
}
VAE_FACTORS = {"flux1-schnell": (0.3611, 0.1159), "sd35-medium": (1.5305, 0.0609)}


def build_on_meta(folder: Path, component: str) -> torch.nn.Module:
    index = json.loads((folder / "model_index.json").read_text())
    library, class_name = index[component]
    cls = getattr(importlib.import_module(library), class_name)
    with torch.device("meta"):
        if library == "diffusers":
            return cls.from_config(cls.load_config(str(folder / component)))
        return cls(AutoConfig.from_pretrained(str(folder / component)))


@pytest.mark.parametrize("folder_name", sorted(SHIPPED))
def test_each_model_has_the_released_models_parameters(folder_name: str) -> None:
    family, components = SHIPPED[folder_name]
    folder = CONFIGS / folder_name
    for component, (class_name, parameters) in components.items():
        model = build_on_meta(folder, component)
        assert type(model).__name__ == class_name, component
        assert sum(p.numel() for p in model.parameters()) == parameters, component
        if folder_name == "sd35-medium" and component == "transformer":
            # 384 x 384 positions of width 1536: 0.23 B more, as a buffer
            assert sum(b.numel() for b in model.buffers()) == 226_492_416
    assert detect_family(folder) == family
    # As the store reads it: SD3's from its transformer's sample size, FLUX's hard-coded (its family's).
    native = family_named(family)
    assert native_size(folder, native.denoiser, native.native_size) == native.native_size == 1024
    assert not list(folder.rglob("*.safetensors")) and not list(folder.rglob("*.bin"))  # configs only


@pytest.mark.parametrize("folder_name", sorted(SHIPPED))
def test_vae_and_scheduler_are_the_released_ones(folder_name: str) -> None:
    folder = CONFIGS / folder_name
    vae = json.loads((folder / "vae" / "config.json").read_text())
    assert vae["latent_channels"] == 16 and (vae["scaling_factor"], vae["shift_factor"]) == VAE_FACTORS[folder_name]
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    # schnell: a fixed shift of 1 (timestep-distilled); SD 3.5: 3, neither shifting with the resolution
    assert (scheduler["shift"], scheduler["use_dynamic_shifting"]) == (
        (1.0, False) if folder_name == "flux1-schnell" else (3.0, False))


@pytest.mark.parametrize("tokenizer", ["flux1-schnell/tokenizer_2", "sd35-medium/tokenizer_3"])
def test_the_t5_tokenizer_fits_the_real_embedding(tokenizer: str) -> None:
    loaded = T5TokenizerFast.from_pretrained(CONFIGS / tokenizer, local_files_only=True)
    assert len(loaded) == 32100 <= 32128 and loaded.model_max_length == 512
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2)  # T5's own
    ids = loaded("a lighthouse at dusk").input_ids
    assert loaded.convert_ids_to_tokens(ids) == ["▁a", "▁lighthouse", "▁at", "▁dusk", "</s>"]
    padded = loaded("a lighthouse at dusk", padding="max_length", max_length=512, truncation=True).input_ids
    assert len(padded) == 512 and padded[:5] == ids and set(padded[5:]) == {0}
    assert max(loaded("Word " * 600, truncation=True).input_ids) < 32128


@pytest.mark.parametrize("tokenizer", ["flux1-schnell/tokenizer", "sd35-medium/tokenizer", "sd35-medium/tokenizer_2"])
def test_the_clip_tokenizers_are_the_shipped_ones(tokenizer: str) -> None:
    loaded = CLIPTokenizer.from_pretrained(CONFIGS / tokenizer, local_files_only=True)
    assert loaded("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (CONFIGS / tokenizer / "vocab.json").read_bytes() == (CONFIGS / "sdxl/tokenizer/vocab.json").read_bytes()
    assert loaded.pad_token_id == (0 if tokenizer == "sd35-medium/tokenizer_2" else 49407)  # OpenCLIP pads with "!"
