"""Model families (alice/engine/families.py): each one entry, told apart by its weights' configs
and tensor names, never by a file name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alice.engine.demo import DEMO_MODEL_DIR
from alice.engine.families import (
    DEFAULT_FAMILY,
    FAMILIES,
    FAMILY_NAMES,
    checkpoint_family,
    detect_family,
    family_named,
    lora_family,
)
from alice.engine.pipeline_configs import native_size
from alice.engine.single_file import CONFIGS


def _write_configs(folder: Path, class_name: str, cross_attention_dim: int) -> Path:
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    (folder / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": cross_attention_dim}))
    return folder


def test_the_families_served_today() -> None:
    assert FAMILY_NAMES == ("sd15", "sd2", "sdxl") and DEFAULT_FAMILY.name == "sd15"
    assert all(name == family.name for name, family in FAMILIES.items())


def test_detect_family_from_configs(tmp_path: Path) -> None:
    assert detect_family(DEMO_MODEL_DIR) == "sd15"
    sdxl = _write_configs(tmp_path / "xl", "StableDiffusionXLPipeline", 2048)
    assert detect_family(sdxl) == "sdxl"
    # the UNet alone is enough (a folder whose index names the plain pipeline class)
    assert detect_family(_write_configs(tmp_path / "xl2", "StableDiffusionPipeline", 2048)) == "sdxl"
    assert detect_family(_write_configs(tmp_path / "v2", "StableDiffusionPipeline", 1024)) == "sd2"
    assert detect_family(_write_configs(tmp_path / "v1", "StableDiffusionPipeline", 768)) == "sd15"
    # the index's class name wins over the UNet, and a folder without configs is taken for SD 1.x
    assert detect_family(_write_configs(tmp_path / "xl3", "StableDiffusionXLPipeline", 1024)) == "sdxl"
    assert detect_family(tmp_path / "nothing") == "sd15"


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_each_shipped_config_folder_is_its_family_at_its_native_size(name: str) -> None:
    family = FAMILIES[name]
    assert detect_family(CONFIGS / name) == name
    assert native_size(CONFIGS / name) == family.native_size  # what each family was trained at


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_each_family_names_pipelines_diffusers_has(name: str) -> None:
    import diffusers

    family = FAMILIES[name]
    index_class = json.loads((CONFIGS / name / "model_index.json").read_text())["_class_name"]
    assert family.text_to_image == index_class
    assert getattr(diffusers, family.text_to_image) and getattr(diffusers, family.image_to_image)


def test_checkpoint_family_from_tensor_names() -> None:
    attn2 = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    clip_l = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
    assert checkpoint_family({attn2: [2, 768], clip_l: [77, 2]}) == "sd15"
    assert checkpoint_family({attn2: [2, 1024], "cond_stage_model.model.text_projection": [2, 2]}) == "sd2"
    assert checkpoint_family({attn2: [2, 1024], clip_l: [77, 2]}) == "sd2"  # the width tells SD 2.x
    assert checkpoint_family({attn2: [2, 2048], "conditioner.embedders.1.model.text_projection": [2, 2]}) == "sdxl"
    assert checkpoint_family({attn2: [2, 768]}) is None  # no text encoder: no family
    assert checkpoint_family({attn2: [2, 1280], "conditioner.embedders.0.model.text_projection": [2, 2]}) is None


def test_lora_family_from_tensor_names() -> None:
    assert lora_family(["lora_unet_x.lora_down.weight", "lora_te1_y.lora_down.weight"]) == "sd15"
    assert lora_family(["lora_unet_x.lora_down.weight", "lora_te2_y.lora_down.weight"]) == "sdxl"  # kohya
    assert lora_family(["unet.x.lora_A.weight", "text_encoder_2.y.lora_A.weight"]) == "sdxl"  # diffusers / peft
    assert lora_family(["unet.x.lora_A.weight"]) == "sd15"


def test_unknown_family_refused() -> None:
    assert family_named("sdxl").native_size == 1024
    with pytest.raises(ValueError, match="unknown model family 'sd3'; expected one of sd15, sd2, sdxl"):
        family_named("sd3")
