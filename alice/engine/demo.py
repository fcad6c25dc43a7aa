"""The embedded demo model: a tiny, randomly initialised SD-1.5-shaped pipeline.

Same classes and layout as Stable Diffusion 1.5 (CLIP text encoder, UNet2DConditionModel,
AutoencoderKL at 8x downscale), so every loading and generation path runs on it; small
enough (about 4.8 MB) to draw 64x64 in 4 steps in a fraction of a second on a CPU.
It draws noise: it exists to exercise the service, not to make pictures.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from alice.engine.tokenizer import write_offline_clip_tokenizer

DEMO_MODEL_NAME = "alice-demo"
_HIDDEN = 32  # CLIP hidden size = the UNet's cross_attention_dim


def _offline_tokenizer() -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as scratch:
        write_offline_clip_tokenizer(Path(scratch))
        return CLIPTokenizer.from_pretrained(scratch)


def _sd15_scheduler() -> DDIMScheduler:
    """SD 1.5's scheduler settings; each request builds its own sampler from this config."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def build_demo_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """The same weights for the same seed, without touching the global RNG."""
    tokenizer = _offline_tokenizer()
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        # CLIPTextModel reads these ids at construction for its pooled output, so they
        # must be the tokenizer's before the model is built.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # fork_rng restores the global CPU RNG afterwards: building the demo must not change
    # what an unseeded generation elsewhere in the process draws.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8,  # 64 px / 8
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=_HIDDEN,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 32, 32, 32),  # 4 blocks = SD's 8x downscale
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=64,
        )
        text_encoder = CLIPTextModel(text_config)
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=_sd15_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_demo_pipeline(directory: Path, seed: int = 0) -> None:
    """Write the demo pipeline as a diffusers folder with safetensors weights."""
    build_demo_pipeline(seed).save_pretrained(str(directory), safe_serialization=True)
