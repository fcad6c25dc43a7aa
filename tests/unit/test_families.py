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
    UnknownFamily,
    family_named,
    family_of_pipeline,
    lora_family,
    lora_refusal,
)
from alice.engine.scheduler_names import FLOW_SCHEDULERS, SD_SCHEDULERS
from alice.engine.pipeline_configs import native_size
from alice.engine.single_file import CONFIGS


def _write_configs(folder: Path, class_name: str, cross_attention_dim: int) -> Path:
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    (folder / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": cross_attention_dim}))
    return folder


# Each family after the one it grew from; the names the memory presets key on.
UNET_FAMILIES = ("sd15", "sd2", "sdxl")
TRANSFORMER_FAMILIES = ("sd3", "flux1-dev", "flux1-schnell", "chroma", "zimage", "flux2-klein", "qwen-image")


def test_the_families_served_today() -> None:
    assert FAMILY_NAMES == UNET_FAMILIES + TRANSFORMER_FAMILIES and DEFAULT_FAMILY.name == "sd15"
    assert all(name == family.name for name, family in FAMILIES.items())
    assert [name for name in FAMILY_NAMES if FAMILIES[name].is_unet] == list(UNET_FAMILIES)


def _write_index(folder: Path, class_name: str, transformer: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    if transformer is not None:
        (folder / "transformer").mkdir()
        (folder / "transformer" / "config.json").write_text(json.dumps(transformer))
    return folder


@pytest.mark.parametrize(
    ("class_name", "transformer", "family"),
    [
        ("StableDiffusion3Pipeline", {}, "sd3"),
        ("FluxPipeline", {"guidance_embeds": True}, "flux1-dev"),
        ("FluxPipeline", {"guidance_embeds": False}, "flux1-schnell"),
        ("FluxPipeline", {}, "flux1-schnell"),  # the config's default: no guidance embedder
        ("FluxImg2ImgPipeline", {"guidance_embeds": True}, "flux1-dev"),
        ("ChromaPipeline", {}, "chroma"),
        ("ZImagePipeline", {}, "zimage"),
        ("Flux2KleinPipeline", {}, "flux2-klein"),
        ("QwenImagePipeline", {}, "qwen-image"),
    ],
)
def test_detect_transformer_families_from_the_index(tmp_path: Path, class_name: str, transformer: dict,
                                                    family: str) -> None:
    assert detect_family(_write_index(tmp_path / "m", class_name, transformer)) == family


@pytest.mark.parametrize("class_name", ["Flux2Pipeline", "FluxKontextPipeline", "HunyuanDiTPipeline", ""])
def test_a_folder_of_no_known_family_is_an_error(tmp_path: Path, class_name: str) -> None:
    folder = _write_index(tmp_path / "m", class_name, {"guidance_embeds": True})
    with pytest.raises(UnknownFamily, match="of no model family ALICE knows") as error:
        detect_family(folder)
    assert class_name in str(error.value) and "flux1-dev" in str(error.value)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_each_family_is_complete_data(name: str) -> None:
    import diffusers

    family = FAMILIES[name]
    for class_name in (family.text_to_image, family.image_to_image, family.inpaint):
        assert class_name is None or hasattr(diffusers, class_name), class_name
    assert family.default_scheduler in family.schedulers
    assert set(family.schedulers) <= set(SD_SCHEDULERS if family.is_unet else FLOW_SCHEDULERS)
    assert family.guidance in ("cfg", "embedded", "true-cfg", "none")
    assert family.native_size % family.size_multiple == 0
    assert family_of_pipeline(family.text_to_image).text_to_image == family.text_to_image
    facts = family.facts()
    assert facts["family"] == name and facts["schedulers"] == list(family.schedulers)


def test_distilled_families_draw_with_their_own_defaults() -> None:
    assert (FAMILIES["flux1-schnell"].default_steps, FAMILIES["flux1-schnell"].default_guidance) == (4, 0.0)
    assert (FAMILIES["flux1-dev"].guidance, FAMILIES["flux1-dev"].negative_prompt) == ("embedded", False)
    assert FAMILIES["zimage"].default_guidance == 0.0  # above 0 its pipeline runs CFG, twice the cost
    assert FAMILIES["flux2-klein"].image_to_image is None
    assert not any(FAMILIES[name].clip_skip or FAMILIES[name].is_unet for name in TRANSFORMER_FAMILIES)


def test_detect_family_from_configs(tmp_path: Path) -> None:
    assert detect_family(DEMO_MODEL_DIR) == "sd15"
    sdxl = _write_configs(tmp_path / "xl", "StableDiffusionXLPipeline", 2048)
    assert detect_family(sdxl) == "sdxl"
    # the UNet alone is enough (a folder whose index names the plain pipeline class)
    assert detect_family(_write_configs(tmp_path / "xl2", "StableDiffusionPipeline", 2048)) == "sdxl"
    assert detect_family(_write_configs(tmp_path / "v2", "StableDiffusionPipeline", 1024)) == "sd2"
    assert detect_family(_write_configs(tmp_path / "v1", "StableDiffusionPipeline", 768)) == "sd15"
    # the index's class name wins over the UNet; a UNet of another width is taken for SD 1.x (the
    # demo's), a folder without configs for no family at all
    assert detect_family(_write_configs(tmp_path / "xl3", "StableDiffusionXLPipeline", 1024)) == "sdxl"
    assert detect_family(_write_configs(tmp_path / "odd", "StableDiffusionPipeline", 64)) == "sd15"
    with pytest.raises(UnknownFamily):
        detect_family(tmp_path / "nothing")


@pytest.mark.parametrize("name", UNET_FAMILIES)
def test_each_shipped_config_folder_is_its_family_at_its_native_size(name: str) -> None:
    family = FAMILIES[name]
    assert detect_family(CONFIGS / name) == name
    assert native_size(CONFIGS / name) == family.native_size  # what each family was trained at


@pytest.mark.parametrize("name", UNET_FAMILIES)
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


@pytest.mark.parametrize(("key", "label"), [
    ("transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight", "flux1-dev"),  # diffusers / PEFT, ai-toolkit
    ("lora_unet_double_blocks_0_img_mod_lin.lora_down.weight", "flux1-dev"),  # kohya sd-scripts: FLUX.1's modulation
    ("lora_unet_single_blocks_3_linear1.lora_down.weight", "flux1-dev,flux2-klein"),  # BFL names FLUX.2 has too
    ("lora_transformer_single_transformer_blocks_0_attn_to_q.lora_down.weight", "flux1-dev"),  # kohya on diffusers'
    ("double_blocks.0.processor.qkv_lora1.down.weight", "flux1-dev"),  # XLabs / BFL
    ("single_blocks.1.processor.qkv_lora.up.weight", "flux1-dev"),
    ("diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight", "flux1-dev,flux2-klein"),  # ComfyUI, ai-toolkit
    ("transformer.transformer_blocks.0.attn.to_q.lora_A.weight", "sd3,flux1-dev,flux2-klein,qwen-image"),
    ("transformer.transformer_blocks.0.attn2.to_q.lora_A.weight", "sd3"),  # SD3.5 Medium's second attention
    ("lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight", "sd3"),  # kohya's SD3 (diffusers cannot load)
    ("transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj.lora_A.weight", "flux2-klein"),
    ("diffusion_model.layers.0.attention.to_q.lora_A.weight", "zimage"),
    ("lora_unet_noise_refiner_0_attention_to_q.lora_down.weight", "zimage"),
    ("transformer.transformer_blocks.0.img_mlp.net.2.lora_A.weight", "qwen-image"),
    ("lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight", "qwen-image"),
])
def test_a_transformer_lora_is_labelled_with_the_families_its_names_fit(key: str, label: str) -> None:
    # With CLIP-L layers too, named as an SD 1.x LoRA names them: the transformer's names decide.
    assert lora_family([key, "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"]) == label


def test_the_families_most_of_a_files_tensors_fit_win() -> None:
    shared = "transformer.transformer_blocks.0.attn.to_q.lora_A.weight"
    assert lora_family([shared, "transformer.transformer_blocks.0.img_mlp.net.2.lora_A.weight"]) == "qwen-image"
    assert lora_family([shared, "transformer.single_transformer_blocks.0.proj_out.lora_A.weight"]) == "flux1-dev"
    assert lora_family([shared, "transformer.transformer_blocks.0.ff.net.2.lora_A.weight"]) == "sd3,flux1-dev"


def test_which_lora_goes_on_which_model() -> None:
    dev, schnell, sd15, sdxl, sd3, chroma, zimage = (FAMILIES[name] for name in (
        "flux1-dev", "flux1-schnell", "sd15", "sdxl", "sd3", "chroma", "zimage"))
    assert all(family.loras for family in FAMILIES.values())  # diffusers 0.42.1 has a loader for each
    # one transformer (less the guidance embedder, or the modulation), one loader: one kind of LoRA
    assert schnell.takes_loras_of == dev.takes_loras_of == chroma.takes_loras_of == "flux1-dev"
    assert lora_refusal("flux1-dev", dev) is None and lora_refusal("flux1-dev", schnell) is None
    assert lora_refusal("flux1-dev", chroma) is None
    # UNet labels are guesses (an SD 2.x LoRA is labelled sd15): among them the loading decides.
    assert lora_refusal("sd15", sdxl) is None and lora_refusal("sdxl", sd15) is None
    assert lora_refusal("sd15", schnell) == (
        "it was made for Stable Diffusion (UNet) models, and flux1-schnell models take flux1-dev LoRAs")
    assert lora_refusal("flux1-dev", sdxl) == (
        "it was made for flux1-dev models, and sdxl models take Stable Diffusion (UNet) LoRAs")
    # A label of several families goes on a model of any of them, and names them all where it may not.
    assert lora_refusal("sd3,flux1-dev", sd3) is None and lora_refusal("sd3,flux1-dev", chroma) is None
    assert lora_refusal("sd3,flux1-dev", zimage) == (
        "it was made for sd3 or flux1-dev models, and zimage models take zimage LoRAs")
    assert lora_refusal("zimage", sd15) == (
        "it was made for zimage models, and sd15 models take Stable Diffusion (UNet) LoRAs")


def test_unknown_family_refused() -> None:
    assert family_named("sdxl").native_size == 1024
    with pytest.raises(ValueError, match="unknown model family 'sd4'; expected one of sd15, sd2, sdxl, sd3, flux1-dev"):
        family_named("sd4")
