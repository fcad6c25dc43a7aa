"""The model families ALICE serves, each one entry: how its weights are recognised (a diffusers
folder, a single-file checkpoint, a LoRA), which diffusers pipelines draw with it, and how it
is drawn (native size, default steps and guidance, its schedulers, which arguments apply).

A new family is a new `Family` in FAMILIES (after the one it grew from) plus its tests. Torch-free:
the model store reads a model's family when it imports it, before any pipeline is loaded, and the
protocol checks a request against its model's family before the queue.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from alice.engine.pipeline_configs import read_config
from alice.engine.scheduler_names import DEFAULT_SCHEDULER, FLOW_EQUIVALENTS, FLOW_SCHEDULERS, SD_SCHEDULERS


class UnknownFamily(ValueError):
    """A pipeline folder of no family ALICE knows."""


@dataclass(frozen=True)
class Family:
    """One model family, as data."""

    name: str  # as the store's labels, the memory presets and the API say it
    text_to_image: str  # diffusers pipeline class names; None where diffusers has none
    image_to_image: str | None
    native_size: int  # the image side its released checkpoints were trained at
    # Masked edits (inpainting, outpainting); built from the loaded pipeline's components, or the
    # class an inpainting checkpoint (a UNet of 9 input channels) loads as.
    inpaint: str | None = None
    denoiser: str = "unet"  # the pipeline component that denoises: "unet" or "transformer"
    # Drawing defaults for a request that leaves them out (the UNet families': the spec's).
    default_steps: int = 25
    default_guidance: float = 7.5
    schedulers: tuple[str, ...] = SD_SCHEDULERS  # canonical names (alice/engine/scheduler_names.py)
    default_scheduler: str = DEFAULT_SCHEDULER
    # How `guidance_scale` acts: "cfg" (classifier-free guidance against the negative prompt),
    # "embedded" (guidance-distilled: a conditioning value, one pass a step, no negative prompt),
    # "true-cfg" (Qwen-Image: the pipeline's `true_cfg_scale`), "none" (distilled away: ignored).
    guidance: str = "cfg"
    negative_prompt: bool = True  # whether the pipeline takes a negative prompt
    clip_skip: bool = True  # CLIP-conditioned UNets only: diffusers' `clip_skip`
    # Whether ALICE applies LoRAs to it: where diffusers has a LoRA loader for its pipelines. A family
    # whose pipelines have none says False here, and a request with LoRAs on it is a 400 saying so.
    loras: bool = True
    size_multiple: int = 8  # width and height: the VAE's 8x, and 2x2 latent patches on top
    # A diffusers folder: model_index.json `_class_name` prefixes only this family's folders have,
    # else the UNet config's `cross_attention_dim` (the width of its text encoders' output);
    # `guidance_embeds` tells FLUX.1 dev (a guidance embedder) from schnell (none).
    index_classes: tuple[str, ...] = ()
    cross_attention_dim: int | None = None
    guidance_embeds: bool | None = None
    # A single-file checkpoint: tensor name prefixes of its own text encoder(s), or the UNet's
    # cross-attention width where that alone tells it (an SD 2.x file can name its text
    # encoder's tensors as SD 1.x does).
    checkpoint_prefixes: tuple[str, ...] = ()
    checkpoint_cross_attention: int | None = None
    # A LoRA file: patterns (regular expressions matched at the start of a tensor name) of the
    # names its LoRAs have, in each naming they ship in that its diffusers loader takes. Names
    # several families share (the double-stream blocks' attention of SD3, FLUX.1, FLUX.2 and
    # Qwen-Image) are each family's: a file is labelled with every family that fits all of its
    # tensors (see `lora_family`).
    lora_prefixes: tuple[str, ...] = ()
    # The family whose LoRAs it takes, where not its own (FLUX.1 schnell takes dev's: one
    # transformer architecture). A LoRA is stored labelled with the family that owns its kind.
    lora_family: str | None = None
    # A transformer-only file (a fine-tune, a GGUF): sets of tensor name prefixes, one set per
    # naming it comes in (BFL/ComfyUI's, diffusers'); the file is this family's when every prefix
    # of a set starts some tensor's name. The set with the most prefixes that fits wins: FLUX.1
    # dev's sets are schnell's plus the guidance embedder. See `transformer_family`.
    transformer_keys: tuple[tuple[str, ...], ...] = ()

    @property
    def takes_loras_of(self) -> str:
        """The family label of the LoRAs its models take."""
        return self.lora_family or self.name

    @property
    def is_unet(self) -> bool:
        """UNet families take the UNet-only memory options (attention slicing, compile, channels_last)."""
        return self.denoiser == "unet"

    def scheduler_named(self, name: str) -> str | None:
        """The scheduler this family draws for a canonical name: itself where it applies, on a
        flow family an SD sampler's flow equivalent where the family has it, else None."""
        if name in self.schedulers:
            return name
        equivalent = FLOW_EQUIVALENTS.get(name)
        return equivalent if equivalent in self.schedulers else None

    def facts(self) -> dict[str, object]:
        """What a client may want to know to draw with a model of this family (`/v1/models`)."""
        return {
            "family": self.name,
            "native_size": self.native_size,
            "default_steps": self.default_steps,
            "default_guidance_scale": self.default_guidance,
            "default_scheduler": self.default_scheduler,
            "schedulers": list(self.schedulers),
            "guidance": self.guidance,
            "negative_prompt": self.negative_prompt,
            "clip_skip": self.clip_skip,
            "image_to_image": self.image_to_image is not None,
            "inpaint": self.inpaint is not None,
            "hires_fix": self.is_unet,  # the protocol refuses hires_scale elsewhere (generation.py)
            "loras": self.loras,
            "size_multiple": self.size_multiple,
        }


SD15 = Family(
    name="sd15",
    text_to_image="StableDiffusionPipeline",
    image_to_image="StableDiffusionImg2ImgPipeline",
    inpaint="StableDiffusionInpaintPipeline",
    native_size=512,
    cross_attention_dim=768,
    checkpoint_prefixes=("cond_stage_model.transformer.",),  # CLIP ViT-L
)
SD2 = Family(
    name="sd2",
    text_to_image="StableDiffusionPipeline",
    image_to_image="StableDiffusionImg2ImgPipeline",
    inpaint="StableDiffusionInpaintPipeline",
    native_size=768,
    cross_attention_dim=1024,
    checkpoint_prefixes=("cond_stage_model.model.",),  # OpenCLIP ViT-H
    checkpoint_cross_attention=1024,
)
SDXL = Family(
    name="sdxl",
    text_to_image="StableDiffusionXLPipeline",
    image_to_image="StableDiffusionXLImg2ImgPipeline",
    inpaint="StableDiffusionXLInpaintPipeline",
    native_size=1024,
    index_classes=("StableDiffusionXL",),
    cross_attention_dim=2048,
    checkpoint_prefixes=("conditioner.embedders.1.",),  # CLIP ViT-L as embedder 0, OpenCLIP ViT-bigG as 1
    lora_prefixes=("lora_te2_", "text_encoder_2."),  # its second text encoder
)

# The transformer families. All are flow-matching models on 16-channel (FLUX.2: 32) VAEs of 8x
# whose latents are cut in 2x2 patches: sides are multiples of 16 (Z-Image raises otherwise,
# FLUX resizes with a warning). Steps and guidance: the publishers' figures for the released
# checkpoints (/work/shared/families.md section 3), not the pipelines' `__call__` defaults, which
# target base models. Schedulers: flow-euler always; the multistep solvers where the family's
# pipeline drives them with its own shifted schedule (tests/families/test_engine_families.py):
# FLUX.1 schnell passes `mu` without dynamic shifting, which DPM++ asserts against; Chroma,
# Qwen-Image and Z-Image pass `sigmas=`, which DPM++ does not take, and Z-Image's are a list
# that UniPC cannot scale.
_TRANSFORMER = dict(denoiser="transformer", clip_skip=False, size_multiple=16, default_scheduler="flow-euler")
# diffusers/PEFT LoRA names: `transformer.` + the transformer's module names (the double-stream
# blocks' attention is named alike in SD3, FLUX.1, FLUX.2 and Qwen-Image)
_DOUBLE_ATTENTION = r"transformer\.transformer_blocks\.\d+\.attn\."
_SD3_AND_FLUX1_BLOCKS = r"transformer\.transformer_blocks\.\d+\.(ff|ff_context)\.net\.|transformer\.transformer_blocks\.\d+\.norm1(_context)?\.linear"
# BFL's names (kohya sd-scripts, ai-toolkit and ComfyUI write them): FLUX.1's and FLUX.2's blocks alike,
# but for FLUX.1's modulation in each block (FLUX.2 modulates all blocks from one layer)
_BFL_BLOCKS = (r"lora_unet_(double|single)_blocks_\d+_", r"diffusion_model\.(double|single)_blocks\.\d+\.")
_BFL_UNMODULATED = tuple(pattern + r"(?!(img|txt)_mod|modulation)" for pattern in _BFL_BLOCKS)
SD3 = Family(
    name="sd3",
    text_to_image="StableDiffusion3Pipeline",
    image_to_image="StableDiffusion3Img2ImgPipeline",
    inpaint="StableDiffusion3InpaintPipeline",
    native_size=1024,
    default_steps=28,
    default_guidance=7.0,
    schedulers=FLOW_SCHEDULERS,
    index_classes=("StableDiffusion3",),
    transformer_keys=(("joint_blocks.",),
                      ("transformer_blocks.", "pos_embed.proj.", "time_text_embed.text_embedder.")),
    # SD3LoraLoaderMixin converts nothing: diffusers/PEFT names only (diffusers' and SimpleTuner's
    # trainers). kohya sd-scripts' (`lora_unet_joint_blocks_`) are told, but do not load: such a
    # LoRA fails its job `lora_failed`.
    lora_prefixes=(_DOUBLE_ATTENTION, _SD3_AND_FLUX1_BLOCKS, r"transformer\.transformer_blocks\.\d+\.attn2\.",
                   "lora_unet_joint_blocks_"),
    **_TRANSFORMER,
)
FLUX1_DEV = Family(
    name="flux1-dev",
    text_to_image="FluxPipeline",
    image_to_image="FluxImg2ImgPipeline",
    inpaint="FluxInpaintPipeline",
    native_size=1024,
    default_steps=28,
    default_guidance=3.5,
    schedulers=FLOW_SCHEDULERS,
    guidance="embedded",
    negative_prompt=False,  # only through true CFG (`true_cfg_scale`), at twice the cost: not offered
    index_classes=("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
    transformer_keys=(("double_blocks.", "single_blocks.", "vector_in.", "guidance_in."),
                      ("single_transformer_blocks.", "time_text_embed.text_embedder.",
                       "time_text_embed.guidance_embedder.")),
    guidance_embeds=True,
    # The namings CivitAI's FLUX.1 LoRAs come in (/work/shared/families.md section 6), each
    # converted by diffusers' FluxPipeline.load_lora_weights: diffusers/PEFT and ai-toolkit
    # (`transformer.` + diffusers module names), kohya sd-scripts, kohya names on diffusers
    # modules, BFL/XLabs (`double_blocks.0.processor.qkv_lora1.down`), ComfyUI (`diffusion_model.`
    # + BFL names; with lora_A/lora_B rather than kohya's lora_down/lora_up, alice/engine/loras.py
    # renames them for diffusers' converter).
    lora_prefixes=(_DOUBLE_ATTENTION, _SD3_AND_FLUX1_BLOCKS,
                   r"transformer\.single_transformer_blocks\.\d+\.(attn\.to_[qkv]\.|proj_mlp|proj_out|norm\.linear)",
                   *_BFL_BLOCKS,
                   "lora_transformer_single_transformer_blocks_", "lora_transformer_transformer_blocks_",
                   r"(double|single)_blocks\.\d+\.processor\."),
    **_TRANSFORMER,
)
FLUX1_SCHNELL = Family(
    name="flux1-schnell",
    text_to_image="FluxPipeline",
    image_to_image="FluxImg2ImgPipeline",
    inpaint="FluxInpaintPipeline",
    native_size=1024,
    default_steps=4,
    default_guidance=0.0,
    schedulers=("flow-euler", "flow-unipc"),
    guidance="none",  # timestep-distilled: no guidance embedder, the pipeline ignores it
    negative_prompt=False,
    index_classes=("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
    transformer_keys=(("double_blocks.", "single_blocks.", "vector_in."),  # no guidance embedder
                      ("single_transformer_blocks.", "time_text_embed.text_embedder.")),
    guidance_embeds=False,
    lora_family="flux1-dev",  # the same transformer as dev's (less the guidance embedder): dev's LoRAs
    **_TRANSFORMER,
)
CHROMA = Family(
    name="chroma",
    text_to_image="ChromaPipeline",
    image_to_image="ChromaImg2ImgPipeline",
    # diffusers 0.42.1's ChromaInpaintPipeline reads `transformer.config.guidance_embeds`, which
    # ChromaTransformer2DModel's config never has: every call raises AttributeError. Masked edits
    # of Chroma are refused before the queue until diffusers fixes it.
    inpaint=None,
    native_size=1024,
    default_steps=26,  # Chroma1-HD's docs example; the pipeline's default is 35 / 5.0
    default_guidance=4.0,
    schedulers=("flow-euler", "flow-unipc"),
    index_classes=("ChromaPipeline", "ChromaImg2ImgPipeline", "ChromaInpaintPipeline"),
    transformer_keys=(("double_blocks.", "distilled_guidance_layer."),
                      ("single_transformer_blocks.", "distilled_guidance_layer.")),
    # Its pipelines load LoRAs with FLUX.1's loader (FluxLoraLoaderMixin), onto FLUX.1's blocks less
    # their modulation: its LoRAs are named as FLUX.1's, and FLUX.1's load into it.
    lora_family="flux1-dev",
    **_TRANSFORMER,
)
ZIMAGE = Family(
    name="zimage",
    text_to_image="ZImagePipeline",
    image_to_image="ZImageImg2ImgPipeline",
    inpaint="ZImageInpaintPipeline",
    native_size=1024,
    # Z-Image-Turbo, the released checkpoint: distilled, and the pipeline runs CFG (two passes a
    # step) whenever guidance > 0, so the default is 0; a negative prompt acts only above 0.
    default_steps=9,
    default_guidance=0.0,
    schedulers=("flow-euler",),
    index_classes=("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline"),
    transformer_keys=(("layers.", "noise_refiner.", "context_refiner."),),
    # ZImageLoraLoaderMixin: diffusers/PEFT names, ai-toolkit's and ComfyUI's (`diffusion_model.`),
    # kohya's (`lora_unet_layers_0_attention_to_q`), all on its own block names.
    lora_prefixes=(r"(transformer|diffusion_model)\.(layers|noise_refiner|context_refiner)\.",
                   "lora_unet_layers_", "lora_unet_noise_refiner_", "lora_unet_context_refiner_"),
    **_TRANSFORMER,
)
FLUX2_KLEIN = Family(
    name="flux2-klein",
    text_to_image="Flux2KleinPipeline",
    image_to_image=None,  # Klein edits with reference images, which is no img2img; inpaint only
    inpaint="Flux2KleinInpaintPipeline",
    native_size=1024,
    default_steps=4,
    default_guidance=1.0,  # step-distilled: the pipeline ignores guidance (and warns above 1)
    schedulers=FLOW_SCHEDULERS,
    guidance="none",
    negative_prompt=False,  # no text `negative_prompt` argument
    index_classes=("Flux2KleinPipeline",),
    transformer_keys=(("double_stream_modulation_img.", "single_stream_modulation."),),
    # Flux2LoraLoaderMixin: diffusers/PEFT names (its single-stream blocks' fused projections are its
    # own), and BFL's as ai-toolkit, ComfyUI and kohya write them, which FLUX.1's LoRAs have too.
    lora_prefixes=(_DOUBLE_ATTENTION, r"transformer\.transformer_blocks\.\d+\.ff(_context)?\.linear_",
                   r"transformer\.single_transformer_blocks\.\d+\.attn\.(to_qkv_mlp_proj|to_out)",
                   r"(transformer|diffusion_model)\.(double|single)_stream_modulation", *_BFL_UNMODULATED),
    **_TRANSFORMER,
)
QWEN_IMAGE = Family(
    name="qwen-image",
    text_to_image="QwenImagePipeline",
    image_to_image="QwenImageImg2ImgPipeline",
    inpaint="QwenImageInpaintPipeline",
    # Trained at 1328 px; 1024 is diffusers' default, and fits the default pixel limit.
    native_size=1024,
    default_steps=50,
    default_guidance=4.0,
    schedulers=("flow-euler", "flow-unipc"),
    guidance="true-cfg",  # `guidance_scale` does nothing in its pipeline; `true_cfg_scale` does
    index_classes=("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline"),
    transformer_keys=(("transformer_blocks.", "img_in.", "txt_norm."),),  # diffusers' names only load
    # QwenImageLoraLoaderMixin: diffusers/PEFT names, ai-toolkit's and ComfyUI's (`diffusion_model.`),
    # kohya's and musubi-tuner's (`lora_unet_transformer_blocks_0_attn_to_q`).
    lora_prefixes=(_DOUBLE_ATTENTION, r"transformer\.transformer_blocks\.\d+\.(img|txt)_(mlp|mod)",
                   r"diffusion_model\.transformer_blocks\.", "lora_unet_transformer_blocks_"),
    **_TRANSFORMER,
)

# Each family after the one it grew from: detection tries the last first, because a later family's
# weights can look like an earlier one's (an SD 2.x file with SD 1.x tensor names).
FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (SD15, SD2, SDXL, SD3, FLUX1_DEV, FLUX1_SCHNELL, CHROMA, ZIMAGE, FLUX2_KLEIN, QWEN_IMAGE)
}
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
    """The family of a diffusers pipeline folder, from its configs rather than its name.
    UnknownFamily for a folder that is no family ALICE knows (a transformer pipeline of
    another kind, or no pipeline at all)."""
    class_name = str(read_config(folder / "model_index.json").get("_class_name", ""))
    guidance_embeds = bool(read_config(folder / "transformer" / "config.json").get("guidance_embeds", False))
    for family in _newest_first():  # the index's class name says it outright where it can
        if family.index_classes and class_name.startswith(family.index_classes) and (
            family.guidance_embeds is None or family.guidance_embeds == guidance_embeds
        ):
            return family.name
    unet = read_config(folder / "unet" / "config.json")
    if not unet:
        known = ", ".join(FAMILIES)
        raise UnknownFamily(
            f"{folder} is a {class_name or 'folder without a model_index.json class'}, of no model family "
            f"ALICE knows ({known})"
        )
    for family in _newest_first():
        if family.cross_attention_dim is not None and unet.get("cross_attention_dim") == family.cross_attention_dim:
            return family.name
    return DEFAULT_FAMILY.name  # a Stable Diffusion UNet of another width (the demo model's)


def family_of_pipeline(class_name: str) -> Family:
    """The (first) family whose pipelines include this diffusers class: how the engine draws with a
    pipeline it was handed without its family (FLUX.1 dev and schnell are called alike)."""
    for family in FAMILIES.values():
        if class_name in (family.text_to_image, family.image_to_image, family.inpaint):
            return family
    return DEFAULT_FAMILY


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
    """The family label of a LoRA file, from its tensor names: the transformer families whose LoRA
    names fit every tensor that some transformer family's fit (comma-separated, in FAMILIES' order:
    a LoRA of the double-stream blocks' attention alone in diffusers' names fits SD3, FLUX.1,
    FLUX.2 and Qwen-Image alike), or where none fits them all, those that fit the most; failing
    any, the UNet family its marks tell (SD 1.x where none)."""
    keys = list(keys)
    patterns = {family.name: _lora_pattern(family) for family in FAMILIES.values()
                if not family.is_unet and family.lora_prefixes}
    fitting = [{name for name, pattern in patterns.items() if pattern.match(key)} for key in keys]
    fitting = [names for names in fitting if names]
    if fitting:
        every = set.intersection(*fitting)
        if not every:  # names of several families in one file: those with the most
            counts = {name: sum(name in names for names in fitting) for name in patterns}
            every = {name for name, count in counts.items() if count == max(counts.values())}
        return ",".join(name for name in patterns if name in every)
    for family in _newest_first():
        if _has_prefix(keys, family.lora_prefixes):
            return family.name
    return DEFAULT_FAMILY.name


def _lora_pattern(family: Family) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{pattern})" for pattern in family.lora_prefixes))


def lora_refusal(lora_family_name: str, family: Family) -> str | None:
    """Why a LoRA stored with that family label is no LoRA for a model of `family`, or None when
    it may be. Among the UNet families the label is a guess (an SD 2.x LoRA shows no mark of its
    own and is labelled SD 1.x, as is any file of no known naming), so there the loading tells;
    a transformer LoRA's label names the families its tensor names fit, and it may go on a model
    of any of them (where it names several, the loading tells: shapes of another width fail it)."""
    def kind(of: Family) -> str:
        return "Stable Diffusion (UNet)" if of.is_unet else of.takes_loras_of

    made_for = [FAMILIES.get(name, DEFAULT_FAMILY) for name in lora_family_name.split(",")]
    if any((lora.is_unet and family.is_unet) or lora.takes_loras_of == family.takes_loras_of for lora in made_for):
        return None
    kinds = " or ".join(dict.fromkeys(kind(lora) for lora in made_for))
    return f"it was made for {kinds} models, and {family.name} models take {kind(family)} LoRAs"


def transformer_family(keys: Iterable[str]) -> str | None:
    """The family of a transformer-only file from its tensor names (BFL/ComfyUI or diffusers
    naming, with or without ComfyUI's `model.diffusion_model.` prefix), or None when none fits."""
    names = [key.removeprefix("model.").removeprefix("diffusion_model.") for key in keys]
    best, best_size = None, 0
    for family in FAMILIES.values():
        for prefixes in family.transformer_keys:
            if len(prefixes) > best_size and all(_has_prefix(names, (prefix,)) for prefix in prefixes):
                best, best_size = family.name, len(prefixes)
    return best


def _has_prefix(keys: Iterable[str], prefixes: tuple[str, ...]) -> bool:
    return bool(prefixes) and any(key.startswith(prefixes) for key in keys)
