"""A transformer-only file's family from its tensor names, in each naming files come in."""

from __future__ import annotations

import pytest

from alice.engine.families import FAMILIES, transformer_family

# A few real tensor names of each (BFL's FLUX.1 release files, ComfyUI's prefixed copies,
# Stability's SD3 files, Chroma's, and diffusers' own names as the tiny pipelines save them).
FLUX_BFL = ["img_in.weight", "time_in.in_layer.weight", "vector_in.in_layer.weight",
            "double_blocks.0.img_attn.qkv.weight", "double_blocks.0.img_attn.norm.key_norm.scale",
            "single_blocks.0.linear1.weight", "final_layer.linear.weight"]
FLUX_DIFFUSERS = ["x_embedder.weight", "time_text_embed.timestep_embedder.linear_1.weight",
                  "time_text_embed.text_embedder.linear_1.weight", "transformer_blocks.0.attn.to_q.weight",
                  "single_transformer_blocks.0.attn.to_q.weight", "proj_out.weight"]


@pytest.mark.parametrize(
    ("names", "family"),
    [
        (FLUX_BFL + ["guidance_in.in_layer.weight"], "flux1-dev"),
        (FLUX_BFL, "flux1-schnell"),
        (["model.diffusion_model." + name for name in FLUX_BFL + ["guidance_in.in_layer.weight"]], "flux1-dev"),
        (FLUX_DIFFUSERS + ["time_text_embed.guidance_embedder.linear_1.weight"], "flux1-dev"),
        (FLUX_DIFFUSERS, "flux1-schnell"),
        (["model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias", "x_embedder.proj.weight"], "sd3"),
        (["pos_embed.proj.weight", "transformer_blocks.0.attn.to_q.weight",
          "time_text_embed.text_embedder.linear_1.weight", "context_embedder.weight"], "sd3"),
        (["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight",
          "distilled_guidance_layer.in_proj.weight"], "chroma"),
        (["transformer_blocks.0.attn.to_q.weight", "single_transformer_blocks.0.attn.to_q.weight",
          "distilled_guidance_layer.in_proj.weight"], "chroma"),
        (["layers.0.adaLN_modulation.0.weight", "noise_refiner.0.attention.to_q.weight",
          "context_refiner.0.attention.to_q.weight"], "zimage"),
        (["double_stream_modulation_img.linear.weight", "single_stream_modulation.linear.weight"], "flux2-klein"),
        (["img_in.weight", "txt_norm.weight", "transformer_blocks.0.img_mod.1.weight"], "qwen-image"),
    ],
)
def test_each_naming_tells_its_family(names: list[str], family: str) -> None:
    assert transformer_family(names) == family


def test_names_of_no_transformer_fit_none() -> None:
    assert transformer_family([]) is None
    assert transformer_family(["encoder.conv_in.weight", "decoder.conv_out.weight"]) is None  # a VAE
    assert transformer_family(["model.diffusion_model.input_blocks.0.0.weight"]) is None  # an SD UNet


def test_only_transformer_families_have_signatures() -> None:
    assert {f.name for f in FAMILIES.values() if f.transformer_keys} == {
        f.name for f in FAMILIES.values() if f.denoiser == "transformer"
    }
