"""What a diffusers pipeline folder's config files say, read without loading any weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_config(path: Path) -> dict[str, Any]:
    """A JSON config as a dict; {} when it is missing or unreadable, so a half-written folder is
    described by defaults and rejected by the loader, not by a parse error here."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def native_size(folder: Path, denoiser: str = "unet", fallback: int = 512) -> int:
    """The image side a pipeline folder was trained for, as diffusers derives its default:
    the denoiser's (UNet's, SD3's transformer's) latent sample size times the VAE's downscale
    (2 per block after the first). `fallback` where its config has none: the FLUX-like
    pipelines hard-code theirs."""
    sample = read_config(folder / denoiser / "config.json").get("sample_size")
    blocks = read_config(folder / "vae" / "config.json").get("block_out_channels") or [0] * 4
    if isinstance(sample, list):  # some configs give [height, width]
        sample = sample[0]
    return int(sample) * 2 ** (len(blocks) - 1) if isinstance(sample, int) and sample > 0 else fallback


def text_encoder_layers(folder: Path) -> int | None:
    """The fewest hidden layers of a pipeline folder's text encoders (SDXL has two)."""
    layers = [
        read_config(folder / encoder / "config.json").get("num_hidden_layers")
        for encoder in ("text_encoder", "text_encoder_2")
    ]
    known = [count for count in layers if isinstance(count, int) and count > 0]
    return min(known) if known else None


# An inpainting checkpoint's UNet takes the noisy latents (4), the mask (1) and the masked
# image's latents (4): 9 input channels, where a text-to-image UNet takes 4.
INPAINTING_UNET_CHANNELS = 9


def is_inpainting_checkpoint(folder: Path) -> bool:
    """Whether a pipeline folder is a dedicated inpainting checkpoint (SD 1.5/2 inpainting, SDXL
    inpainting): its UNet takes the mask and the masked image besides the latents."""
    return read_config(folder / "unet" / "config.json").get("in_channels") == INPAINTING_UNET_CHANNELS
