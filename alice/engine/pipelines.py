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
from transformers import PreTrainedModel

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


@dataclass(frozen=True)
class MemoryOptions:
    """How a pipeline is laid out on the device: speed by default, savings for small cards."""

    attention_slicing: bool = False  # attention in slices: less peak memory, a little slower
    vae_tiling: bool = False  # decode large images tile by tile
    cpu_offload: str = "none"  # none | model (whole models move to the GPU in turn) | sequential (layer by layer)
    channels_last: bool = True  # faster convolutions on CUDA
    compile_unet: bool = False  # torch.compile the UNet: faster steps after a slow first run


def load_pipeline(
    folder: Path, placement: DevicePlacement | None = None, options: MemoryOptions = MemoryOptions()
) -> DiffusionPipeline:
    """Load a diffusers pipeline folder (SD 1.x/2.x or SDXL) fully offline onto the device.

    Attention runs through torch's scaled_dot_product_attention, diffusers' default on torch 2.
    """
    placement = placement or choose_placement()
    diffusers_logging.disable_progress_bar()
    # Weights that stay in host memory (CPU runs, CPU offload) are read in whole. Memory-mapped,
    # they are file pages the kernel may drop while the model idles (memory pressure, proactive
    # reclaim) and fault back in during the next generation: side by side on this project's VM
    # (bench.overhead --full-size), the server's SD 1.5 runs took 1.25x the bare call with mapped
    # weights and 0.99x with weights read in. On the GPU the mapping is read once, into the card.
    in_host_memory = not placement.is_gpu or options.cpu_offload != "none"
    pipe = AutoPipelineForText2Image.from_pretrained(
        str(folder), dtype=placement.dtype, local_files_only=True, disable_mmap=in_host_memory
    )
    if in_host_memory:
        _copy_mapped_text_encoders(pipe)
    if placement.is_gpu and options.cpu_offload == "model":
        pipe.enable_model_cpu_offload(device=placement.device)
    elif placement.is_gpu and options.cpu_offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=placement.device)
    else:
        pipe.to(placement.device)
    if options.attention_slicing:
        pipe.enable_attention_slicing()
    if options.vae_tiling:
        pipe.vae.enable_tiling()
    if placement.is_gpu and options.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
    if options.compile_unet:
        pipe.unet = torch.compile(pipe.unet, mode="max-autotune-no-cudagraphs")
    pipe.set_progress_bar_config(disable=True)
    logger.info("loaded pipeline %s on %s (%s)", folder.name, placement.device, placement.dtype)
    return pipe


def _copy_mapped_text_encoders(pipe: DiffusionPipeline) -> None:
    """Diffusers passes `disable_mmap` to its own models only; the transformers text encoders
    still map their files, so their tensors are copied into the process's memory here."""
    with torch.no_grad():
        for component in pipe.components.values():
            if isinstance(component, PreTrainedModel):
                for tensor in (*component.parameters(), *component.buffers()):
                    tensor.data = tensor.data.clone()


def pipeline_bytes(pipe: DiffusionPipeline) -> int:
    """Memory its weights take: the sum over every torch module of the pipeline."""
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in (*component.parameters(), *component.buffers()))
    return total


def default_cache_budget(placement: DevicePlacement) -> int:
    """Three quarters of the GPU's memory (the rest is for activations), or half the RAM."""
    if placement.is_gpu:
        return int(torch.cuda.get_device_properties(placement.device).total_memory * 0.75)
    import psutil

    return int(psutil.virtual_memory().total * 0.5)


@dataclass
class LoadedPipeline:
    """A pipeline in memory with what a run needs to know about it."""

    name: str
    pipe: DiffusionPipeline
    base_scheduler_config: Any  # the model's own; each run builds its scheduler from it
    load_seconds: float
    size_bytes: int
    _image_to_image: DiffusionPipeline | None = None

    @property
    def image_to_image(self) -> DiffusionPipeline:
        """The img2img variant, sharing the loaded modules (no second copy of the weights)."""
        if self._image_to_image is None:
            self._image_to_image = AutoPipelineForImage2Image.from_pipe(self.pipe)
            self._image_to_image.set_progress_bar_config(disable=True)
        return self._image_to_image


class PipelineCache:
    """The pipelines in memory within a byte budget, least recently used dropped first.

    The pipeline in use is never dropped, so one model always fits whatever the budget.
    Not thread-safe on purpose: only the generation worker touches it, so a model
    switch can never overlap a running generation.
    """

    def __init__(
        self,
        locate: Callable[[str], Path],
        placement: DevicePlacement,
        budget_bytes: int,
        options: MemoryOptions = MemoryOptions(),
        on_load: Callable[[str, float], None] | None = None,
    ) -> None:
        self._locate = locate
        self._placement = placement
        self._budget = budget_bytes
        self._options = options
        self._on_load = on_load or (lambda name, seconds: None)
        self._loaded: OrderedDict[str, LoadedPipeline] = OrderedDict()

    @property
    def placement(self) -> DevicePlacement:
        return self._placement

    def names(self) -> list[str]:
        return list(self._loaded)

    def used_bytes(self) -> int:
        return sum(loaded.size_bytes for loaded in self._loaded.values())

    def get(self, name: str) -> LoadedPipeline:
        """The pipeline of a stored model, loading it (and evicting others) if needed."""
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return self._loaded[name]
        folder = self._locate(name)
        # Make room for roughly its weights on disk before loading, then settle exactly.
        self._evict_until(self._budget - _weights_on_disk(folder))
        started = time.perf_counter()
        pipe = load_pipeline(folder, self._placement, self._options)
        loaded = LoadedPipeline(name, pipe, pipe.scheduler.config, time.perf_counter() - started, pipeline_bytes(pipe))
        self._evict_until(self._budget - loaded.size_bytes)
        self._loaded[name] = loaded
        self._on_load(name, loaded.load_seconds)
        return loaded

    def drop(self, name: str) -> bool:
        """Unload one model; False if it was not loaded."""
        if self._loaded.pop(name, None) is None:
            return False
        self.release_cached_memory()
        return True

    def drop_all_but(self, name: str | None) -> None:
        """Unload every other model (after running out of memory)."""
        for other in [n for n in self._loaded if n != name]:
            del self._loaded[other]
        self.release_cached_memory()

    def _evict_until(self, allowed_bytes: int) -> None:
        evicted = False
        while self._loaded and self.used_bytes() > max(0, allowed_bytes):
            name, _ = self._loaded.popitem(last=False)
            logger.info("unloading model %s to stay within the model cache budget", name)
            evicted = True
        if evicted:
            self.release_cached_memory()

    def release_cached_memory(self) -> None:
        """Return freed memory to the device (after an eviction or an out-of-memory error)."""
        gc.collect()
        if self._placement.is_gpu:
            torch.cuda.empty_cache()


def _weights_on_disk(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
