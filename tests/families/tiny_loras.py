"""LoRA files for the tiny FLUX.1 transformer (harness/tiny_pipelines.py), as trainers ship
them: diffusers/PEFT names (ai-toolkit, diffusers' scripts) and kohya sd-scripts' names."""

from __future__ import annotations

from pathlib import Path

RANK = 4
# The double-stream blocks' attention (image and text streams) alone: kohya's names for the
# single-stream blocks' fused projection assume FLUX.1's real widths (diffusers' converter
# hard-codes 3072), which the tiny transformer does not have.
DOUBLE_BLOCKS_ONLY = r"transformer_blocks\.\d+\.attn\.(to_[qkv]|add_[qkv]_proj)"
# kohya's fused projection of each stream -> the separate modules diffusers splits it into
KOHYA_QKV = {"img_attn_qkv": ("to_q", "to_k", "to_v"), "txt_attn_qkv": ("add_q_proj", "add_k_proj", "add_v_proj")}


def flux_lora_layers(flux_folder: Path, *, seed: int = 0, targets: str | list[str] = ("to_q", "to_k", "to_v")) -> dict:
    """A trained-looking LoRA for the folder's transformer: peft's layers on `targets` (module name
    suffixes, or a regex of full module names), every weight random and non-zero, so the images
    it draws differ visibly from the plain model's. Returned as peft's state dict (no prefix)."""
    import torch
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig, get_peft_model_state_dict

    transformer = FluxTransformer2DModel.from_pretrained(flux_folder / "transformer")
    targets = targets if isinstance(targets, str) else list(targets)
    transformer.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights=False, target_modules=targets))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return get_peft_model_state_dict(transformer)


def write_diffusers_lora(layers: dict, path: Path) -> Path:
    """Saved as FluxPipeline saves a LoRA: `transformer.<module>.lora_A.weight` / `lora_B`."""
    from diffusers import FluxPipeline

    path.parent.mkdir(parents=True, exist_ok=True)
    FluxPipeline.save_lora_weights(str(path.parent), transformer_lora_layers=layers, weight_name=path.name)
    return path


def write_kohya_lora(layers: dict, path: Path) -> Path:
    """The same double-block layers (DOUBLE_BLOCKS_ONLY) under kohya sd-scripts' names. Kohya trains the fused `qkv`
    projection of a block with one down and one up matrix; peft's separate q, k and v layers of
    rank r are that projection at rank 3r with the downs stacked and the ups on the diagonal (the
    layout diffusers' converter splits back, exactly). `alpha` = rank: scale 1, as peft's."""
    import torch
    from safetensors.torch import save_file

    weights = {}
    blocks = sorted({int(key.split(".")[1]) for key in layers if key.startswith("transformer_blocks.")})
    for index in blocks:
        for fused, modules in KOHYA_QKV.items():
            parts = [f"transformer_blocks.{index}.attn.{module}" for module in modules]
            down = torch.cat([layers[f"{part}.lora_A.weight"] for part in parts])
            up = torch.block_diag(*[layers[f"{part}.lora_B.weight"] for part in parts])
            name = f"lora_unet_double_blocks_{index}_{fused}"
            weights[f"{name}.lora_down.weight"] = down.contiguous()
            weights[f"{name}.lora_up.weight"] = up.contiguous()
            weights[f"{name}.alpha"] = torch.tensor(float(down.shape[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path))
    return path
