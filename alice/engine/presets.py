"""Memory presets of the transformer families (SD3, FLUX.1, Chroma, Z-Image, FLUX.2 Klein, Qwen-Image).

`plan_preset` is a pure function of DeviceFacts and the sizes of the model's parts, as
`resolve_preset` is for the UNet families: every card can be checked on a machine without one.
Sizes come from alice/engine/memory_figures.py (families.md) unless the caller measured them.

Layouts, cheapest first (each with whole-image decoding, then VAE tiling):
- gpu: every part on the card.
- text-offloaded: transformer and VAE on the card; the text encoders stream onto it block by
  block (group offload) once per prompt. The text encoders are as large as the transformer here
  (T5-XXL 9.5 GB) and run once a request, the transformer every step.
- text-cpu: transformer and VAE on the card; the text encoders stay in RAM and run there (in
  bf16, fp32 when the pipeline computes in fp32), their output moved to the card in the
  pipeline's dtype. Nothing of them reaches the card, not even the two layers streaming keeps
  there; but a new prompt's T5 pass takes seconds on a CPU where streaming takes about one
  (9.5 GB over PCIe), so it comes after text-offloaded. The prompt-embedding cache
  (alice/engine/text_cache.py) makes a repeated prompt free in both. Before `model`: whole-part
  offload would bring T5 (9.5 GB) onto the card for every new prompt and move the transformer
  off and on for every image.
- model: diffusers' model CPU offload, one whole part on the card at a time.
- group: the transformer streams too, block by block with CUDA streams, every step; the VAE stays.
  diffusers' docs rank quantization plus model offload first for images, where it fits.
- sequential: layer by layer, the slowest.
A 16-bit transformer may be quantized to NF4 at load (bitsandbytes, ALICE_QUANTIZE): `auto` does
so where its 16 bits would stream from RAM every step (group, sequential) or fit nowhere, and NF4
keeps it whole on the card (gpu, text-offloaded, text-cpu or model offload): 4.5 bits a weight, a
quarter of the bytes. An NF4 transformer is never streamed block by block: diffusers' group offload
moves each weight's data without bitsandbytes' quantization state. The images change a little
(NF4 is lossy); ALICE_QUANTIZE=none keeps 16 bits and streams instead. NF4 needs a
card of compute capability 6.0 (bitsandbytes' CUDA kernels); diffusers 0.42.1 refuses to quantize
without a GPU, so never on the CPU.
All of that first with the text encoders in 16 bits, then stored in fp8 (diffusers' layerwise
casting, computed in the pipeline's dtype): ComfyUI's low-memory FLUX setups use an fp8 T5, and on
16 GB of RAM a 16-bit T5 (9.5 GB) and a FLUX GGUF Q4 (6.8 GB) do not fit side by side.
When nothing fits, the preset says so (`fits` False) and what would: a smaller quantized
transformer file, or how much RAM; `check_fits` raises that before any weight is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from alice.engine.device import (
    GiB,
    SMALLEST_TILE,
    VAE_WORKING,
    DeviceFacts,
    Footprint,
    MemoryOptions,
    MemoryPreset,
    Offload,
    card_capacity,
    resolve_preset,
)
from alice.engine.memory_figures import (
    DEQUANTIZED_LAYER,
    EMBEDDING,
    FAMILY_FIGURES,
    GB,
    NF4_BYTES_PER_PARAM,
    Q4_0_BYTES_PER_PARAM,
    T5_WO_PARAMS,
    T5_XXL,
    VAE,
    TRANSFORMER_FAMILIES,
    transformer_working,
)

Layout = Literal["gpu", "text-offloaded", "text-cpu", "model", "group", "sequential"]
LAYOUTS: tuple[Layout, ...] = ("gpu", "text-offloaded", "text-cpu", "model", "group", "sequential")
OFFLOAD: dict[Layout, Offload] = {
    "gpu": "none", "text-offloaded": "group", "text-cpu": "none", "model": "model", "group": "group",
    "sequential": "sequential",
}
# Layouts that keep the transformer whole on the card while it steps: what NF4 is for (see above).
WHOLE_TRANSFORMER: tuple[Layout, ...] = ("gpu", "text-offloaded", "text-cpu", "model")
# The process itself (Python, torch and CUDA's libraries), the OS and a little page cache: RAM the
# weights cannot have. An assumption, not a measurement.
RAM_RESERVE = 3 * GiB
TEXT_WORKING = int(0.25 * GiB)  # a text encoder's activations at 512 tokens are a few MB; room for the rest
# A leaf layer sequential offload moves (FLUX's largest Linear is 0.1 GB in 16 bits).
LEAF = DEQUANTIZED_LAYER
NATIVE_TILE = 1024  # `vae_tiling: true`: every family here is trained at 1024 px (families.md §3)


class PresetDoesNotFit(RuntimeError):
    """The model fits neither the card nor the RAM in any layout; the message says what would."""


@dataclass(frozen=True)
class PresetInputs:
    """The model's parts as loaded: what the caller knows from its files."""

    family: str
    transformer_bytes: int  # as stored: 16-bit bytes (an fp32 file: half its size), or the GGUF/NF4 file's
    transformer_params: int  # tells SD 3.5 Large from Medium, FLUX.2 Klein 9B from 4B
    quantized: Literal["gguf", "nf4"] | None = None
    text_encoders: dict[str, int] = field(default_factory=dict)  # component -> 16-bit bytes
    vae: int = VAE
    quantize_at_load: bool = False  # "nf4" here: a 16-bit transformer that loading quantizes (ALICE_QUANTIZE)


def reference_inputs(
    family: str,
    *,
    transformer_bytes: int | None = None,
    quantized: Literal["gguf", "nf4"] | None = None,
    transformer_params: int | None = None,
    text_encoders: dict[str, int] | None = None,
) -> PresetInputs:
    """The family's released checkpoint (families.md §2), with what the caller knows instead."""
    figures = FAMILY_FIGURES[family]
    params = transformer_params or figures.transformer_params
    return PresetInputs(
        family=family,
        transformer_bytes=transformer_bytes if transformer_bytes is not None else 2 * params,
        transformer_params=params,
        quantized=quantized,
        text_encoders=dict(text_encoders if text_encoders is not None else figures.text_encoders),
    )


@dataclass(frozen=True)
class _Need:
    card: int
    ram: int
    weights: int
    on_card: int


def _sizes(
    inputs: PresetInputs, value_bytes: int, fp8: bool, fp16: bool
) -> tuple[int, dict[str, int], dict[str, int], int]:
    """Bytes held of the transformer, each text encoder and the VAE, and each encoder's embedding
    (its largest layer), in the compute dtype. fp8 storage keeps Linear weights at one byte each
    and the embedding in the compute dtype. An encoder of a size not listed (measured by the
    caller) is taken to be a tenth embedding, as the Qwen encoders nearly are. In fp8, T5's `wo`
    layers are stored in fp8 too (placement.store_in_fp8)."""
    scale = value_bytes / 2
    transformer = inputs.transformer_bytes if inputs.quantized else int(inputs.transformer_bytes * scale)
    embedding16 = {name: EMBEDDING.get(size, size // 10) for name, size in inputs.text_encoders.items()}
    embeddings = {name: int(size * scale) for name, size in embedding16.items()}
    if fp16:  # transformers keeps T5's `wo` layers in fp32 under fp16 (families.md §7.1)
        wide = {name: T5_WO_PARAMS * 2 for name, size in inputs.text_encoders.items() if size == T5_XXL}
    else:
        wide = {}
    if fp8:
        encoders = {
            name: (size - embedding16[name]) // 2 + embeddings[name] for name, size in inputs.text_encoders.items()
        }
    else:
        encoders = {name: int(size * scale) + wide.get(name, 0) for name, size in inputs.text_encoders.items()}
    return transformer, encoders, embeddings, int(inputs.vae * scale)


def _need(inputs: PresetInputs, layout: Layout, fp8: bool, tile: int | None, pixels: int, dtype_name: str) -> _Need:
    """Peak card memory and RAM of one layout, by the estimates."""
    value_bytes, fp16 = (4 if dtype_name == "float32" else 2), dtype_name == "float16"
    figures = FAMILY_FIGURES[inputs.family]
    transformer, encoders, embeddings, vae = _sizes(inputs, value_bytes, fp8, fp16)
    text = sum(encoders.values())
    weights = transformer + text + vae
    stepping = transformer_working(inputs.family, inputs.transformer_params, pixels, value_bytes)
    if inputs.quantized:
        stepping += DEQUANTIZED_LAYER * value_bytes // 2
    decode = VAE_WORKING.at(min(pixels, tile * tile) if tile else pixels, value_bytes / 2)
    largest_embedding = max(embeddings.values(), default=0)
    streamed_text = 2 * largest_embedding + TEXT_WORKING  # the running layer and the next one
    if layout == "gpu":
        return _Need(weights + max(stepping, TEXT_WORKING, decode), 0, weights, weights)
    if layout == "text-offloaded":
        return _Need(transformer + vae + max(stepping, streamed_text, decode), text, weights, transformer + vae)
    if layout == "text-cpu":  # in RAM in bf16 (16-bit bytes; fp32: twice), fp16's fp32 `wo` cast down too
        in_ram = sum(inputs.text_encoders.values()) * (2 if value_bytes == 4 else 1)
        return _Need(transformer + vae + max(stepping, decode), in_ram, transformer + in_ram + vae, transformer + vae)
    if layout == "model":
        largest_text = max(encoders.values(), default=0) + TEXT_WORKING
        return _Need(max(transformer + stepping, largest_text, vae + decode), weights, weights, 0)
    if layout == "group":
        streamed = int(transformer * (figures.rest_share + 2 * figures.block_share))
        return _Need(vae + max(streamed + stepping, streamed_text, decode), transformer + text, weights, vae)
    leaf = int(transformer * figures.rest_share) + LEAF * value_bytes // 2  # sequential
    return _Need(max(leaf + stepping, largest_embedding + TEXT_WORKING, LEAF + decode), weights, weights, 0)


def _parts(inputs: PresetInputs, layout: Layout, gpu: bool) -> tuple[tuple[str, str], ...]:
    encoders = tuple(inputs.text_encoders)
    if not gpu:
        return tuple(dict.fromkeys(("transformer", *encoders, "vae"), "cpu").items())
    return layout_parts(encoders, layout)


def layout_parts(encoders: tuple[str, ...], layout: Layout) -> tuple[tuple[str, str], ...]:
    """Where each part lives on a card in `layout`: (component, gpu/group/model/sequential)."""
    if layout == "gpu":
        where = dict.fromkeys(("transformer", *encoders, "vae"), "gpu")
    elif layout == "text-offloaded":
        where = {"transformer": "gpu", **dict.fromkeys(encoders, "group"), "vae": "gpu"}
    elif layout == "text-cpu":
        where = {"transformer": "gpu", **dict.fromkeys(encoders, "cpu"), "vae": "gpu"}
    elif layout == "group":
        where = {"transformer": "group", **dict.fromkeys(encoders, "group"), "vae": "gpu"}
    else:
        where = dict.fromkeys(("transformer", *encoders, "vae"), layout)
    return tuple(where.items())


def ram_capacity(facts: DeviceFacts) -> int:
    """RAM one model's weights may take: all of it less what the process and the OS keep."""
    return max(0, facts.host_memory - RAM_RESERVE)


def _candidates(options: MemoryOptions, gpu: bool) -> list[tuple[bool, Layout, int | None]]:
    """(fp8 text encoders, layout, tile) in order of preference."""
    if not gpu:
        layouts: tuple[Layout, ...] = ("gpu",)  # one layout: every part in RAM
    elif options.cpu_offload == "auto":
        layouts = LAYOUTS
    else:
        layouts = {"none": ("gpu",), "model": ("model",), "group": ("group",), "sequential": ("sequential",)}[
            options.cpu_offload
        ]
    if options.vae_tiling == "auto" and gpu:
        tiles = [None, *range(math.isqrt(options.max_pixels) // 64 * 64, SMALLEST_TILE - 1, -64)]
    else:
        tiles = [NATIVE_TILE if options.vae_tiling is True else None]
    return [(fp8, layout, tile) for fp8 in (False, True) for layout in layouts for tile in tiles]


def plan_preset(facts: DeviceFacts, inputs: PresetInputs, options: MemoryOptions, dtype: object) -> MemoryPreset:
    """The cheapest layout of the model on this card and RAM, by the estimates; `dtype` is the
    pipeline's compute dtype (`auto_dtype`: fp16 before Ampere, fp32 on the CPU)."""
    dtype_name = str(dtype).removeprefix("torch.")
    inputs = _quantized_at_load(facts, inputs, options, dtype_name)
    found = _first_fit(facts, inputs, options, dtype_name)
    if found is None:
        return _no_fit(facts, inputs, options, dtype_name)
    fp8, layout, tile, need = found
    gpu = facts.is_gpu
    pin = layout in ("text-offloaded", "group") and 2 * need.ram <= ram_capacity(facts)
    preset = MemoryPreset(
        family=inputs.family,
        cpu_offload=OFFLOAD[layout] if gpu else "none",
        vae_tiling_above=tile,
        attention_slicing=options.attention_slicing is True,
        channels_last=False,  # the transformer has no convolutions; the VAE decodes once
        parts=_parts(inputs, layout, gpu),
        fp8_storage=tuple(inputs.text_encoders) if fp8 else (),
        dtype=dtype_name,
        pin_streams=pin,
        quantize="nf4" if inputs.quantized == "nf4" else None,
        needs=Footprint(weights=need.weights, on_card=need.on_card, in_ram=need.ram, working=need.card - need.on_card)
        if gpu else Footprint(need.weights, 0, need.weights, 0),
    )
    return replace(preset, reason=_reason(facts, inputs, preset, layout, need, dtype_name))


def _nf4_runs(facts: DeviceFacts) -> bool:
    """bitsandbytes' CUDA kernels start at sm_60; diffusers 0.42.1's quantizer refuses without a GPU."""
    return facts.is_gpu and facts.capability >= (6, 0)


def _quantized_at_load(
    facts: DeviceFacts, inputs: PresetInputs, options: MemoryOptions, dtype_name: str
) -> PresetInputs:
    """The inputs as they will be held: a 16-bit transformer as NF4 where ALICE_QUANTIZE says so
    (`nf4`: always; `auto`: where the 16 bits would leave the card every step, or fit nowhere, and
    NF4 stays whole on the card)."""
    if inputs.quantized or options.quantize == "none":
        return inputs
    nf4 = replace(
        inputs, transformer_bytes=int(inputs.transformer_params * NF4_BYTES_PER_PARAM), quantized="nf4",
        quantize_at_load=True,
    )
    if options.quantize == "nf4":
        return nf4  # on the CPU or before sm_60 the plan then says why it cannot
    if not facts.is_gpu or facts.capability < (6, 0) or options.cpu_offload != "auto":
        return inputs  # an offload the operator chose is theirs to run in 16 bits
    if _first_fit(facts, inputs, options, dtype_name, WHOLE_TRANSFORMER) is not None:
        return inputs
    return nf4 if _first_fit(facts, nf4, options, dtype_name) is not None else inputs


def _first_fit(
    facts: DeviceFacts, inputs: PresetInputs, options: MemoryOptions, dtype_name: str,
    layouts: tuple[Layout, ...] = LAYOUTS,
) -> tuple[bool, Layout, int | None, _Need] | None:
    if inputs.quantized == "nf4" and not _nf4_runs(facts):
        return None
    if inputs.quantized == "nf4":
        # diffusers' group offload moves a weight's data and not bitsandbytes' quantization state
        # beside it (hooks/group_offloading.py `_transfer_tensor_to_device`): NF4 stays whole on the card.
        layouts = tuple(layout for layout in layouts if layout in WHOLE_TRANSFORMER)
    card, ram = card_capacity(facts), ram_capacity(facts)
    for fp8, layout, tile in _candidates(options, facts.is_gpu):
        if (fp8 and not inputs.text_encoders) or layout not in (layouts if facts.is_gpu else ("gpu",)):
            continue
        if fp8 and layout == "text-cpu":
            continue  # the encoders run in RAM in bf16: fp8 storage there would only slow them down
        need = _need(inputs, layout, fp8, tile, options.max_pixels, dtype_name)
        if not facts.is_gpu:
            need = _Need(0, need.weights, need.weights, 0)  # everything in RAM, activations too small to matter here
        if need.card <= card and need.ram <= ram:
            return fp8, layout, tile, need
    return None


DESCRIPTIONS: dict[Layout, str] = {
    "gpu": "everything on the card",
    "text-offloaded": "transformer and VAE on the card, text encoders streamed onto it per prompt (group offload)",
    "text-cpu": "transformer and VAE on the card, text encoders run on the CPU (their output moved to the card)",
    "model": "model CPU offload (one whole part on the card at a time)",
    "group": "transformer and text encoders streamed onto the card block by block (group offload), VAE on the card",
    "sequential": "sequential CPU offload (layer by layer, slowest)",
}


def _reason(
    facts: DeviceFacts, inputs: PresetInputs, preset: MemoryPreset, layout: Layout, need: _Need, dtype_name: str
) -> str:
    stored = {"gguf": "GGUF", "nf4": "NF4"}.get(inputs.quantized or "", "16-bit")
    if inputs.quantize_at_load:
        stored = "16-bit transformer quantized to NF4 at load,"
    else:
        stored += " transformer"
    notes = [
        f"{inputs.family} ({stored} {inputs.transformer_bytes / GB:.1f} GB): "
        + (DESCRIPTIONS[layout] if facts.is_gpu else f"on the CPU in {preset.dtype}"),
        f"VAE tiling above {preset.vae_tiling_above} px" if preset.vae_tiling_above else "no VAE tiling",
    ]
    if preset.fp8_storage:
        notes.append(f"text encoders stored in fp8 ({', '.join(preset.fp8_storage)}): 16 bits do not fit")
    if facts.is_gpu:
        if facts.capability < (8, 0):
            clipped = FAMILY_FIGURES[inputs.family].fp16_clipped
            clip = "diffusers clips its fp16 activations" if clipped else "fp16 untested for this transformer"
            notes.append(f"fp16, no bf16 before compute capability 8.0 ({clip})")
        if inputs.quantized == "gguf" and facts.capability < (7, 0):
            notes.append("GGUF dequantized in PyTorch each step (its fast kernels need compute capability 7.0)")
        notes.append(
            f"estimated peak {need.card / GiB:.1f} of {card_capacity(facts) / GiB:.1f} GiB on the card, "
            f"{need.ram / GiB:.1f} of {ram_capacity(facts) / GiB:.1f} GiB RAM for weights"
        )
    else:
        notes.append(f"estimated {need.ram / GiB:.1f} of {ram_capacity(facts) / GiB:.1f} GiB RAM for weights")
    return "; ".join(notes)


def _no_fit(facts: DeviceFacts, inputs: PresetInputs, options: MemoryOptions, dtype_name: str) -> MemoryPreset:
    where = (
        f"a {facts.total_memory / GiB:.1f} GiB card ({facts.name}) with {facts.host_memory / GiB:.0f} GiB RAM"
        if facts.is_gpu else f"the CPU with {facts.host_memory / GiB:.0f} GiB RAM"
    )
    stored = f"{inputs.quantized.upper()} " if inputs.quantized else "16-bit "
    size = inputs.transformer_bytes / GB
    reason = f"{inputs.family} with a {stored}transformer of {size:.1f} GB does not fit {where}"
    if inputs.quantized == "nf4" and not _nf4_runs(facts):
        reason += (": NF4 (bitsandbytes) needs a CUDA card of compute capability 6.0 or newer"
                   + (f", {facts.name} has {facts.capability[0]}.{facts.capability[1]}" if facts.is_gpu else
                      " (diffusers 0.42.1 does not quantize without a GPU)"))
    else:
        reason += f" by the estimates; would fit: {'; or '.join(_what_would_fit(facts, inputs, options, dtype_name))}"
    return MemoryPreset(
        family=inputs.family, cpu_offload="none", vae_tiling_above=None, attention_slicing=False,
        channels_last=False, dtype=dtype_name, fits=False, reason=reason,
    )


def _what_would_fit(facts: DeviceFacts, inputs: PresetInputs, options: MemoryOptions, dtype_name: str) -> list[str]:
    """A smaller quantized transformer file, more RAM: each that the estimates say would fit."""
    ways = []
    largest = _largest_transformer(facts, inputs, options, dtype_name)
    if largest:
        listed = FAMILY_FIGURES[inputs.family].gguf
        files = [f"{name} ({size} GB)" for name, size in listed.items() if size * GB <= largest]
        q4 = inputs.transformer_params * Q4_0_BYTES_PER_PARAM
        example = f" (for scale, a GGUF Q4_0 of it is about {q4 / GB:.1f} GB)" if not listed else ""
        named = f": GGUF {', '.join(files[:2])}" if files else example
        ways.append(f"a quantized transformer file of at most {largest / GB:.1f} GB{named}")
    if facts.is_gpu:
        roomy = replace(facts, host_memory=1 << 50)
        if _first_fit(roomy, inputs, options, dtype_name) is not None:
            needed = min(
                _need(inputs, layout, fp8, tile, options.max_pixels, dtype_name).ram
                for fp8, layout, tile in _candidates(options, True)
                if _need(inputs, layout, fp8, tile, options.max_pixels, dtype_name).card <= card_capacity(facts)
            )
            ways.append(f"{math.ceil((needed + RAM_RESERVE) / GiB)} GiB of RAM")
    else:
        needed = _need(inputs, "gpu", True, None, options.max_pixels, dtype_name).weights
        ways.append(f"{math.ceil((needed + RAM_RESERVE) / GiB)} GiB of RAM")
    if not ways:
        ways.append("a larger card: the text encoders and VAE alone do not fit beside any transformer")
    return ways


def _largest_transformer(facts: DeviceFacts, inputs: PresetInputs, options: MemoryOptions, dtype_name: str) -> int:
    """The largest quantized transformer file that would fit, to 0.1 GB; 0 if none would."""
    def fits(size: int) -> bool:
        trial = replace(inputs, transformer_bytes=size, quantized="gguf")  # what it names: GGUF files
        return _first_fit(facts, trial, options, dtype_name) is not None

    low, high = 0, inputs.transformer_bytes
    if not fits(int(0.1 * GB)):
        return 0
    while high - low > 0.1 * GB:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def preset_for(facts: DeviceFacts, family: str, options: MemoryOptions, dtype: object) -> MemoryPreset:
    """Any family's preset: a UNet family's from device.resolve_preset, a transformer family's
    planned for its reference checkpoint (what `/health` shows before a model is loaded)."""
    if family in TRANSFORMER_FAMILIES:
        return plan_preset(facts, reference_inputs(family), options, dtype)
    return resolve_preset(facts, family, options, dtype)  # type: ignore[arg-type]


def check_fits(preset: MemoryPreset) -> None:
    """Raise PresetDoesNotFit, with what would fit, when the preset found no layout."""
    if not preset.fits:
        raise PresetDoesNotFit(preset.reason)
