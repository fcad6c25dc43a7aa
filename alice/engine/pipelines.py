"""Loading diffusers pipelines from local folders onto the chosen device."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from alice.engine.device import (
    FAMILIES,
    CacheCapacity,
    DeviceFacts,
    Footprint,
    MemoryOptions,
    MemoryPreset,
    auto_dtype,
    batch_limit,
    cache_capacity,
    check_device_supported,
    footprint,
    read_device_facts,
    resolve_device,
    resolve_preset,
)
from alice.engine.escalation import cheaper_layout, layout_name, layout_rank
from alice.engine.families import Family, detect_family, family_named
from alice.engine.generate import GenerationSpec, images_per_call
from alice.engine.memory_figures import TRANSFORMER_FAMILIES
from alice.engine.model_sizes import preset_inputs
from alice.engine.pipeline_configs import is_inpainting_checkpoint
from alice.engine.placement import apply_preset, enable_vae_tiling
from alice.engine.presets import check_fits, plan_preset, preset_for
from alice.engine.preview_decoders import load_tiny_autoencoder
from alice.engine.previews import TINY_AUTOENCODER_ATTRIBUTE
from alice.engine.relayout import relayout
from alice.engine.text_cache import cache_text_outputs
from alice.engine.text_encoder_files import text_encoders_from_files
from alice.engine.transformer_files import transformer_from_file

if TYPE_CHECKING:  # imported where they run: see alice/engine/__init__.py
    import torch
    from diffusers import DiffusionPipeline

logger = logging.getLogger("alice.engine")


@dataclass(frozen=True)
class DevicePlacement:
    """Where pipelines run, in which precision, and what the device is."""

    device: str
    dtype: torch.dtype
    facts: DeviceFacts = DeviceFacts()

    @property
    def is_gpu(self) -> bool:
        return self.device.startswith("cuda")


def choose_placement(device: str = "auto", dtype: str = "auto", facts: DeviceFacts | None = None) -> DevicePlacement:
    """The configured device (CUDA when `auto` finds a GPU, else the CPU) read once; with dtype
    `auto`, bf16 from Ampere on, fp16 on older cards, fp32 on the CPU (see `auto_dtype`).
    `facts` stand in for reading the device (tests describe a card that is not there)."""
    import torch

    facts = facts or read_device_facts(resolve_device(device))
    chosen = auto_dtype(facts) if dtype == "auto" else getattr(torch, dtype)
    return DevicePlacement(device=facts.device, dtype=chosen, facts=facts)


def memory_preset(folder: Path, placement: DevicePlacement, options: MemoryOptions) -> MemoryPreset:
    """The layout of a pipeline folder on the placement's device: a UNet family's by its
    family, a transformer family's planned for the sizes its files give (a GGUF transformer,
    a 9B among 4Bs)."""
    family = family_named(detect_family(folder))
    if family.is_unet:
        return resolve_preset(placement.facts, family.name, options, placement.dtype)
    return plan_preset(placement.facts, preset_inputs(folder, family.name), options, placement.dtype)


def load_pipeline(
    folder: Path,
    placement: DevicePlacement | None = None,
    options: MemoryOptions = MemoryOptions(),
    preset: MemoryPreset | None = None,
) -> DiffusionPipeline:
    """Load a diffusers pipeline folder of any family ALICE knows fully offline onto the device,
    with its family's text-to-image class, laid out by `preset` (by default the one `options`
    resolve to for its family on this device). The UNet-only options (attention slicing,
    channels_last, compiling) apply to the UNet families only.

    Attention runs through torch's scaled_dot_product_attention, diffusers' default on torch 2.
    Raises UnsupportedDevice when the installed torch has no kernels for the card, UnknownFamily
    for a folder of no known family, PresetDoesNotFit for a model that fits neither the card nor
    the RAM in any layout (before any weight is read).
    """
    import diffusers
    import torch
    from diffusers.utils import logging as diffusers_logging

    placement = placement or choose_placement()
    check_device_supported(placement.facts)
    family = family_named(detect_family(folder))
    preset = preset or memory_preset(folder, placement, options)
    check_fits(preset)  # PresetDoesNotFit, saying what would fit, before any weight is read
    diffusers_logging.disable_progress_bar()
    # Weights that stay in host memory (CPU runs, CPU offload) are read in whole. Memory-mapped,
    # they are file pages the kernel may drop while the model idles (memory pressure, proactive
    # reclaim) and fault back in during the next generation: side by side on this project's VM
    # (bench.overhead --full-size), the server's SD 1.5 runs took 1.25x the bare call with mapped
    # weights and 0.99x with weights read in. On the GPU the mapping is read once, into the card.
    in_host_memory = not placement.is_gpu or preset.cpu_offload != "none"
    # The family's own class, not AutoPipeline's guess from the index: a folder whose index names
    # its img2img class loads as text-to-image all the same. An inpainting checkpoint's 9-channel
    # UNet draws nothing without a mask: it loads as the family's inpaint class (text to image is
    # drawn through it all masked, alice/engine/masks.py whole_redraw).
    inpainting = family.inpaint is not None and is_inpainting_checkpoint(folder)
    pipeline_class = getattr(diffusers, family.inpaint if inpainting else family.text_to_image)
    pipe = pipeline_class.from_pretrained(
        str(folder), dtype=placement.dtype, local_files_only=True, disable_mmap=in_host_memory,
        # A stored .gguf or fine-tune file; or a 16-bit transformer the preset quantizes to NF4, loaded
        # straight onto the card where it stays there (no 16-bit copy in RAM), else into RAM.
        **transformer_from_file(
            folder, placement.dtype, in_host_memory, quantize=preset.quantize,
            device=placement.device if dict(preset.parts).get("transformer") == "gpu" else "cpu",
        ),
        **text_encoders_from_files(folder, placement.dtype),  # a stored GGUF T5
    )
    if in_host_memory:
        _copy_mapped_text_encoders(pipe)
    if not family.is_unet:  # each part where its planned preset puts it (alice/engine/placement.py)
        apply_preset(pipe, preset, placement.device)
        cache_text_outputs(pipe)  # a prompt drawn again skips T5's pass (alice/engine/text_cache.py)
    elif placement.is_gpu and preset.cpu_offload == "model":
        pipe.enable_model_cpu_offload(device=placement.device)
    elif placement.is_gpu and preset.cpu_offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=placement.device)
    else:
        pipe.to(placement.device)
    if family.is_unet:
        if preset.attention_slicing:
            pipe.enable_attention_slicing()
        if placement.is_gpu and preset.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
        if options.compile_unet:
            compile_unet(pipe, placement, preset)
    elif options.compile_unet or preset.attention_slicing:
        logger.info("%s is a %s model, with no UNet: attention slicing and compile_unet do not apply",
                    folder.name, family.name)
    if family.is_unet and preset.vae_tiling_above:  # apply_preset tiles a transformer family's VAE
        enable_vae_tiling(pipe.vae, preset.vae_tiling_above)
    pipe.set_progress_bar_config(disable=True)
    logger.info(
        "loaded %s%s pipeline %s on %s (%s); memory preset %s",
        family.name, " inpainting" if inpainting else "", folder.name, placement.device, placement.dtype,
        preset.describe(),
    )
    return pipe


def compile_refusal(facts: DeviceFacts, cpu_offload: str = "none", compiler_found: bool = True) -> str | None:
    """Why the UNet cannot be compiled here, or None when it can.

    On a GPU torch.compile generates Triton kernels, and Triton needs compute capability 7.0
    or newer, and a C compiler at run time for its kernel launchers. On the CPU it generates
    C++ (inductor's CPU backend), which needs a C++ compiler. Without one every generation
    would fail at its first step. ALICE's container image has none (no Debian package is added
    to its base: docs/deploy.md, "Compiling the UNet"), so there it always runs eager; compile
    is for bare hosts with gcc (and g++ for the CPU). Under sequential offload the weights live on the meta device between layers, so
    a LoRA cannot be fused into them (see loras_applied), and each layer's hooks break the
    graph anyway.
    """
    if facts.is_gpu and facts.capability < (7, 0):
        major, minor = facts.capability
        return f"torch.compile needs compute capability 7.0 or newer (Triton); {facts.name} has {major}.{minor}"
    if not compiler_found:
        needed = "a C compiler (CC, gcc or clang) for Triton" if facts.is_gpu else "a C++ compiler (CXX or g++)"
        return (f"torch.compile needs {needed}, and there is none on this host (the container image has none: "
                "compiling is for bare hosts, see docs/deploy.md)")
    if cpu_offload == "sequential":
        return "torch.compile does not go with sequential CPU offload"
    return None


def host_compiler(gpu: bool) -> str | None:
    """The compiler torch.compile's backend would run, if the host has it: for Triton (GPU) CC,
    else gcc, else clang (triton/runtime/build.py); for inductor's C++ (CPU) CXX, else g++
    (torch._inductor.config.cpp.cxx)."""
    candidates = [os.environ.get("CC"), "gcc", "clang"] if gpu else [os.environ.get("CXX") or "g++"]
    return next((path for name in candidates if name and (path := shutil.which(name))), None)


def compile_unet(pipe: DiffusionPipeline, placement: DevicePlacement, preset: MemoryPreset) -> None:
    """Compile the UNet in place, where it can be (else say why and leave it eager). Lazily:
    the compile itself happens in the warm-up's first calls (compiled_unet.compile_and_warm).

    In place (`Module.compile`), not `pipe.unet = torch.compile(pipe.unet)`: diffusers' and
    peft's LoRA loading do not see through the OptimizedModule wrapper and fail half-way,
    leaving the adapter in the model. The weights are frozen first because peft freezes them
    when it loads a LoRA and dynamo guards on requires_grad: a flip would recompile the UNet.
    On the CPU inductor's default mode: "max-autotune" there tries C++ GEMM templates, and the
    demo UNet's first compile took 270 s instead of 81 s on the project's 2-core VM.
    """
    reason = compile_refusal(placement.facts, preset.cpu_offload, host_compiler(placement.is_gpu) is not None)
    if reason:
        logger.warning("not compiling the UNet: %s; it runs eager", reason)
        return
    pipe.unet.requires_grad_(False)
    pipe.unet.compile(mode="max-autotune-no-cudagraphs" if placement.is_gpu else None)


def unet_is_compiled(pipe: DiffusionPipeline) -> bool:
    """Whether `compile_unet` compiled this pipeline's UNet (Module.compile keeps its compiled
    call on the module); False for a transformer pipeline."""
    return getattr(getattr(pipe, "unet", None), "_compiled_call_impl", None) is not None


def _copy_mapped_text_encoders(pipe: DiffusionPipeline) -> None:
    """Diffusers passes `disable_mmap` to its own models only; the transformers text encoders
    still map their files, so their tensors are copied into the process's memory here."""
    import torch
    from transformers import PreTrainedModel

    with torch.no_grad():
        for component in pipe.components.values():
            if isinstance(component, PreTrainedModel):
                for tensor in (*component.parameters(), *component.buffers()):
                    tensor.data = tensor.data.clone()


def pipeline_bytes(pipe: DiffusionPipeline) -> int:
    """Memory its weights take: the sum over every torch module of the pipeline."""
    import torch

    return sum(_module_bytes(c) for c in pipe.components.values() if isinstance(c, torch.nn.Module))


def weights_footprint(
    pipe: DiffusionPipeline, preset: MemoryPreset, placement: DevicePlacement, pixels: int
) -> Footprint:
    """A loaded pipeline's footprint from its measured weights."""
    import torch

    sizes = {name: _module_bytes(c) for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}
    return footprint(
        preset, placement.facts, placement.dtype, pixels,
        weights=sum(sizes.values()), unet=sizes.get("unet", sizes.get("transformer")), vae=sizes.get("vae"),
    )


def _module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


@dataclass
class LoadedPipeline:
    """A pipeline in memory with what a run needs to know about it."""

    name: str
    pipe: DiffusionPipeline
    base_scheduler_config: Any  # the model's own; each run builds its scheduler from it
    load_seconds: float
    size_bytes: int
    preset: MemoryPreset | None = None  # as planned at load
    footprint: Footprint | None = None  # where its weights are and what a generation needs
    family: Family = family_named("sd15")
    _image_to_image: DiffusionPipeline | None = None
    _inpaint: DiffusionPipeline | None = None
    layout: MemoryPreset | None = None  # the layout in effect, when a cheaper one replaced `preset`

    @property
    def current_layout(self) -> MemoryPreset | None:
        return self.layout or self.preset

    @property
    def image_to_image(self) -> DiffusionPipeline:
        """The img2img variant, sharing the loaded modules (no second copy of the weights); an
        inpainting checkpoint's own pipeline, whose UNet takes the mask (its edits and hires fix
        are drawn all masked, alice/engine/masks.py whole_redraw, as A1111 draws them). ValueError
        for a family without one (the protocol refuses those requests first)."""
        if self.is_inpainting_checkpoint:
            return self.pipe
        if self._image_to_image is None:
            import diffusers

            if self.family.image_to_image is None:
                raise ValueError(f"{self.family.name} models have no image-to-image pipeline in diffusers")
            self._image_to_image = _with_preview_decoder(
                getattr(diffusers, self.family.image_to_image).from_pipe(self.pipe), self.pipe)
            self._image_to_image.set_progress_bar_config(disable=True)
        return self._image_to_image

    @property
    def is_inpainting_checkpoint(self) -> bool:
        """A dedicated inpainting model (a 9-channel UNet), loaded as its family's inpaint class."""
        return self.family.inpaint is not None and type(self.pipe).__name__ == self.family.inpaint

    @property
    def inpaint(self) -> DiffusionPipeline:
        """The masked-edit variant: an inpainting checkpoint's own pipeline, else the family's
        inpaint class over the loaded modules (no second copy of the weights). ValueError for a
        family without one (the protocol refuses those requests first)."""
        if self.is_inpainting_checkpoint:
            return self.pipe
        if self._inpaint is None:
            import diffusers

            if self.family.inpaint is None:
                raise ValueError(f"{self.family.name} models have no inpainting pipeline in diffusers")
            self._inpaint = _with_preview_decoder(getattr(diffusers, self.family.inpaint).from_pipe(self.pipe), self.pipe)
            self._inpaint.set_progress_bar_config(disable=True)
        return self._inpaint


def _with_preview_decoder(variant: DiffusionPipeline, pipe: DiffusionPipeline) -> DiffusionPipeline:
    """from_pipe builds a variant of the loaded modules only: it carries the tiny autoencoder too."""
    tiny = getattr(pipe, TINY_AUTOENCODER_ATTRIBUTE, None)
    if tiny is not None:
        setattr(variant, TINY_AUTOENCODER_ATTRIBUTE, tiny)
    return variant


class PipelineCache:
    """The pipelines in memory within what the device holds, least recently used dropped first.

    Loaded models fit when the weights kept on the card plus the largest generation's working
    memory fit the card, the weights kept in RAM (CPU runs, CPU offload) fit half the RAM, and
    all weights together fit `budget_bytes` when the operator set one (ALICE_MODEL_CACHE_GB).
    The pipeline in use is never dropped, so one model always fits whatever the budget.
    Not thread-safe on purpose: only the generation worker touches it, so a model
    switch can never overlap a running generation.
    """

    def __init__(
        self,
        locate: Callable[[str], Path],
        placement: DevicePlacement,
        budget_bytes: int | None = None,
        options: MemoryOptions = MemoryOptions(),
        on_load: Callable[[str, float], None] | None = None,
        on_cheaper_layout: Callable[[str, str], None] | None = None,
        preview_decoder: Callable[[str], Path | None] | None = None,
    ) -> None:
        """`on_load(model, seconds)` after each load; `on_cheaper_layout(model, layout_name)` each
        time a model is laid out cheaper after running out of memory (the runtime counts both).
        `preview_decoder(family)` is the folder of a tiny autoencoder for that family's latents, or
        None (the runtime looks in the model store): loaded beside each model of the family."""
        self._preview_decoder = preview_decoder or (lambda family: None)
        self._locate = locate
        self._placement = placement
        self._capacity = cache_capacity(placement.facts, budget_bytes or None)
        self._options = options
        self._on_load = on_load or (lambda name, seconds: None)
        self._on_cheaper_layout = on_cheaper_layout or (lambda name, layout: None)
        self._loaded: OrderedDict[str, LoadedPipeline] = OrderedDict()
        self._presets: dict[str, MemoryPreset] | None = None
        self._kept = KeptLayouts()

    @property
    def placement(self) -> DevicePlacement:
        return self._placement

    @property
    def capacity(self) -> CacheCapacity:
        return self._capacity

    def presets(self) -> dict[str, MemoryPreset]:
        """The memory preset of each model family on this device, with these options: planned
        once, since neither changes while the cache lives (planning all families takes ~25 ms
        of CPU on a small card, and `/health` shows them on every probe)."""
        if self._presets is None:
            self._presets = {
                family: preset_for(self._placement.facts, family, self._options, self._placement.dtype)
                for family in (*FAMILIES, *TRANSFORMER_FAMILIES)
            }
        return dict(self._presets)

    def names(self) -> list[str]:
        return list(self._loaded)

    def used_bytes(self) -> int:
        return sum(loaded.size_bytes for loaded in self._loaded.values())

    def get(self, name: str) -> LoadedPipeline:
        """The pipeline of a stored model, loading it (and evicting others) if needed."""
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return self._loaded[name]
        check_device_supported(self._placement.facts)  # before the store: the card is the first problem
        folder = self._locate(name)
        preset = memory_preset(folder, self._placement, self._options)
        # Make room for roughly its weights on disk before loading, then settle exactly.
        on_disk = _weights_on_disk(folder)
        family = family_named(detect_family(folder))
        self._evict_until_fits(
            footprint(preset, self._placement.facts, self._placement.dtype, self._options.max_pixels,
                      weights=on_disk, unet=_weights_on_disk(folder / family.denoiser),
                      vae=_weights_on_disk(folder / "vae"))
        )
        started = time.perf_counter()
        pipe = load_pipeline(folder, self._placement, self._options, preset)
        self._attach_preview_decoder(pipe, family, name)
        measured = weights_footprint(pipe, preset, self._placement, self._options.max_pixels)
        loaded = LoadedPipeline(
            name, pipe, pipe.scheduler.config, time.perf_counter() - started, measured.weights, preset, measured,
            family,
        )
        self._evict_until_fits(measured)
        self._loaded[name] = loaded
        self._on_load(name, loaded.load_seconds)
        return loaded

    def _attach_preview_decoder(self, pipe: DiffusionPipeline, family: Family, name: str) -> None:
        """Set the store's tiny autoencoder for the family on the pipeline (previews.decoder_for
        uses it, only for a job that asks for previews), on the device where the pipeline runs,
        in its dtype: with CPU offload that is the card, which the latents are on at each step.
        A decoder that does not load leaves the linear preview: the model is served all the same."""
        folder = self._preview_decoder(family.name)
        if folder is None:
            return
        try:
            tiny = load_tiny_autoencoder(folder, pipe._execution_device, self._placement.dtype)
        except Exception as exc:  # a broken stored folder must not keep the model from loading
            logger.warning("preview decoder %s for %s did not load, previews use the linear map: %s: %s",
                           folder.name, name, type(exc).__name__, exc)
            return
        setattr(pipe, TINY_AUTOENCODER_ATTRIBUTE, tiny)
        logger.info("previews of %s through the tiny autoencoder %s", name, folder.name)

    def images_per_call(self, name: str, spec: GenerationSpec, max_batch: int) -> int:
        """How many images of the spec's size one call of model `name` may draw, at most
        `max_batch`.

        On a GPU, a UNet family's by the estimate of their working memory (device.batch_limit)
        within the card memory this cache leaves beside the weights kept on it: the card as read
        at start, less every loaded model's weights there (and this one's, not yet loaded). The
        cache keeps room for one image of ALICE_MAX_PIXELS beside them, so a batch is never
        given less than that. Elsewhere (the CPU, whose RAM the batch shares with everything
        else; the transformer families, whose planner estimates one image) the pixels of one
        largest image: n x width x height <= ALICE_MAX_PIXELS (generate.images_per_call).
        """
        pixels = spec.width * spec.height
        by_pixels = images_per_call(spec, max_batch, self._options.max_pixels)
        if not self._placement.is_gpu:
            return by_pixels
        loaded = self._loaded.get(name)
        if loaded is not None:
            if not loaded.family.is_unet or loaded.preset is None:
                return by_pixels
            preset, pipe = loaded.preset, loaded.pipe
            sizes = {"unet": _module_bytes(pipe.unet), "vae": _module_bytes(pipe.vae)}
            on_card = [f.on_card for f in self._footprints()]
        else:  # not loaded yet: as `get` will load it, with its weights' sizes on disk
            folder = self._locate(name)
            if not family_named(detect_family(folder)).is_unet:
                return by_pixels
            preset = memory_preset(folder, self._placement, self._options)
            sizes = {"unet": _weights_on_disk(folder / "unet"), "vae": _weights_on_disk(folder / "vae")}
            incoming = footprint(preset, self._placement.facts, self._placement.dtype, self._options.max_pixels,
                                 weights=_weights_on_disk(folder), **sizes)
            on_card = [f.on_card for f in (*self._footprints(), incoming)]
        facts, dtype = self._placement.facts, self._placement.dtype
        reserved = footprint(preset, facts, dtype, self._options.max_pixels, **sizes).working
        room = max(self._capacity.card - sum(on_card), reserved)
        return batch_limit(preset, facts, dtype, pixels, max_batch, room, **sizes)

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

    def recover_from_out_of_memory(self, name: str) -> None:
        """After a generation of `name` ran out of memory: unload every other model, put back
        the model CPU offload layout (a failed run leaves the model it was in on the card, where
        diffusers' end-of-run `maybe_free_model_hooks` would have moved it back to RAM), and hand
        the freed memory back. Call it outside the `except` block: the exception's traceback
        holds the failed run's frames, and with them its tensors."""
        loaded = self._loaded.get(name)
        layout = loaded.current_layout if loaded is not None else None
        if layout is not None and layout.cpu_offload == "model":
            loaded.pipe.maybe_free_model_hooks()  # all back to RAM, hooks re-installed
        self.drop_all_but(name)

    # -- layouts kept after running out of memory ---------------------------------------------
    def get_for_size(self, name: str, width: int, height: int) -> LoadedPipeline:
        """The pipeline of a model laid out for images of this size: as planned, or in the
        cheaper layout kept since an image of this size or smaller ran out of memory."""
        loaded = self.get(name)
        wanted = self._kept.layout_for(name, width * height) or loaded.preset
        if loaded.preset is not None and wanted != loaded.current_layout:
            logger.info("model %s: laying it out as %s for %dx%d images", name, layout_name(wanted), width, height)
            self._lay_out(loaded, wanted)
        return loaded

    def lay_out_cheaper(self, name: str, width: int, height: int) -> bool:
        """After one `width` x `height` image of a loaded model ran out of memory (and
        `recover_from_out_of_memory`): lay it out one step cheaper (alice/engine/escalation.py)
        and keep that for images of this size and larger, in this process. False when no
        cheaper layout is left (or an explicit setting pins it), which the log says."""
        loaded = self._loaded.get(name)
        current = loaded.current_layout if loaded is not None else None
        if current is None:
            return False
        step = cheaper_layout(current, self._options, gpu=self._placement.facts.is_gpu, width=width, height=height)
        if step.preset is None:
            logger.warning(
                "model %s ran out of memory drawing a %dx%d image in layout %s; no cheaper layout: %s",
                name, width, height, layout_name(current), step.note,
            )
            return False
        logger.warning(
            "model %s ran out of memory drawing a %dx%d image in layout %s; drawing it again in layout %s (%s), "
            "kept for images of %d pixels and more",
            name, width, height, layout_name(current), layout_name(step.preset), step.note, width * height,
        )
        self._lay_out(loaded, step.preset)
        self._kept.keep(name, width * height, (width, height), step.preset)
        self._on_cheaper_layout(name, layout_name(step.preset))
        return True

    def kept_layouts(self) -> dict[str, list[dict]]:
        """Per loaded model, the layouts kept after running out of memory (for `/health`)."""
        return {name: self._kept.public(name) for name in self._loaded if self._kept.public(name)}

    def _lay_out(self, loaded: LoadedPipeline, preset: MemoryPreset) -> None:
        relayout(loaded.pipe, preset, self._placement.device)
        loaded.layout = None if preset == loaded.preset else preset
        loaded.footprint = weights_footprint(loaded.pipe, preset, self._placement, self._options.max_pixels)

    def _evict_until_fits(self, incoming: Footprint) -> None:
        evicted = False
        while self._loaded and not self._capacity.fits([*self._footprints(), incoming]):
            name, _ = self._loaded.popitem(last=False)
            logger.info("unloading model %s to stay within the memory the device has", name)
            evicted = True
        if evicted:
            self.release_cached_memory()

    def _footprints(self) -> list[Footprint]:
        return [loaded.footprint for loaded in self._loaded.values() if loaded.footprint]

    def release_cached_memory(self) -> None:
        """Return freed memory to the device (after an eviction or an out-of-memory error)."""
        gc.collect()
        if self._placement.is_gpu:
            import torch

            torch.cuda.empty_cache()


class KeptLayouts:
    """Per model name, the layouts kept after running out of memory, each for images of at least
    so many pixels. Per process, and kept when the model is unloaded: the card it ran out of is
    the same when the model loads again (it loads as planned, and is laid out again for the
    first image that needs it). A restart forgets them."""

    def __init__(self) -> None:
        self._by_model: dict[str, dict[int, tuple[tuple[int, int], MemoryPreset]]] = {}

    def keep(self, name: str, pixels: int, size: tuple[int, int], preset: MemoryPreset) -> None:
        self._by_model.setdefault(name, {})[pixels] = (size, preset)

    def layout_for(self, name: str, pixels: int) -> MemoryPreset | None:
        """The cheapest layout kept for images of `pixels` (None: the planned one)."""
        kept = [preset for least, (_, preset) in self._by_model.get(name, {}).items() if least <= pixels]
        return max(kept, key=layout_rank, default=None)

    def public(self, name: str) -> list[dict]:
        return [
            {"from_size": f"{width}x{height}", "from_pixels": least, "layout": layout_name(preset), **preset.public()}
            for least, ((width, height), preset) in sorted(self._by_model.get(name, {}).items())
        ]


def _weights_on_disk(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
