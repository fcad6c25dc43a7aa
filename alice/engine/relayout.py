"""Laying a loaded pipeline out again in place, in another memory preset: after it ran out of
memory (alice/engine/escalation.py), or back for images smaller than those that did.

Everything diffusers allows is undone and redone on the modules already in memory, so no weight
is read from the store again: accelerate's model and sequential offload hooks
(`remove_all_hooks` puts sequential offload's weights back from its map), diffusers' group
offload hooks (removed as diffusers itself does before re-applying them), then the new placement
as loading would make it. What loading decided once stays: the dtype, fp8 storage of the text
encoders (layerwise casting is not a layout), channels_last, attention slicing, a compiled UNet.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from alice.engine.device import MemoryPreset
from alice.engine.placement import apply_preset, enable_vae_tiling, undo_run_on_cpu

if TYPE_CHECKING:  # imported where they run: see alice/engine/__init__.py
    from diffusers import DiffusionPipeline

logger = logging.getLogger("alice.engine")


def relayout(pipe: DiffusionPipeline, preset: MemoryPreset, device: str) -> None:
    """Lay `pipe` out as `preset` on `device` (a UNet family's preset has no `parts`)."""
    remove_offloading(pipe)
    if preset.parts:
        apply_preset(pipe, replace(preset, fp8_storage=()), device)  # tiles the VAE when the preset says so
    elif preset.cpu_offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif preset.cpu_offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if preset.vae_tiling_above and not preset.parts:
        enable_vae_tiling(pipe.vae, preset.vae_tiling_above)
    elif not preset.vae_tiling_above and hasattr(pipe.vae, "disable_tiling"):
        pipe.vae.disable_tiling()


def remove_offloading(pipe: DiffusionPipeline) -> None:
    """Every offload hook off, every weight in RAM or where it was before offloading."""
    import torch
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.group_offloading import (
        _GROUP_OFFLOADING,
        _LAYER_EXECUTION_TRACKER,
        _LAZY_PREFETCH_GROUP_OFFLOADING,
        _is_group_offload_enabled,
    )

    pipe.remove_all_hooks()
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            undo_run_on_cpu(module)  # text encoders a text-cpu layout ran in RAM
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module) and _is_group_offload_enabled(module):
            registry = HookRegistry.check_if_exists_or_initialize(module)
            for hook in (_GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER, _LAZY_PREFETCH_GROUP_OFFLOADING):
                registry.remove_hook(hook, recurse=True)
            module.to("cpu")  # streamed groups rest in RAM; the new layout moves what it keeps on the card
            logger.debug("group offloading of %s removed", name)
