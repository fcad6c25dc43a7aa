"""Laying a loaded transformer-family pipeline out as its memory preset says (alice/engine/presets.py),
and VAE tiling, which the UNet families' loading uses too.

Call `apply_preset` on a pipeline loaded to the CPU (from_pretrained's default), before its first run.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from alice.engine.device import MemoryPreset

logger = logging.getLogger("alice.engine")

if TYPE_CHECKING:  # imported where they run: see alice/engine/__init__.py
    from diffusers import DiffusionPipeline


def apply_preset(pipe: DiffusionPipeline, preset: MemoryPreset, device: str) -> None:
    """Store the listed text encoders in fp8, place each part, enable VAE tiling.

    Whole-pipeline model or sequential offload goes through diffusers' own methods: their hooks
    chain the parts, and diffusers refuses to mix them with group offloading. Group offload is
    per part: the transformer block by block (its blocks are ModuleLists), the text encoders
    layer by layer (transformers' encoders nest their blocks a level down, where block-level
    offload would move the whole encoder at once); with CUDA streams on a GPU, each next
    group copied while the current one computes.
    """
    import torch
    from diffusers.hooks import apply_group_offloading

    compute = getattr(torch, preset.dtype or "float32")
    for name in preset.fp8_storage:
        if is_quantized(getattr(pipe, name)):  # an NF4 or 8-bit T5 is smaller than fp8 already
            logger.info("%s is stored quantized: not in fp8", name)
            continue
        store_in_fp8(getattr(pipe, name), compute)
    where = dict(preset.parts)
    kinds = set(where.values())
    if kinds == {"model"}:
        pipe.enable_model_cpu_offload(device=device)
    elif kinds == {"sequential"}:
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        streams = device.startswith("cuda")
        on_a_card = where.get("transformer") != "cpu"  # "cpu" parts beside a card: text-cpu
        for name, place in where.items():
            module = getattr(pipe, name, None)
            if not isinstance(module, torch.nn.Module):
                continue
            if (place == "cpu" and on_a_card) or (place == "group" and name != "transformer" and is_quantized(module)):
                # A bitsandbytes encoder cannot be group-offloaded (its quantization state would stay
                # behind in RAM): it runs on the CPU instead, where bitsandbytes computes too.
                run_on_cpu(module, compute, device)
            elif place == "gpu":
                module.to(device)
            elif place == "group":
                apply_group_offloading(
                    module, onload_device=torch.device(device), offload_device=torch.device("cpu"),
                    offload_type="block_level" if name == "transformer" else "leaf_level",
                    num_blocks_per_group=1 if name == "transformer" else None,
                    use_stream=streams,
                    # Pinned copies of everything streamed double its RAM (diffusers' docs).
                    low_cpu_mem_usage=streams and not preset.pin_streams,
                )
            elif place != "cpu":
                raise ValueError(f"{name}: {place} offload is whole-pipeline only, not mixed with others")
    if preset.vae_tiling_above:
        _tile(pipe.vae, preset.vae_tiling_above)


def store_in_fp8(module: torch.nn.Module, compute: torch.dtype) -> None:
    """Keep the module's Linear and Conv weights in fp8 between uses, cast up layer by layer.

    transformers keeps some layers in fp32 under fp16 (`_keep_in_fp32_modules`: T5's `wo`, 1B of
    its 4.8B weights) and T5's MLP casts its input to `wo.weight.dtype` before calling `wo`: stored
    in fp8 under diffusers' per-layer casting, that cast would turn the activations to fp8. So
    those layers are cast back to their own dtype around their parent's call instead.
    """
    import torch
    from diffusers.hooks import apply_layerwise_casting
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    kept = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    apply_layerwise_casting(
        module, storage_dtype=torch.float8_e4m3fn, compute_dtype=compute,
        skip_modules_pattern=DEFAULT_SKIP_MODULES_PATTERN + tuple(rf"\.{name}$" for name in kept),
        # Token embeddings stay in the compute dtype: the estimates count them so, and the
        # pipelines take their prompt embeddings' dtype from the encoder's first parameter, the embedding.
        skip_modules_classes=(torch.nn.Embedding,),
    )
    for parent in module.modules():
        for name in kept:
            child = getattr(parent, name, None)
            if isinstance(child, torch.nn.Linear):
                _cast_around(parent, child, torch.float8_e4m3fn)


def _cast_around(parent: torch.nn.Module, layer: torch.nn.Linear, storage: torch.dtype) -> None:
    own = layer.weight.dtype
    layer.weight.data = layer.weight.data.to(storage)

    def up(*_: object) -> None:
        layer.weight.data = layer.weight.data.to(own)

    def down(*_: object) -> None:
        layer.weight.data = layer.weight.data.to(storage)

    parent.register_forward_pre_hook(up)
    parent.register_forward_hook(down)


def _tile(vae: torch.nn.Module, above: int) -> None:
    """AutoencoderKL's tile side is set as for the UNet families; FLUX.2's and Qwen-Image's VAEs
    keep their own."""
    if type(vae).__name__ == "AutoencoderKL":
        enable_vae_tiling(vae, above)
    else:
        vae.enable_tiling()


def enable_vae_tiling(vae: torch.nn.Module, above: int) -> None:
    """Decode (and encode) images wider or taller than `above` pixels in tiles of that side;
    smaller ones whole, exactly as without tiling (diffusers' AutoencoderKL compares each side
    with its `tile_sample_min_size`, the config's sample size unless set). VAEs of other shapes
    (Qwen-Image's video VAE has no `block_out_channels`) keep diffusers' own tile size."""
    vae.enable_tiling()
    if "block_out_channels" not in vae.config or not hasattr(vae, "tile_latent_min_size"):
        logger.info("%s tiles at its own tile size", type(vae).__name__)
        return
    downscale = 2 ** (len(vae.config.block_out_channels) - 1)
    vae.tile_sample_min_size = above
    vae.tile_latent_min_size = above // downscale


_ON_CPU = "_alice_on_cpu"  # on a text encoder run_on_cpu placed: (hook handles, own class, compute dtype, fp8?)


def run_on_cpu(module: torch.nn.Module, compute: torch.dtype, device: str) -> None:
    """Run a text encoder in RAM beside a card: held in bf16 (fp32 when the pipeline computes in
    fp32: bf16 has fp32's range, so T5 needs no fp32 `wo` and no clipping as in fp16, at half of
    fp32's RAM), its inputs moved to the CPU and its outputs to `device` in the compute dtype.

    The pipelines cast the prompt embeddings to the encoder's `dtype` (FluxPipeline's
    `_get_t5_prompt_embeds`, SD3's likewise) and the transformer takes them as they come: an
    encoder held in bf16 beside an fp16 transformer would hand it bf16. So the encoder reports the
    compute dtype (a subclass of its own class with `dtype` overridden), which undo_run_on_cpu reverts.
    An encoder stored in fp8 (layerwise casting) keeps its storage and computes in `compute`.
    """
    import torch

    if getattr(module, _ON_CPU, None) is not None:
        return
    # fp8 storage (layerwise casting) and bitsandbytes' NF4/8-bit weights keep what they are stored in.
    stored_fp8 = is_quantized(module) or any(p.dtype == torch.float8_e4m3fn for p in module.parameters())
    held = compute if stored_fp8 or compute == torch.float32 else torch.bfloat16
    module.to("cpu") if stored_fp8 else module.to("cpu", held)
    own = type(module)
    if held != compute:
        reporting = {"dtype": property(lambda self: compute), "__module__": own.__module__}
        module.__class__ = type(own.__name__, (own,), reporting)
    handles = (
        module.register_forward_pre_hook(_inputs_to_cpu, with_kwargs=True),
        module.register_forward_hook(lambda _module, _args, output: _moved(output, torch.device(device), compute)),
    )
    setattr(module, _ON_CPU, (handles, own, compute, stored_fp8))
    logger.info("%s runs on the CPU in %s, its output moved to %s in %s", own.__name__, held, device, compute)


def is_quantized(module: torch.nn.Module) -> bool:
    """Whether a module holds packed integer weights (bitsandbytes NF4 or 8-bit, GGUF): no dtype
    cast or fp8 storage applies to those."""
    import torch

    return any(p.dtype in (torch.uint8, torch.int8) for p in module.parameters())


def undo_run_on_cpu(module: torch.nn.Module) -> None:
    """Back to an ordinary module in the compute dtype, in RAM (the next layout places it)."""
    found = getattr(module, _ON_CPU, None)
    if found is None:
        return
    handles, own, compute, stored_fp8 = found
    for handle in handles:
        handle.remove()
    module.__class__ = own
    if not stored_fp8:  # fp8-stored weights keep their storage
        module.to(compute)
    delattr(module, _ON_CPU)


def _inputs_to_cpu(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    import torch

    cpu = torch.device("cpu")
    return tuple(_moved(a, cpu, None) for a in args), {k: _moved(v, cpu, None) for k, v in kwargs.items()}


def _moved(value: object, device: torch.device, dtype: torch.dtype | None) -> object:
    """Tensors in `value` (a tensor, a tuple or list, transformers' ModelOutput or a dict) on `device`,
    floating ones in `dtype` (None: as they are)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device, dtype) if dtype is not None and value.is_floating_point() else value.to(device)
    if isinstance(value, dict):  # ModelOutput is an OrderedDict: set in place, its attributes follow
        for key in list(value.keys()):
            value[key] = _moved(value[key], device, dtype)
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_moved(item, device, dtype) for item in value)
    return value
