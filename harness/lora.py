"""A LoRA file for the demo model."""

from __future__ import annotations

from pathlib import Path


def write_demo_lora(folder: Path, seed: int = 0) -> Path:
    """A LoRA file for the demo model's UNet, as diffusers/peft save one, with weights that
    visibly change its pictures."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    from alice.engine.demo import build_demo_architecture

    unet = build_demo_architecture().unet
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        str(folder),
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        weight_name="demo_lora.safetensors",
    )
    return folder / "demo_lora.safetensors"
