"""The embedded demo model: a tiny SD-1.5-shaped pipeline trained to draw coloured shapes.

Same classes and layout as Stable Diffusion 1.5 (CLIP text encoder, UNet2DConditionModel,
AutoencoderKL at 8x downscale, a CLIP BPE tokenizer), so every loading and generation path
runs on it; small enough to draw 64x64 in a fraction of a second on a CPU. Its trained
weights live in `alice/demo_model/` (made by `alice models train-demo`, see
`alice/demo_training/`); `build_demo_architecture` makes the same model untrained.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from alice.engine.tokenizer import COMMON_WORDS, write_offline_clip_tokenizer

if TYPE_CHECKING:  # imported where they run: see alice/engine/__init__.py
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

DEMO_MODEL_NAME = "alice-demo"
DEMO_MODEL_DIR = Path(__file__).resolve().parent.parent / "demo_model"
_HIDDEN = 64  # CLIP hidden size = the UNet's cross_attention_dim
# 16 tokens hold every caption the demo was trained on; 77 made each UNet step ~45% slower.
_MAX_TOKENS = 16


def _offline_tokenizer(whole_words: tuple[str, ...]) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        write_offline_clip_tokenizer(Path(scratch), _MAX_TOKENS, whole_words)
        return CLIPTokenizer.from_pretrained(scratch)


def demo_scheduler() -> DDIMScheduler:
    """The noise schedule the demo was trained with; each request builds its sampler from it.

    Linear betas up to 0.02 (not SD's scaled_linear to 0.012) end in almost pure noise, so
    flat colours cannot leak through the last training step into what sampling expects.
    """
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def build_demo_architecture(seed: int = 0, whole_words: tuple[str, ...] = COMMON_WORDS) -> StableDiffusionPipeline:
    """The demo model untrained: the same weights for the same seed, global RNG untouched.

    `whole_words` become single tokens (the trainer passes its vocabulary).
    """
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _offline_tokenizer(whole_words)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_HIDDEN,
        intermediate_size=4 * _HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=_MAX_TOKENS,
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
            block_out_channels=(64, 128),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=_HIDDEN,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 32, 64, 64),  # 4 blocks = SD's 8x downscale
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=1,
            # One channel per group would normalise flat colours away; 4 groups keep them.
            norm_num_groups=4,
            sample_size=64,
        )
        text_encoder = CLIPTextModel(text_config)
        # The text encoder stays frozen and random. At the default init (std 0.02) "red" and
        # "blue" came out 0.9+ cosine alike and the UNet could not tell them apart; embeddings
        # drawn at std 1 keep different words apart.
        embeddings = text_encoder.get_input_embeddings()
        positions = text_encoder.get_submodule("embeddings.position_embedding")
        torch.nn.init.normal_(embeddings.weight, std=1.0)
        torch.nn.init.normal_(positions.weight, std=1.0)
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=demo_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_untrained_demo(directory: Path, seed: int = 0) -> None:
    """Write the untrained demo as a diffusers folder: another small model, for tests and benches."""
    build_demo_architecture(seed).save_pretrained(str(directory), safe_serialization=True)


def save_demo_pipeline(directory: Path) -> None:
    """Copy the trained demo model's diffusers folder to `directory`."""
    shutil.copytree(DEMO_MODEL_DIR, directory, dirs_exist_ok=True)
