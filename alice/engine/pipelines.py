"""Loading diffusers pipelines from local folders onto the chosen device."""

from __future__ import annotations

import gc
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image, DiffusionPipeline
from diffusers.utils import logging as diffusers_logging

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
    diffusers_logging.disable_progress_bar()
    pipe = AutoPipelineForText2Image.from_pretrained(
        str(folder), dtype=placement.dtype, local_files_only=True
    )
    pipe.to(placement.device)
    pipe.set_progress_bar_config(disable=True)
    logger.info("loaded pipeline %s on %s (%s)", folder.name, placement.device, placement.dtype)
    return pipe


@dataclass
class LoadedPipeline:
    """A pipeline in memory with what a run needs to know about it."""

    name: str
    pipe: DiffusionPipeline
    base_scheduler_config: Any  # the model's own; each run builds its scheduler from it
    load_seconds: float
    _image_to_image: DiffusionPipeline | None = None

    @property
    def image_to_image(self) -> DiffusionPipeline:
        """The img2img variant, sharing the loaded modules (no second copy of the weights)."""
        if self._image_to_image is None:
            self._image_to_image = AutoPipelineForImage2Image.from_pipe(self.pipe)
            self._image_to_image.set_progress_bar_config(disable=True)
        return self._image_to_image


class PipelineCache:
    """The pipelines in memory, least recently used dropped first beyond `max_loaded`.

    Not thread-safe on purpose: only the generation worker touches it, so a model
    switch can never overlap a running generation.
    """

    def __init__(
        self,
        locate: Callable[[str], Path],
        placement: DevicePlacement,
        max_loaded: int = 1,
        on_load: Callable[[str, float], None] | None = None,
    ) -> None:
        self._locate = locate
        self._on_load = on_load or (lambda name, seconds: None)
        self._placement = placement
        self._max_loaded = max_loaded
        self._loaded: OrderedDict[str, LoadedPipeline] = OrderedDict()

    @property
    def placement(self) -> DevicePlacement:
        return self._placement

    def names(self) -> list[str]:
        return list(self._loaded)

    def get(self, name: str) -> LoadedPipeline:
        """The pipeline of a stored model, loading it (and evicting another) if needed."""
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return self._loaded[name]
        folder = self._locate(name)
        while len(self._loaded) >= self._max_loaded:
            evicted, _ = self._loaded.popitem(last=False)
            logger.info("unloading model %s to make room", evicted)
            self.release_cached_memory()
        started = time.perf_counter()
        pipe = load_pipeline(folder, self._placement)
        loaded = LoadedPipeline(name, pipe, pipe.scheduler.config, time.perf_counter() - started)
        self._loaded[name] = loaded
        self._on_load(name, loaded.load_seconds)
        return loaded

    def release_cached_memory(self) -> None:
        """Return freed memory to the device (after an eviction or an out-of-memory error)."""
        gc.collect()
        if self._placement.is_gpu:
            torch.cuda.empty_cache()
