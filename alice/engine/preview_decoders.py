"""Tiny autoencoders for live previews (diffusers' AutoencoderTiny folders: TAESD, TAESDXL, TAESD3,
TAEF1): telling such a folder, which model families it fits, and loading one beside a pipeline.

A tiny autoencoder decodes one latent space: the one of the VAE it was distilled from. Its config
tells only how many latent channels it reads (4 or 16), and both counts are shared by two
released VAEs (SD 1.x/2.x and SDXL; SD3 and FLUX.1), so the family it was made for is named at
import (`--family`), or read from its released name (taesd, taesdxl, taesd3, taef1).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alice.engine.families import FAMILIES
from alice.engine.previews import LATENT_FORMATS

if TYPE_CHECKING:  # imported where they run: see alice/engine/__init__.py
    import torch

logger = logging.getLogger("alice.engine")

TINY_AUTOENCODER_CLASS = "AutoencoderTiny"
CONFIG = "config.json"

# The released tiny autoencoders' names (madebyollin/<name> on Hugging Face), longest first:
# "taesd" is a prefix of the others. Each names the family whose VAE it was distilled from.
_RELEASED_NAMES: tuple[tuple[str, str], ...] = (
    ("taesdxl", "sdxl"), ("taesd3", "sd3"), ("taef1", "flux1-dev"), ("taesd", "sd15"),
)


class NotAPreviewDecoder(ValueError):
    """The folder is no tiny autoencoder that fits the family it is meant for."""


def is_tiny_autoencoder_folder(folder: Path) -> bool:
    """A folder whose config.json names diffusers' AutoencoderTiny (and no pipeline's model_index.json)."""
    config = _config(folder)
    return config is not None and config.get("_class_name") == TINY_AUTOENCODER_CLASS


def families_sharing_latents(family: str) -> list[str]:
    """The families whose denoiser works in the same latent space as `family`'s (one released
    VAE: SD 1.x and 2.x; SDXL; SD3; FLUX.1, Chroma and Z-Image), which one tiny autoencoder
    previews alike; none for a family without a known latent space."""
    latent_format = LATENT_FORMATS.get(family)
    if latent_format is None:
        return []
    return [name for name, other in LATENT_FORMATS.items() if other is latent_format]


def preview_family(folder: Path, family: str | None, hints: tuple[str, ...] = ()) -> str:
    """The family a tiny autoencoder folder is for: `family` when given, else the released name
    (taesd, taesdxl, taesd3, taef1) found in `hints` (the folder's, the model's, the repo's
    names); checked against the latent channels its config reads. NotAPreviewDecoder otherwise."""
    config = _config(folder)
    if config is None or config.get("_class_name") != TINY_AUTOENCODER_CLASS:
        raise NotAPreviewDecoder(f"{folder} is not a tiny autoencoder folder (its config.json names no "
                                 f"{TINY_AUTOENCODER_CLASS})")
    channels = int(config.get("latent_channels", 4))
    if family is None:
        family = _released_family(hints)
    if family is None:
        fits = sorted({name for name, fmt in LATENT_FORMATS.items() if len(fmt.factors) == channels})
        raise NotAPreviewDecoder(
            f"{folder} is a tiny autoencoder of {channels} latent channels, which fits several families' "
            f"latents ({', '.join(fits) or 'none ALICE previews'}): say which with --family"
        )
    if family not in FAMILIES:
        raise NotAPreviewDecoder(f"unknown family {family!r}; one of {', '.join(sorted(LATENT_FORMATS))}")
    latent_format = LATENT_FORMATS.get(family)
    if latent_format is None:
        raise NotAPreviewDecoder(f"{family} models have no previews (their latents are not a released VAE's "
                                 "that a tiny autoencoder decodes)")
    if len(latent_format.factors) != channels:
        raise NotAPreviewDecoder(f"{folder} reads {channels} latent channels; {family} models have "
                                 f"{len(latent_format.factors)}")
    return family


def _released_family(hints: tuple[str, ...]) -> str | None:
    for hint in hints:
        words = re.split(r"[^a-z0-9]+", hint.lower())
        for released, family in _RELEASED_NAMES:
            if released in words or any(word.startswith(released) for word in words):
                return family
    return None


def load_tiny_autoencoder(folder: Path, device: torch.device | str, dtype: torch.dtype) -> Any:
    """An AutoencoderTiny from a local folder, in eval mode on `device` in `dtype` (a few MB)."""
    from diffusers import AutoencoderTiny

    tiny = AutoencoderTiny.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
    return tiny.to(device).eval()


def _config(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / CONFIG
    if (Path(folder) / "model_index.json").exists() or not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None
