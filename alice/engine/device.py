"""The configured device, and how ALICE lays Stable Diffusion out on it.

`read_device_facts` is the one place that asks torch about the card; every decision after it
(can this torch drive the card, which precision, which memory preset, how much the model cache
may hold) is a pure function of `DeviceFacts`, so each can be checked for any card on a machine
without one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal


if TYPE_CHECKING:  # imported where it runs: see alice/engine/__init__.py
    import torch

GiB = 1024**3
MiB = 1024**2
FAMILIES = ("sd15", "sd2", "sdxl")  # the UNet families; TRANSFORMER_FAMILIES are planned in presets.py
Offload = Literal["none", "model", "group", "sequential"]  # group: transformer families only


class UnsupportedDevice(RuntimeError):
    """The installed torch has no kernels for the configured card; the message says what to install."""


@dataclass(frozen=True)
class DeviceFacts:
    """What the decisions below need to know about a device and the torch build."""

    device: str = "cpu"  # "cpu" or "cuda:N"
    name: str = "cpu"
    capability: tuple[int, int] | None = None  # (major, minor) on a GPU
    total_memory: int = 0  # bytes on the card
    arch_list: tuple[str, ...] = ()  # torch.cuda.get_arch_list(): "sm_XY" kernels, "compute_XY" PTX
    host_memory: int = 0  # bytes of RAM
    free_memory: int | None = None  # bytes free on the card when read (after the CUDA context)

    @property
    def is_gpu(self) -> bool:
        return self.capability is not None


def resolve_device(device: str = "auto") -> str:
    """`auto` becomes cuda when a GPU is visible, else cpu; other values are kept."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def read_device_facts(device: str) -> DeviceFacts:
    """Ask torch about `device` (cpu, cuda or cuda:N): the card named, not device 0."""
    import psutil
    import torch

    host = psutil.virtual_memory().total
    if not device.startswith("cuda"):
        return DeviceFacts(device="cpu", host_memory=host)
    index = torch.device(device).index
    if index is None:
        index = torch.cuda.current_device()
    properties = torch.cuda.get_device_properties(index)
    free, _ = torch.cuda.mem_get_info(index)
    return DeviceFacts(
        device=f"cuda:{index}",
        name=properties.name,
        capability=tuple(torch.cuda.get_device_capability(index)),
        total_memory=properties.total_memory,
        arch_list=tuple(torch.cuda.get_arch_list()),
        host_memory=host,
        free_memory=free,
    )


# -- can this torch drive the card -----------------------------------------------------------
def torch_can_drive(capability: tuple[int, int], arch_list: tuple[str, ...]) -> bool:
    """A card runs a build's kernels for sm_XY of its own major version and a minor no newer than
    its own (binary compatibility), or JIT-compiles a build's compute_XY PTX no newer than itself."""
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+)(\d)[af]?", arch)
        if not match:
            continue
        kind, major, minor = match.group(1), int(match.group(2)), int(match.group(3))
        if kind == "sm" and major == capability[0] and minor <= capability[1]:
            return True
        if kind == "compute" and (major, minor) <= capability:
            return True
    return False


def check_device_supported(facts: DeviceFacts) -> None:
    """Raise UnsupportedDevice, naming the image or install flavour to use, if the installed
    torch has no kernels for the card (otherwise the first generation fails with "no kernel
    image is available for execution on the device")."""
    if not facts.is_gpu or not facts.arch_list:  # no list: a build that cannot tell; let it try
        return
    if torch_can_drive(facts.capability, facts.arch_list):
        return
    import torch

    major, minor = facts.capability
    if (5, 0) <= facts.capability < (7, 5):
        advice = "use the cu126 image/flavour (torch CUDA 12.6 build with sm_50/sm_60/sm_70 kernels)"
        where = "the alice:cu126 image, or `deploy/install.sh --flavour cu126` on a bare host"
    elif facts.capability >= (7, 5):
        advice = "use the default image/flavour (torch CUDA 13 build)"
        where = "the alice:latest image, or `deploy/install.sh --flavour cu130` on a bare host"
    else:
        advice = "no torch build ALICE ships drives it; run on the CPU with ALICE_DEVICE=cpu"
        where = "no image"
    # The first line is what /health shows (the log has it all): the advice first.
    raise UnsupportedDevice(
        f"{advice}: this torch build has no kernels for {facts.name} (compute capability {major}.{minor})\n"
        f"{facts.device} needs {where} (the install script picks the flavour by the card's capability); "
        f"this torch {torch.__version__} (CUDA {torch.version.cuda}) has kernels for {', '.join(facts.arch_list)} only"
    )


# -- precision ---------------------------------------------------------------------------------
def auto_dtype(facts: DeviceFacts) -> torch.dtype:
    """bf16 from Ampere (8.0) on, fp16 on older cards, fp32 on the GTX 16xx and the CPU.

    bf16 has fp32's range, so SD's VAE does not overflow into black images; but before Ampere
    torch only emulates it (`torch.cuda.is_bf16_supported()` is true there too): matmuls run
    slowly and SDPA's fast kernels refuse it. The GTX 16xx (TU116/TU117) are known to produce
    NaN in fp16 (black images: A1111 runs them with --precision full --no-half), so they get
    fp32; ALICE_DTYPE overrides any of this. Half precision on the CPU is slower and less exact.
    """
    import torch

    if not facts.is_gpu or is_gtx_16(facts):
        return torch.float32
    return torch.bfloat16 if facts.capability >= (8, 0) else torch.float16


def is_gtx_16(facts: DeviceFacts) -> bool:
    """A Turing card without tensor cores (TU116/TU117: GTX 1630 to 1660 Ti), which NaNs in fp16."""
    return facts.is_gpu and facts.capability == (7, 5) and "GTX 16" in facts.name


# -- memory ------------------------------------------------------------------------------------
# What a pipeline takes on a GPU, in 16-bit precision (fp32 doubles every figure). Every figure
# below comes from `python -m bench.memory --write` (bench/memory.py), whose output is checked in as
# bench/memory_figures.json; tests/unit/test_memory_figures.py checks these constants are exactly
# what `bench.memory.derive_constants` makes of that file.
#
# Weights: parameters and buffers of each component of this repo's architecture configs
# (alice/configs, the released checkpoints' shapes) built on the meta device, 2 bytes each.
# SD 1.5: UNet 860M, CLIP ViT-L 123M, VAE 84M; SD 2.x: UNet 866M, OpenCLIP ViT-H 340M; SDXL: UNet
# 2.57B, text encoders 123M + 695M. The UNet is the part model CPU offload must fit on the card at once.
#
# Working memory of one generation: the UNet's steps (batch 2 with classifier-free guidance, SDPA
# attention) and the VAE's decode of one image come one after the other, so the peak is the larger
# of the two. Measured on the CPU (2026-12-07, torch 2.13, float32, random weights) as the peak
# bytes of the tensors the call's ATen ops create that are alive at once (a TorchDispatchMode:
# activations by shape; the CPU allocator's own peak is dominated by oneDNN's copies of conv
# weights, which a GPU does not make), at 256, 384 and 512 px, fitted as fixed + per megapixel by
# least squares (the fixed part came out 0: `Working.at` never goes below it), halved for 16 bits,
# times MARGIN. See bench/RESULTS.md ("Working memory"). Per megapixel, in 16 bits, before MARGIN:
#   UNet step: SD 1.5 and SD 2.x 0.508 GiB (65, 146, 260 MiB in fp32 at the three sizes: their
#   GEGLU feed-forward at full latent resolution is the peak); SDXL 0.308 GiB (no attention at
#   full latent resolution).
#   VAE decode: 1.50 GiB (the same decoder in all three): three 256-channel full-resolution maps
#   at once, 3 x 256 x 2 bytes per pixel. ComfyUI budgets about twice that for it (comfy/sd.py,
#   `memory_used_decode`).
# MARGIN is not measured: the CPU does not show cuDNN's workspaces or the CUDA caching allocator's
# rounding and fragmentation, so the estimates add half again for them until a GPU run of
# bench.memory (`--device cuda`, torch.cuda.max_memory_reserved) measures the ratio. SDXL's VAE is
# upcast to fp32 in fp16 pipelines (its `force_upcast`), which doubles its weights and working
# memory there.
MARGIN = 1.5


@dataclass(frozen=True)
class Working:
    """Working memory of one call in 16 bits, margin included: fixed bytes plus bytes per megapixel."""

    fixed: int
    per_megapixel: int

    def at(self, pixels: float, scale: float = 1.0) -> int:
        """Bytes for an image of `pixels` (`scale` 2 for float32)."""
        return int(scale * max(0.0, self.fixed + self.per_megapixel * pixels / 1024**2))


WEIGHTS_16BIT = {"sd15": 2132470768, "sd2": 2579905008, "sdxl": 6937676042}
UNET_16BIT = {"sd15": 1719041928, "sd2": 1731821448, "sdxl": 5134927368}
VAE_16BIT = 167307726
UNET_WORKING = {"sd15": Working(0 * MiB, 780 * MiB), "sd2": Working(0 * MiB, 780 * MiB), "sdxl": Working(0 * MiB, 472 * MiB)}
VAE_WORKING = Working(0 * MiB, 2304 * MiB)
# The CUDA context takes 0.3-0.5 GiB of the card before any tensor (torch with lazy module
# loading; not measured here: bench.memory's GPU run records it as `cuda_context`); the free
# memory read at start also shows what other processes (a desktop) hold.
CUDA_CONTEXT = int(0.5 * GiB)
# Sequential offload moves one leaf module at a time onto the card; the largest of the three
# families' (SDXL's second text encoder's token embedding, 49408 x 1280), by bench.memory.
SEQUENTIAL_LAYER = 126484480
SMALLEST_TILE = 512  # smaller tiles lose too much context at their seams


@dataclass(frozen=True)
class MemoryOptions:
    """How pipelines are laid out, as the operator set it: `auto` is decided per card and family."""

    attention_slicing: bool | Literal["auto"] = "auto"  # slower attention processor; auto = off
    vae_tiling: bool | Literal["auto"] = "auto"  # decode large images tile by tile
    # model: whole models move to the GPU in turn; sequential: layer by layer
    cpu_offload: Offload | Literal["auto"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"  # faster convolutions on CUDA; auto = where tensor cores are
    compile_unet: bool = False  # torch.compile the UNet: faster steps after a slow first run
    max_pixels: int = 1024 * 1024  # the largest image a request may ask for (ALICE_MAX_PIXELS)
    # A 16-bit transformer quantized to NF4 at load (ALICE_QUANTIZE): auto = where it would
    # otherwise stream from RAM every step or not fit (alice/engine/presets.py).
    quantize: Literal["auto", "none", "nf4"] = "auto"


@dataclass(frozen=True)
class MemoryPreset:
    """How one model family is laid out on the device."""

    family: str
    cpu_offload: Offload
    vae_tiling_above: int | None  # images wider or taller than this decode in tiles; None: never
    attention_slicing: bool
    channels_last: bool
    # The transformer families' presets (alice/engine/presets.py) say more; SD's leave these empty.
    parts: tuple[tuple[str, str], ...] = ()  # (component, where): gpu, cpu, model, group, sequential
    fp8_storage: tuple[str, ...] = ()  # components whose Linear weights are stored in fp8
    dtype: str | None = None  # the compute dtype, as torch names it
    pin_streams: bool = False  # group offload may keep pinned copies (twice its RAM)
    # "nf4": the transformer is held in NF4 (bitsandbytes): stored so, or quantized as it loads.
    quantize: str | None = None
    fits: bool = True  # False: nothing fits the card and RAM; `reason` says what would
    reason: str = ""
    needs: Footprint | None = None  # the planner's estimate for this layout

    def public(self) -> dict:
        shown = {
            "cpu_offload": self.cpu_offload,
            "vae_tiling_above_px": self.vae_tiling_above,
            "attention_slicing": self.attention_slicing,
            "channels_last": self.channels_last,
        }
        if self.parts or not self.fits:
            shown.update(
                parts=dict(self.parts), fp8_storage=list(self.fp8_storage), dtype=self.dtype,
                quantize=self.quantize, fits=self.fits, reason=self.reason,
            )
        return shown

    def describe(self) -> str:
        if self.reason:
            return self.reason
        tiling = f"VAE tiling above {self.vae_tiling_above} px" if self.vae_tiling_above else "no VAE tiling"
        return (
            f"{self.family}: CPU offload {self.cpu_offload}, {tiling}, "
            f"attention slicing {'on' if self.attention_slicing else 'off'}, "
            f"channels_last {'on' if self.channels_last else 'off'}"
        )


@dataclass(frozen=True)
class Footprint:
    """Where a loaded pipeline's weights live and what its generations need on the card."""

    weights: int  # all its weights
    on_card: int  # weights kept on the card between generations
    in_ram: int  # weights kept in host memory (CPU runs, CPU offload)
    working: int  # card memory a generation needs beyond `on_card` (moved-in parts, activations)


@dataclass(frozen=True)
class CacheCapacity:
    """What loaded models may use: the card (weights kept there plus one generation's working
    memory) and the RAM (weights kept there); `weights` optionally caps all weights together."""

    card: int
    ram: int
    weights: int | None = None

    def fits(self, footprints: list[Footprint]) -> bool:
        on_card = sum(f.on_card for f in footprints) + max((f.working for f in footprints), default=0)
        in_ram = sum(f.in_ram for f in footprints)
        weights = sum(f.weights for f in footprints)
        return on_card <= self.card and in_ram <= self.ram and (self.weights is None or weights <= self.weights)


def cache_capacity(facts: DeviceFacts, weights_cap: int | None = None) -> CacheCapacity:
    """The card less its CUDA context and what other processes hold; half the RAM for weights
    kept there (the other half is the server's, the OS's and the page cache's)."""
    return CacheCapacity(card=card_capacity(facts), ram=facts.host_memory // 2, weights=weights_cap)


def card_capacity(facts: DeviceFacts) -> int:
    if not facts.is_gpu:
        return 0
    free = facts.free_memory if facts.free_memory is not None else facts.total_memory - CUDA_CONTEXT
    return max(0, min(facts.total_memory - CUDA_CONTEXT, free))


def footprint(
    preset: MemoryPreset,
    facts: DeviceFacts,
    dtype: torch.dtype,
    pixels: int,
    *,
    images: int = 1,
    weights: int | None = None,
    unet: int | None = None,
    vae: int | None = None,
) -> Footprint:
    """A pipeline's footprint under `preset` for `images` images of up to `pixels` drawn in one
    call; its weights' sizes as measured when given, else the family's released checkpoint's.

    The UNet steps all images of a call at once (each image's working memory, fixed part
    included: counted per image, the safe side); the VAE decodes them one at a time
    (alice/engine/generate.py), as one image alone takes."""
    import torch

    if preset.needs is not None:  # a transformer family's, estimated by its planner
        return preset.needs
    scale = 2 if dtype == torch.float32 else 1
    weights = weights if weights is not None else WEIGHTS_16BIT[preset.family] * scale
    if not facts.is_gpu:
        return Footprint(weights, 0, weights, 0)
    unet = unet if unet is not None else UNET_16BIT[preset.family] * scale
    vae = vae if vae is not None else VAE_16BIT * scale
    upcast = 2 if preset.family == "sdxl" and dtype == torch.float16 else 1  # SDXL VAE's force_upcast
    tile = preset.vae_tiling_above
    unet_steps = images * UNET_WORKING[preset.family].at(pixels, scale)
    decode = VAE_WORKING.at(min(pixels, tile * tile) if tile else pixels, scale * upcast)
    if preset.cpu_offload == "none":
        return Footprint(weights, weights, 0, int(max(unet_steps, decode + vae * (upcast - 1))))
    if preset.cpu_offload == "model":  # one model on the card at a time
        return Footprint(weights, 0, weights, int(max(unet + unet_steps, vae * upcast + decode)))
    return Footprint(weights, 0, weights, int(SEQUENTIAL_LAYER + max(unet_steps, decode)))


def batch_limit(
    preset: MemoryPreset,
    facts: DeviceFacts,
    dtype: torch.dtype,
    pixels: int,
    max_batch: int,
    room: int,
    **sizes: int,
) -> int:
    """How many images of `pixels` one call may draw, at most `max_batch`: as many as the
    estimate of their working memory keeps within `room`, the card memory left beside the
    weights kept there (read once at start: see `card_capacity`). At least 1; the caller makes
    sure one image fits (the model cache keeps room for one of the largest allowed size).
    `sizes`: the weights' sizes as `footprint` takes them."""
    fits = 1
    while fits < max_batch and footprint(preset, facts, dtype, pixels, images=fits + 1, **sizes).working <= room:
        fits += 1
    return fits


def has_tensor_cores(facts: DeviceFacts) -> bool:
    """Whether the card has tensor cores, whose NHWC kernels channels_last is for: Volta (7.0)
    and later, except Turing's GTX 16xx (TU116/TU117, 7.5 without them). Elsewhere (Pascal, the
    CPU) channels_last only reorders memory for kernels that gain nothing from it, unmeasured."""
    return facts.is_gpu and facts.capability >= (7, 0) and not is_gtx_16(facts)


def resolve_preset(facts: DeviceFacts, family: str, options: MemoryOptions, dtype: torch.dtype) -> MemoryPreset:
    """A UNet family's preset (the transformer families': alice/engine/presets.py `preset_for`).
    Explicit settings as given; each `auto` one decided from the card and the family.

    In order of cost: everything on the card, decoding whole images; then VAE tiling for images
    whose decode would not fit (tiles as large as fit); then model CPU offload (only the model
    that runs on the card); then sequential offload (layer by layer, much slower). Attention
    slicing stays off under `auto`: it swaps SDPA's memory-efficient kernels for a slower
    processor and saves nothing they do not already save. channels_last is left off under
    sequential offload, where the weights stream in per call and it does nothing.
    """
    slicing = options.attention_slicing is True
    channels_last = has_tensor_cores(facts) if options.channels_last == "auto" else options.channels_last
    if not facts.is_gpu:
        return MemoryPreset(family, "none", _fixed_tiling(options.vae_tiling, family), slicing, False)
    capacity = cache_capacity(facts)
    # Group offload streams a transformer's blocks; a UNet is offloaded whole model by model.
    chosen: Offload = "model" if options.cpu_offload == "group" else options.cpu_offload  # type: ignore[assignment]
    offloads: tuple[Offload, ...] = ("none", "model", "sequential") if chosen == "auto" else (chosen,)
    for offload in offloads:
        if options.vae_tiling == "auto":
            tilings = [None] + list(range(math.isqrt(options.max_pixels) // 64 * 64, SMALLEST_TILE - 1, -64))
        else:
            tilings = [_fixed_tiling(options.vae_tiling, family)]
        for tiling in tilings:
            preset = MemoryPreset(family, offload, tiling, slicing, channels_last and offload != "sequential")
            if capacity.fits([footprint(preset, facts, dtype, options.max_pixels)]):
                return preset
    return preset  # nothing fits: the cheapest layout, for a card smaller than any estimate


def _fixed_tiling(setting: bool | str, family: str) -> int | None:
    """`true`: diffusers' own tile size, the family's native side; `false` (or `auto` without a
    GPU): none."""
    return {"sd15": 512, "sd2": 768, "sdxl": 1024}[family] if setting is True else None


def describe_device(facts: DeviceFacts) -> str:
    if not facts.is_gpu:
        return f"cpu ({facts.host_memory / GiB:.0f} GiB RAM)"
    major, minor = facts.capability
    return f"{facts.name} on {facts.device} (compute capability {major}.{minor}, {facts.total_memory / GiB:.1f} GiB)"
