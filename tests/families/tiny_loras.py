"""LoRA files for the tiny transformers (harness/tiny_pipelines.py), as trainers ship them:
diffusers/PEFT names (ai-toolkit's FLUX.1, diffusers' and SimpleTuner's scripts), kohya
sd-scripts' and ComfyUI's names (`lora_unet_double_blocks_0_img_attn_qkv`,
`diffusion_model.double_blocks.0.img_attn.qkv`), XLabs' (`double_blocks.0.processor.qkv_lora1`),
and the renamings other families' trainers use (`diffusion_model.layers.0.attention.to_q`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

RANK = 4
# The double-stream blocks' attention (image and text streams) alone: kohya's names for the
# single-stream blocks' fused projection assume FLUX.1's real widths (diffusers' converter
# hard-codes 3072), which the tiny transformer does not have.
DOUBLE_BLOCKS_ONLY = r"transformer_blocks\.\d+\.attn\.(to_[qkv]|add_[qkv]_proj)"
# BFL's fused projection of each stream -> the separate modules diffusers splits it into
FUSED_QKV = {"img_attn": ("to_q", "to_k", "to_v"), "txt_attn": ("add_q_proj", "add_k_proj", "add_v_proj")}


def lora_layers(folder: Path, *, seed: int = 0, targets: str | list[str] | tuple[str, ...] = ("to_q", "to_k", "to_v"),
                shared_down: bool = False) -> dict:
    """A trained-looking LoRA for the pipeline folder's transformer (of whatever family): peft's
    layers on `targets` (module name suffixes, or a regex of full module names), every weight
    random and non-zero, so the images it draws differ visibly from the plain model's. With
    `shared_down`, the q, k and v layers of each stream share one down matrix, as XLabs' and
    ai-toolkit's fused projections do. Returned as peft's state dict (no prefix)."""
    import diffusers
    import torch
    from peft import LoraConfig, get_peft_model_state_dict

    config = json.loads((folder / "transformer" / "config.json").read_text())
    transformer = getattr(diffusers, config["_class_name"]).from_pretrained(folder / "transformer")
    targets = targets if isinstance(targets, str) else list(targets)
    transformer.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights=False, target_modules=targets))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    layers = get_peft_model_state_dict(transformer)
    if shared_down:
        for key in [key for key in layers if key.endswith((".to_q.lora_A.weight", ".add_q_proj.lora_A.weight"))]:
            for q, other in (("to_q", ("to_k", "to_v")), ("add_q_proj", ("add_k_proj", "add_v_proj"))):
                for module in other:
                    if f".{q}." in key and (twin := key.replace(f".{q}.", f".{module}.")) in layers:
                        layers[twin] = layers[key].clone()
    return layers


def flux_lora_layers(flux_folder: Path, *, seed: int = 0, targets: str | list[str] = ("to_q", "to_k", "to_v")) -> dict:
    """`lora_layers` of a FLUX.1 folder."""
    return lora_layers(flux_folder, seed=seed, targets=targets)


def write_diffusers_lora(layers: dict, path: Path) -> Path:
    """Saved as diffusers' pipelines save a LoRA (FluxPipeline's, SD3's, Qwen-Image's... alike):
    `transformer.<module>.lora_A.weight` / `lora_B`."""
    from diffusers import FluxPipeline

    path.parent.mkdir(parents=True, exist_ok=True)
    FluxPipeline.save_lora_weights(str(path.parent), transformer_lora_layers=layers, weight_name=path.name)
    return path


def _double_blocks(layers: dict) -> list[int]:
    return sorted({int(key.split(".")[1]) for key in layers if key.startswith("transformer_blocks.")})


def _save(weights: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in weights.items()}, str(path))
    return path


def write_kohya_lora(layers: dict, path: Path, names: str = "kohya") -> Path:
    """The same double-block layers (DOUBLE_BLOCKS_ONLY) under BFL's block names, as kohya sd-scripts
    (`names="kohya"`: lora_unet_double_blocks_0_img_attn_qkv.lora_down, with alpha) or ComfyUI
    (`"comfyui"`: diffusion_model.double_blocks.0.img_attn.qkv.lora_down, with alpha; `"comfyui-peft"`:
    the same names with lora_A/lora_B and no alpha) write them. They train the fused `qkv`
    projection of a block with one down and one up matrix; peft's separate q, k and v layers of
    rank r are that projection at rank 3r with the downs stacked and the ups on the diagonal (the
    layout diffusers' converter splits back, exactly). `alpha` = rank: scale 1, as peft's."""
    import torch

    down_name, up_name = ("lora_A", "lora_B") if names == "comfyui-peft" else ("lora_down", "lora_up")
    weights = {}
    for index in _double_blocks(layers):
        for fused, modules in FUSED_QKV.items():
            parts = [f"transformer_blocks.{index}.attn.{module}" for module in modules]
            down = torch.cat([layers[f"{part}.lora_A.weight"] for part in parts])
            up = torch.block_diag(*[layers[f"{part}.lora_B.weight"] for part in parts])
            name = (f"lora_unet_double_blocks_{index}_{fused}_qkv" if names == "kohya"
                    else f"diffusion_model.double_blocks.{index}.{fused}.qkv")
            weights[f"{name}.{down_name}.weight"] = down
            weights[f"{name}.{up_name}.weight"] = up
            if names != "comfyui-peft":
                weights[f"{name}.alpha"] = torch.tensor(float(down.shape[0]))
    return _save(weights, path)


def write_shared_down_lora(layers: dict, path: Path, names: str) -> Path:
    """Double-block q, k, v layers made with `shared_down` as one fused projection of rank r: one
    down matrix and the ups stacked, as XLabs (`names="xlabs"`: double_blocks.0.processor.qkv_lora1
    .down/.up, image stream; qkv_lora2, text stream) and ai-toolkit's FLUX.2 LoRAs (`"ai-toolkit"`:
    diffusion_model.double_blocks.0.img_attn.qkv.lora_A/lora_B) write them. No alpha: scale 1."""
    import torch

    weights = {}
    for index in _double_blocks(layers):
        for stream, (fused, modules) in enumerate(FUSED_QKV.items(), start=1):
            parts = [f"transformer_blocks.{index}.attn.{module}" for module in modules]
            down = layers[f"{parts[0]}.lora_A.weight"]
            assert all(torch.equal(down, layers[f"{part}.lora_A.weight"]) for part in parts), "make it with shared_down"
            up = torch.cat([layers[f"{part}.lora_B.weight"] for part in parts])
            if names == "xlabs":
                name, matrices = f"double_blocks.{index}.processor.qkv_lora{stream}", ("down", "up")
            else:
                name, matrices = f"diffusion_model.double_blocks.{index}.{fused}.qkv", ("lora_A", "lora_B")
            weights[f"{name}.{matrices[0]}.weight"], weights[f"{name}.{matrices[1]}.weight"] = down, up
    return _save(weights, path)


def write_renamed_lora(layers: dict, path: Path, rename: Callable[[str], str], *, kohya: bool = False) -> Path:
    """Each peft module name renamed (`rename("layers.0.attention.to_q")`), with peft's lora_A/lora_B,
    or with kohya's lora_down/lora_up and an alpha of the rank (scale 1)."""
    import torch

    weights = {}
    for key, value in layers.items():
        module, matrix = key.rsplit(".lora_", 1)  # "<module>", "A.weight"
        name = rename(module)
        if kohya:
            weights[f"{name}.{'lora_down' if matrix.startswith('A') else 'lora_up'}.weight"] = value
            if matrix.startswith("A"):
                weights[f"{name}.alpha"] = torch.tensor(float(value.shape[0]))
        else:
            weights[f"{name}.lora_{matrix}"] = value
    return _save(weights, path)
