"""Loading diffusers pipelines from local folders onto the chosen device."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoPipelineForText2Image, DiffusionPipeline

logger = logging.getLogger("alice.engine")


@dataclass(frozen=True)
class DevicePlacement:
    """Where pipelines run and in which precision."""

    device: str
    dtype: torch.dtype

    @property
    def is_gpu(self) -> bool:
        return self.device.startswith("cuda")


def choose_placement(device: str = "auto", dtype: str = "auto") -> DevicePlacement:
    """CUDA in half precision when a GPU is present, else the CPU in float32.

    bf16 is preferred over fp16 where the card supports it: it has fp32's range, so
    SD's VAE does not overflow into black images.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        if device.startswith("cuda"):
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float32"  # half precision on the CPU is slower and less accurate
    return DevicePlacement(device=device, dtype=getattr(torch, dtype))


def load_pipeline(folder: Path, placement: DevicePlacement | None = None) -> DiffusionPipeline:
    """Load a diffusers pipeline folder (SD 1.x/2.x or SDXL) fully offline."""
    placement = placement or choose_placement()
    pipe = AutoPipelineForText2Image.from_pretrained(
        str(folder), dtype=placement.dtype, local_files_only=True
    )
    pipe.to(placement.device)
    pipe.set_progress_bar_config(disable=True)
    logger.info("loaded pipeline %s on %s (%s)", folder.name, placement.device, placement.dtype)
    return pipe
