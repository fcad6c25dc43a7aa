"""The model families ALICE serves, each one entry: how its weights are recognised (a diffusers
folder, a single-file checkpoint, a LoRA) and which diffusers pipelines draw with it.

A new family is a new `Family` in FAMILIES (after the one it grew from) plus its tests. Torch-free:
the model store reads a model's family when it imports it, before any pipeline is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from alice.engine.pipeline_configs import read_config


@dataclass(frozen=True)
class Family:
    """One model family, as data."""

    name: str  # as the store's labels, the memory presets and the API say it
    text_to_image: str  # diffusers pipeline class names
    image_to_image: str
    native_size: int  # the image side its released checkpoints were trained at
    # A diffusers folder: model_index.json `_class_name` prefixes only this family's folders have,
    # else the UNet config's `cross_attention_dim` (the width of its text encoders' output).
    index_classes: tuple[str, ...] = ()
    cross_attention_dim: int | None = None
    # A single-file checkpoint: tensor name prefixes of its own text encoder(s), or the UNet's
    # cross-attention width where that alone tells it (an SD 2.x file can name its text
    # encoder's tensors as SD 1.x does).
    checkpoint_prefixes: tuple[str, ...] = ()
    checkpoint_cross_attention: int | None = None
    # A LoRA file: tensor name prefixes only this family's LoRAs have.
    lora_prefixes: tuple[str, ...] = ()


SD15 = Family(
    name="sd15",
    text_to_image="StableDiffusionPipeline",
    image_to_image="StableDiffusionImg2ImgPipeline",
    native_size=512,
    cross_attention_dim=768,
    checkpoint_prefixes=("cond_stage_model.transformer.",),  # CLIP ViT-L
)
SD2 = Family(
    name="sd2",
    text_to_image="StableDiffusionPipeline",
    image_to_image="StableDiffusionImg2ImgPipeline",
    native_size=768,
    cross_attention_dim=1024,
    checkpoint_prefixes=("cond_stage_model.model.",),  # OpenCLIP ViT-H
    checkpoint_cross_attention=1024,
)
SDXL = Family(
    name="sdxl",
    text_to_image="StableDiffusionXLPipeline",
    image_to_image="StableDiffusionXLImg2ImgPipeline",
    native_size=1024,
    index_classes=("StableDiffusionXL",),
    cross_attention_dim=2048,
    checkpoint_prefixes=("conditioner.embedders.1.",),  # CLIP ViT-L as embedder 0, OpenCLIP ViT-bigG as 1
    lora_prefixes=("lora_te2_", "text_encoder_2."),  # its second text encoder
)

# Each family after the one it grew from: detection tries the last first, because a later family's
# weights can look like an earlier one's (an SD 2.x file with SD 1.x tensor names).
FAMILIES: dict[str, Family] = {family.name: family for family in (SD15, SD2, SDXL)}
FAMILY_NAMES = tuple(FAMILIES)
# What a folder or a LoRA that shows no family's marks is taken for, as before families were told apart.
DEFAULT_FAMILY = SD15


def family_named(name: str) -> Family:
    """The family of that name; ValueError for one ALICE does not know."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; expected one of {', '.join(FAMILIES)}") from None


def _newest_first() -> list[Family]:
    return list(reversed(FAMILIES.values()))


def detect_family(folder: Path) -> str:
    """The family of a diffusers pipeline folder, from its configs rather than its name."""
    class_name = str(read_config(folder / "model_index.json").get("_class_name", ""))
    cross_attention = read_config(folder / "unet" / "config.json").get("cross_attention_dim")
    for family in _newest_first():  # the index's class name says it outright where it can
        if family.index_classes and class_name.startswith(family.index_classes):
            return family.name
    for family in _newest_first():
        if family.cross_attention_dim is not None and cross_attention == family.cross_attention_dim:
            return family.name
    return DEFAULT_FAMILY.name


def checkpoint_family(shapes: dict[str, list[int]]) -> str | None:
    """The family of a single-file checkpoint's tensors (name -> shape), or None when none fits.
    Whether it is a full text-to-image checkpoint at all is the caller's to check."""
    context = next((shape[-1] for key, shape in shapes.items() if key.endswith("attn2.to_k.weight")), None)
    for family in _newest_first():
        if _has_prefix(shapes, family.checkpoint_prefixes) or (
            family.checkpoint_cross_attention is not None and context == family.checkpoint_cross_attention
        ):
            return family.name
    return None


def lora_family(keys: Iterable[str]) -> str:
    """The family a LoRA file was trained for, from its tensor names."""
    keys = list(keys)
    for family in _newest_first():
        if _has_prefix(keys, family.lora_prefixes):
            return family.name
    return DEFAULT_FAMILY.name


def _has_prefix(keys: Iterable[str], prefixes: tuple[str, ...]) -> bool:
    return bool(prefixes) and any(key.startswith(prefixes) for key in keys)
