"""bench.device_check's layout sections: what the offload layouts cost on the card, and the
out-of-memory re-layout in place (alice/engine/escalation.py, relayout.py) timed and checked, and
the transformer families' sections (the auto preset, then group offload).

On the CPU (--cpu) load_pipeline keeps everything where it is (there is nowhere to offload to) and
PipelineCache.lay_out_cheaper refuses for the same reason, so there the sections lay the pipeline
out with relayout() itself, the code both call, with the CPU as the execution device: they prove
the sections run, and record what accelerate does with such a layout (sequential offload fails).
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alice.engine.device import MemoryOptions, MemoryPreset
from alice.engine.escalation import cheaper_layout, layout_name
from alice.engine.families import detect_family, family_named
from alice.engine.pipelines import PipelineCache, choose_placement, load_pipeline, memory_preset
from alice.engine.presets import OFFLOAD, layout_parts
from alice.engine.relayout import relayout
from bench.device_sections import Context, Outcome, load_and_measure, measure, row
from bench.gpu import drawing_for, format_psnr, free_memory, psnr

OFFLOAD_STEPS = 8  # an offload line's steps (fewer than the family's default where that is more): time per step is its figure
OFFLOADS = ("model", "sequential")


def offload_layout(preset: MemoryPreset, offload: str) -> MemoryPreset:
    """`preset` with `offload` ("model", "sequential", or "group" for a transformer family) as
    escalation.cheaper_layout would make it: what load_pipeline lays out on a card."""
    if not preset.parts:
        return dataclasses.replace(preset, cpu_offload=offload)
    encoders = tuple(name for name, _ in preset.parts if name not in ("transformer", "vae"))
    return dataclasses.replace(preset, cpu_offload=OFFLOAD[offload], parts=layout_parts(encoders, offload),
                               pin_streams=False)


def offload_line(ctx: Context, folder: Path, offload: str, size: int) -> dict[str, Any]:
    """One image of the model in `folder` loaded with ALICE_CPU_OFFLOAD=`offload`: time, it/s,
    peak reserved memory; its error (as accelerate or diffusers raised it, in full) ends the line
    alone, and the pipeline goes with it (a failed sequential offload leaves its weights broken)."""
    family = family_named(detect_family(folder))
    spec = drawing_for(family, size, ctx.steps or min(family.default_steps, OFFLOAD_STEPS)).spec
    label = f"{family.name} {offload} offload"
    placement = choose_placement(ctx.device)
    options = MemoryOptions(cpu_offload=offload)
    started = time.perf_counter()
    pipe = None
    try:
        pipe = load_pipeline(folder, placement, options)
        layout = memory_preset(folder, placement, options)
        if not placement.is_gpu:
            layout = offload_layout(layout, offload)
            relayout(pipe, layout, ctx.device)
        load_s = time.perf_counter() - started
        measured = measure(ctx, pipe, family, spec, runs=1)
        measured.load_s = load_s
        return row(label, measured, spec.steps, size=size, note=f"layout {layout_name(layout)}")
    except Exception as error:
        text = f"{type(error).__name__}: {error}".strip()
        ctx.log(f"  {label}: {text.splitlines()[0][:200]}")
        return {"line": label, "status": "error", "size": size, "note": text.splitlines()[0][:300],
                "error": text[:8000], "traceback": traceback.format_exc()[-4000:]}
    finally:
        del pipe
        free_memory()


def offload(ctx: Context) -> Outcome:
    """SD 1.5 and SDXL at their sizes with model and with sequential offload, one image each
    (OFFLOAD_STEPS steps): whether the layout draws at all on this card, its time and peak reserved
    memory. On the CPU, SD 1.5 only (SDXL's lines run the same code), and its sequential line is
    expected to fail (accelerate's set_module_tensor_to_device, a TypeError: see
    bench/RESULTS.md); the row keeps the error's text in full."""
    families = (("sd15", ctx.sd_size),) if ctx.cpu else (("sd15", ctx.sd_size), ("sdxl", ctx.sdxl_size))
    outcome = Outcome()
    for architecture, size in families:
        for layout in OFFLOADS:
            if ctx.seconds_left <= 0:
                outcome.rows.append({"line": f"{architecture} {layout} offload", "status": "skipped",
                                     "note": "over --budget-s"})
                continue
            outcome.rows.append(offload_line(ctx, ctx.folder(architecture), layout, size))
    return outcome


def relayout_in_place(ctx: Context) -> Outcome:
    """SD 1.5 at its size through the server's PipelineCache: drawn as planned, laid out one step
    cheaper in place as after running out of memory (lay_out_cheaper; at 512 px, model offload),
    drawn again, laid back as planned (get_for_size for a smaller image), drawn again: how long each
    re-layout takes, and each image against the first (PSNR: the layout must not change it)."""
    placement = choose_placement(ctx.device)
    options = MemoryOptions()
    cache = PipelineCache(ctx.folder, placement, options=options)
    size = ctx.sd_size
    family = family_named("sd15")
    spec = drawing_for(family, size, ctx.steps or OFFLOAD_STEPS).spec
    outcome = Outcome()
    try:
        loaded = cache.get_for_size("sd15", size, size)
        planned = loaded.preset
        first = measure(ctx, loaded.pipe, family, spec, runs=1)
        outcome.rows.append(row(f"planned: {layout_name(planned)}", first, spec.steps, size=size))

        started = time.perf_counter()
        while True:  # the escalation's steps until the offload changes (VAE tiling first where it tiles)
            current = loaded.current_layout
            if placement.is_gpu:
                if not cache.lay_out_cheaper("sd15", size, size):
                    raise RuntimeError(f"no cheaper layout than {layout_name(current)} (see the log)")
            else:  # lay_out_cheaper refuses on the CPU: the same escalation step and relayout()
                step = cheaper_layout(current, options, gpu=True, width=size, height=size)
                if step.preset is None:
                    raise RuntimeError(step.note)
                relayout(loaded.pipe, step.preset, ctx.device)
                loaded.layout = step.preset
            if loaded.current_layout.cpu_offload != planned.cpu_offload:
                break
        cheaper_s = time.perf_counter() - started
        cheaper = measure(ctx, loaded.pipe, family, spec, runs=1)
        outcome.rows.append(compared(f"cheaper: {layout_name(loaded.current_layout)}", cheaper, first, spec.steps,
                                     size, cheaper_s))

        started = time.perf_counter()
        if placement.is_gpu:
            cache.get_for_size("sd15", size // 2, size // 2)  # below the kept size: laid out as planned
        else:
            relayout(loaded.pipe, planned, ctx.device)
            loaded.layout = None
        back_s = time.perf_counter() - started
        if loaded.current_layout != planned:
            raise RuntimeError(f"get_for_size left {layout_name(loaded.current_layout)}, not the planned layout")
        back = measure(ctx, loaded.pipe, family, spec, runs=1)
        outcome.rows.append(compared(f"back: {layout_name(planned)}", back, first, spec.steps, size, back_s))
        outcome.details = {"kept_layouts": cache.kept_layouts(), "via": "PipelineCache" if placement.is_gpu
                           else "relayout() (--cpu: PipelineCache does not offload on the CPU)"}
    finally:
        cache.drop("sd15")
        free_memory()
    return outcome


def compared(line: str, measured: Any, reference: Any, steps: int, size: int, relayout_s: float) -> dict[str, Any]:
    result = row(line, measured, steps, size=size, relayout_s=round(relayout_s, 3),
                 note=f"re-laid out in {relayout_s:.2f} s")
    if measured.image is not None and reference.image is not None:
        result.update(psnr_db=format_psnr(psnr(measured.image, reference.image)), psnr_vs="planned")
    return result


def transformer(architecture: str) -> Callable[[Context], Outcome]:
    """A transformer family at 1024x1024 as the server draws it (auto preset), then laid out with
    group offload (the transformer streamed block by block); its folder dropped after."""

    def section(ctx: Context) -> Outcome:
        ctx.drop_folder("sdxl")  # the disk for this family's weights (FLUX.1: 34 GB)
        try:
            folder = ctx.folder(architecture)
            line, _ = load_and_measure(ctx, folder, ctx.transformer_size, "ALICE auto")
            rows = [line]
            if ctx.seconds_left > 0:
                rows.append(offload_line(ctx, folder, "group", ctx.transformer_size))
        finally:
            ctx.drop_folder(architecture)
        return Outcome(rows=rows)

    section.__doc__ = f"{architecture} at 1024x1024 (random weights): the auto preset, then group offload."
    return section
