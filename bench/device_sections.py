"""The measurements of bench.device_check, one function per section (see its docstring).

Every section gets a `Context` (the device, the sizes of the mode, the deadline, the random-weight
folders) and returns its table rows and details; it raises to end itself alone. Every drawing goes
through ALICE's own `run_batch`, so the NaN check (alice/engine/finite.py) is the server's: a
drawing whose denoiser made NaN counts as one NaN, a VAE decode redone in float32 as one retry.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alice.engine.compiled_unet import CompiledShapes, compile_and_warm, graphs_compiled
from alice.engine.demo import DEMO_MODEL_DIR
from alice.engine.device import FAMILIES, MemoryOptions, has_tensor_cores
from alice.engine.families import Family, detect_family, family_named
from alice.engine.finite import NonFiniteOutput
from alice.engine.generate import BatchEntry, run_batch
from alice.engine.memory_figures import TRANSFORMER_FAMILIES
from alice.engine.pipelines import (
    PipelineCache,
    choose_placement,
    compile_refusal,
    compile_unet as compile_unet_in_place,
    host_compiler,
    load_pipeline,
    memory_preset,
    unet_is_compiled,
)
from alice.engine.presets import preset_for
from alice.engine.spec import GenerationSpec
from bench.card import GiB, card_used, peak_reserved, reset_peak
from bench.gpu import drawing_for, format_psnr, free_memory, psnr, save_dtype, synchronize
from bench.random_pipelines import CONFIGS, random_pipeline_folder

BATCH_SIZES = (1, 2, 4, 8)
MAX_BATCH_CEILING = 64  # ALICE_MAX_BATCH's largest value (alice/config.py): what memory alone allows
DEFAULT_MAX_BATCH = 8  # its default
COMPILE_IMAGES = 4  # the compiled shapes' batches on a card: 1 to this many images a call
FIT_STEPS = 2  # a batch's fit check: every step needs the same memory, so two tell as much as 25
CPU_BATCH_SIZES = (1, 2)  # --cpu proves the section runs; 8 images even at 64 px cost the suite seconds
DRAWN_FAMILIES = ("sd15", "sdxl", "sd3", "flux1-schnell")  # the preset rows: what this check draws


class SectionSkipped(Exception):
    """The section cannot run here; the message says why (reported as skipped, not as an error)."""


@dataclass
class Context:
    """What every section shares: the device, the mode's sizes, the deadline, the work folder."""

    device: str
    cpu: bool
    work_dir: Path
    deadline: float
    runs: int  # timed calls per line (after a warm-up call on the GPU)
    steps: int | None  # None: the family's default (SD 25, SD 3.5 28, FLUX.1 schnell 4)
    sd_size: int  # SD 1.5's lines
    sdxl_size: int
    transformer_size: int
    log: Callable[[str], None] = print

    @property
    def seconds_left(self) -> float:
        return self.deadline - time.perf_counter()

    def folder(self, architecture: str) -> Path:
        """SD 1.5's and the others' random-weight folders, built once per work folder (a section
        run in its own process finds the one its parent built). On the CPU, SD 1.5 is the demo
        model and the others are their architectures shrunk (random_pipelines' tiny sizes)."""
        if self.cpu and architecture == "sd15":
            return DEMO_MODEL_DIR
        folder = self.work_dir / (architecture + ("-tiny" if self.cpu else ""))
        done = folder / ".built"
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            started = time.perf_counter()
            family = family_named(detect_family(CONFIGS / architecture))
            random_pipeline_folder(architecture, folder, self.device, save_dtype(family), tiny=self.cpu)
            done.write_text(f"{time.perf_counter() - started:.1f}")
            self.log(f"  {architecture}: random weights built and saved in {done.read_text()} s")
        return folder

    def drop_folder(self, architecture: str) -> None:
        """Free the disk for the next family (FLUX.1's folder is 34 GB of a 64 GiB disk)."""
        if not (self.cpu and architecture == "sd15"):
            shutil.rmtree(self.work_dir / (architecture + ("-tiny" if self.cpu else "")), ignore_errors=True)


@dataclass
class Outcome:
    rows: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Measured:
    """One line's calls: the first (allocation, cuDNN's autotuning, compilation) apart."""

    load_s: float | None = None  # None: the section loaded it once for several lines
    first_s: float | None = None
    seconds: list[float] = field(default_factory=list)
    peak: int | None = None
    card: int | None = None
    nan: int = 0  # calls whose denoiser made NaN (NonFiniteOutput)
    vae_retries: int = 0  # decodes redone in float32 (logged once per model: see count_vae_retries)
    image: np.ndarray | None = None
    # The most images one pipeline call drew: run_batch splits a call that runs out of memory in
    # halves, as the server does, so a batch of 8 may have been drawn 4 and 4.
    call_size: int | None = None


class _RetryCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "decoded again in float32" in record.getMessage():
            self.count += 1


@contextmanager
def count_vae_retries() -> Iterator[_RetryCounter]:
    """The float32 decodes finite.py logs (once per VAE: a fresh pipeline per line, so per line)."""
    handler = _RetryCounter()
    engine = logging.getLogger("alice.engine")
    engine.addHandler(handler)
    try:
        yield handler
    finally:
        engine.removeHandler(handler)


def measure(ctx: Context, pipe: Any, family: Family, spec: GenerationSpec, batch: int = 1,
            runs: int | None = None) -> Measured:
    """A warm-up call (on the GPU), then up to `runs` timed calls of `batch` images (seeds spec.seed,
    spec.seed + 1, ...), stopping early when the next would pass the deadline; the allocator's peak
    over the timed calls and the card's use after them."""
    measured = Measured()
    entries = [BatchEntry(dataclasses.replace(spec, seed=spec.seed + index)) for index in range(batch)]
    config = pipe.scheduler.config

    def call() -> float:
        started = time.perf_counter()
        try:
            drawn = run_batch(pipe, config, entries, max_images=batch, family=family)
            images = drawn[0].images
            measured.call_size = min(measured.call_size or batch, *(output.batch for output in drawn))
            if measured.image is None:
                measured.image = np.asarray(images[0])
        except NonFiniteOutput:
            measured.nan += 1
        synchronize(ctx.device)
        return time.perf_counter() - started

    with count_vae_retries() as retries:
        if not ctx.cpu:  # the first call on a card allocates, autotunes cuDNN and compiles
            measured.first_s = call()
        reset_peak(ctx.device)
        for _ in range(runs or ctx.runs):
            measured.seconds.append(call())
            if time.perf_counter() + measured.seconds[-1] > ctx.deadline:
                break
    measured.peak = peak_reserved(ctx.device)
    measured.card = card_used(ctx.device)
    measured.vae_retries = retries.count
    return measured


def row(line: str, measured: Measured, steps: int, batch: int = 1, **extra: Any) -> dict[str, Any]:
    """A table row: the median time per call, steps and images per second, memory, NaN."""
    median = statistics.median(measured.seconds) if measured.seconds else None
    result: dict[str, Any] = {
        "line": line,
        "seconds": round(median, 4) if median else None,
        "runs": len(measured.seconds),
        "it_per_s": round(steps / median, 3) if median else None,
        "images_per_s": round(batch / median, 3) if median else None,
        "peak_reserved_gib": round(measured.peak / GiB, 3) if measured.peak is not None else None,
        "card_gib": round(measured.card / GiB, 3) if measured.card is not None else None,
        "nan": measured.nan,
        "vae_retries": measured.vae_retries,
        "load_s": round(measured.load_s, 2) if measured.load_s is not None else None,
        "first_call_s": round(measured.first_s, 2) if measured.first_s is not None else None,
    }
    result.update(extra)
    return result


def load_and_measure(ctx: Context, folder: Path, size: int, line: str, *, dtype: str = "auto",
                     options: MemoryOptions = MemoryOptions(), prepare: Callable[[Any], str | None] | None = None,
                     batch: int = 1) -> tuple[dict[str, Any], Measured]:
    """Load `folder` as the server would (placement `dtype`, `options`), `prepare` it (what it
    says goes into the row's note), draw at `size`, free it."""
    family = family_named(detect_family(folder))
    drawing = drawing_for(family, size, ctx.steps)
    started = time.perf_counter()
    pipe = load_pipeline(folder, choose_placement(ctx.device, dtype), options)
    try:
        note = prepare(pipe) if prepare else None
        load_s = time.perf_counter() - started
        measured = measure(ctx, pipe, family, drawing.spec, batch)
        measured.load_s = load_s
    finally:
        del pipe
        free_memory()
    extra = {"note": note} if note else {}
    return row(line, measured, drawing.spec.steps, batch, size=size, **extra), measured


# -- the sections ------------------------------------------------------------------------------
def preset(ctx: Context) -> Outcome:
    """The preset `auto` picks on this card for every family, its precision, channels_last and
    whether compile may run; rows for the families this check draws."""
    placement = choose_placement(ctx.device)
    facts = placement.facts
    dtype = str(placement.dtype).removeprefix("torch.")
    compiler = host_compiler(facts.is_gpu)
    refusal = compile_refusal(facts, "none", compiler is not None)
    presets = {name: preset_for(facts, name, MemoryOptions(), placement.dtype) for name in
               FAMILIES + TRANSFORMER_FAMILIES}
    outcome = Outcome(details={
        "dtype": dtype,
        "channels_last": has_tensor_cores(facts),
        "compile": refusal or f"runs ({compiler})",
        "presets": {name: {"describe": p.describe(), **p.public()} for name, p in presets.items()},
    })
    outcome.rows.append({"line": "auto", "note": f"dtype {dtype}; channels_last "
                         f"{'on' if has_tensor_cores(facts) else 'off'}; compile: {outcome.details['compile']}"})
    for name in DRAWN_FAMILIES:
        outcome.rows.append({"line": name, "note": presets[name].describe()})
    return outcome


def sd15(ctx: Context) -> Outcome:
    """SD 1.5 at 512x512 as the server draws it (auto preset), then with channels_last the other way."""
    return auto_and_channels_last(ctx, ctx.folder("sd15"), ctx.sd_size)


def sdxl(ctx: Context) -> Outcome:
    """SDXL at 1024x1024 as the server draws it (auto preset), then with channels_last the other way.
    Its folder stays for the batching and offload sections (the transformer sections drop it)."""
    return auto_and_channels_last(ctx, ctx.folder("sdxl"), ctx.sdxl_size)


def auto_and_channels_last(ctx: Context, folder: Path, size: int) -> Outcome:
    """The auto preset's line, then the same pipeline's UNet switched to the other memory format
    (issue 28 item 8: auto turns channels_last on where tensor cores are, unmeasured): the same
    drawing, its time against auto's and its image against auto's (PSNR). The switch is in
    place, so the second line costs no load; its error ends that line alone."""
    family = family_named(detect_family(folder))
    drawing = drawing_for(family, size, ctx.steps)
    started = time.perf_counter()
    pipe = load_pipeline(folder, choose_placement(ctx.device), MemoryOptions())
    try:
        load_s = time.perf_counter() - started
        auto_on = pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        measured = measure(ctx, pipe, family, drawing.spec)
        measured.load_s = load_s
        rows = [row("ALICE auto", measured, drawing.spec.steps, size=size,
                    note=f"channels_last {'on' if auto_on else 'off'}")]
        label = f"channels_last {'off' if auto_on else 'on'}"
        try:
            pipe.unet.to(memory_format=torch.contiguous_format if auto_on else torch.channels_last)
            other = measure(ctx, pipe, family, drawing.spec)
            line = row(label, other, drawing.spec.steps, size=size)
            if rows[0]["seconds"] and line["seconds"]:
                # Of the printed medians, so a reader can check the ratio against the table.
                ratio = line["seconds"] / rows[0]["seconds"]
                line["note"] = f"x{ratio:.2f} auto's time per call"
            if measured.image is not None and other.image is not None:
                line.update(psnr_db=format_psnr(psnr(other.image, measured.image)), psnr_vs="auto")
        except Exception as error:
            line = {"line": label, "status": "error", "note": f"{type(error).__name__}: {error}"[:300]}
        rows.append(line)
    finally:
        del pipe
        free_memory()
    return Outcome(rows=rows)


def precision(ctx: Context) -> Outcome:
    """SD 1.5 in fp32, fp16, fp16 storage with fp32 compute and bf16, side by side on this card:
    Pascal's open question is whether its slow fp16 arithmetic (1/64 of fp32 on GP102-GP107)
    makes fp16 storage with fp32 compute (diffusers' layerwise casting: half the weights' memory,
    fp32's speed and range) the better default there. Each line's image against fp32's (PSNR)."""
    folder = ctx.folder("sd15")

    def storage_fp16(pipe: Any) -> str:
        # The UNet and VAE (diffusers models) cast layer by layer; the 123M text encoder stays fp32.
        for name in ("unet", "vae"):
            getattr(pipe, name).enable_layerwise_casting(storage_dtype=torch.float16, compute_dtype=torch.float32)
        stored = {str(p.dtype).removeprefix("torch.") for p in pipe.unet.parameters()}
        return f"UNet weights stored in {', '.join(sorted(stored))}"

    lines = [("fp32", "float32", None), ("fp16", "float16", None),
             ("fp16 storage, fp32 compute", "float32", storage_fp16), ("bf16", "bfloat16", None)]
    outcome = Outcome()
    reference: np.ndarray | None = None
    for label, dtype, prepare in lines:
        if ctx.seconds_left <= 0:
            outcome.rows.append({"line": label, "status": "skipped", "note": "over --budget-s"})
            continue
        if ctx.cpu and dtype == "float16":  # the suite's seconds: bf16's line runs the same code
            outcome.rows.append({"line": label, "status": "skipped", "note": "--cpu: fp16 is emulated there, "
                                 "about 10x slower than fp32, and its line's code is bf16's"})
            continue
        try:
            line, measured = load_and_measure(ctx, folder, ctx.sd_size, label, dtype=dtype, prepare=prepare)
        except Exception as error:  # bf16 on a card without it: this line alone
            outcome.rows.append({"line": label, "status": "error", "note": f"{type(error).__name__}: {error}"[:300]})
            free_memory()
            continue
        if reference is None and label == "fp32":
            reference = measured.image
        elif reference is not None and measured.image is not None:
            line.update(psnr_db=format_psnr(psnr(measured.image, reference)), psnr_vs="fp32")
        outcome.rows.append(line)
    return outcome


def batching(ctx: Context) -> Outcome:
    """Images per second drawing 1, 2, 4 and 8 SD 1.5 images in one call (ALICE's run_batch) with
    the auto preset; each size's out-of-memory or error ends that size alone. Then the batch
    PipelineCache.images_per_call picks on this card (capped by the memory estimate,
    alice/engine/pipelines.py) for SD 1.5 and SDXL at their sizes, each drawn once to see it fit.
    `ALICE_MAX_BATCH`'s ceiling (64) lets memory alone decide on the card."""
    cache = PipelineCache(ctx.folder, choose_placement(ctx.device), options=MemoryOptions())
    family = family_named("sd15")
    drawing = drawing_for(family, ctx.sd_size, ctx.steps)
    outcome = Outcome()
    pipe = cache.get("sd15").pipe
    try:
        single = None
        for batch in CPU_BATCH_SIZES if ctx.cpu else BATCH_SIZES:
            if ctx.seconds_left <= 0:
                outcome.rows.append({"line": f"batch {batch}", "status": "skipped", "note": "over --budget-s"})
                continue
            try:
                measured = measure(ctx, pipe, family, drawing.spec, batch)
            except Exception as error:
                outcome.rows.append({"line": f"batch {batch}", "status": "error",
                                     "note": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
                free_memory()
                continue
            line = row(f"batch {batch}", measured, drawing.spec.steps, batch, size=ctx.sd_size)
            single = single or line["images_per_s"]
            notes = [f"x{line['images_per_s'] / single:.2f} the images/s of batch 1"] if single and line[
                "images_per_s"] else []
            if measured.call_size and measured.call_size < batch:
                notes.append(f"out of memory: drawn in calls of {measured.call_size}")
            line["note"] = "; ".join(notes)
            outcome.rows.append(line)
    finally:
        del pipe
        free_memory()
    # On the CPU SD 1.5 alone: SDXL's line runs the same code (the suite's seconds).
    for name, size in (("sd15", ctx.sd_size),) if ctx.cpu else (("sd15", ctx.sd_size), ("sdxl", ctx.sdxl_size)):
        line = f"images_per_call {name}"
        if ctx.seconds_left <= 0:
            outcome.rows.append({"line": line, "status": "skipped", "note": "over --budget-s"})
            continue
        try:
            outcome.rows.append(picked_batch(ctx, cache, name, size))
        except Exception as error:  # this family's line alone
            outcome.rows.append({"line": line, "status": "error", "note": f"{type(error).__name__}: {error}"[:400]})
        finally:
            cache.drop(name)
            free_memory()
    return outcome


def picked_batch(ctx: Context, cache: PipelineCache, name: str, size: int) -> dict[str, Any]:
    """The batch images_per_call gives model `name` at `size` (up to ALICE_MAX_BATCH's ceiling on
    a card, --cpu's largest batch on the CPU), drawn once in FIT_STEPS steps (the working memory of
    a step is the same in any number of them): whether run_batch had to split it (out of memory)
    and its peak reserved memory against the card."""
    family = family_named(name)
    spec = dataclasses.replace(drawing_for(family, size, ctx.steps).spec, steps=ctx.steps or FIT_STEPS)
    ceiling = CPU_BATCH_SIZES[-1] if ctx.cpu else MAX_BATCH_CEILING
    loaded = cache.get(name)
    picked = cache.images_per_call(name, spec, ceiling)
    at_default = cache.images_per_call(name, spec, DEFAULT_MAX_BATCH)
    measured = measure(ctx, loaded.pipe, family, spec, picked, runs=1)
    line = row(f"images_per_call {name}", measured, spec.steps, picked, size=size, images=picked)
    fits = measured.call_size == picked and not measured.nan
    notes = [f"picks {picked} of at most {ceiling} ({at_default} at the default ALICE_MAX_BATCH "
             f"{DEFAULT_MAX_BATCH})", "drawn in one call" if fits else f"split: calls of {measured.call_size}"]
    if measured.peak is not None:
        total = torch.cuda.get_device_properties(ctx.device).total_memory
        notes.append(f"peak reserved {measured.peak / GiB:.1f} of the card's {total / GiB:.1f} GiB")
    line.update(fits=fits, note="; ".join(notes))
    return line


def compile_unet(ctx: Context) -> Outcome:
    """SD 1.5's UNet compiled as the server compiles it (pipelines.compile_unet, then
    compiled_unet.compile_and_warm for one size at batches 1 to COMPILE_IMAGES): the graphs and
    the warm-up's seconds, eager against compiled time per step at that size, and a drawing at
    another size, which must run eager without compiling another graph. Runs where
    compile_refusal allows it (Triton needs 7.0 and a C compiler); bench.device_check runs it in
    its own process, so a compile that outlasts the budget is killed there. With --cpu the
    compiled code is the UNet's eager forward standing in (inductor's CPU compile of the demo takes
    minutes and dynamo's trace alone ~20 s): the routing, the record and the report run, no graph."""
    placement = choose_placement(ctx.device)
    folder = ctx.folder("sd15")
    preset = memory_preset(folder, placement, MemoryOptions())
    reason = None if ctx.cpu else compile_refusal(placement.facts, preset.cpu_offload,
                                                   host_compiler(placement.is_gpu) is not None)
    if reason:
        raise SectionSkipped(reason)
    family = family_named(detect_family(folder))
    drawing = drawing_for(family, ctx.sd_size, ctx.steps)
    images = CPU_BATCH_SIZES[-1] if ctx.cpu else COMPILE_IMAGES
    other_size = ctx.sd_size + 64  # outside the compiled shapes
    outcome = Outcome()
    pipe = load_pipeline(folder, placement, MemoryOptions(), preset)
    try:
        eager = measure(ctx, pipe, family, drawing.spec)
        outcome.rows.append(row("eager", eager, drawing.spec.steps, size=ctx.sd_size))
        if ctx.cpu:
            pipe.unet._compiled_call_impl = pipe.unet._call_impl  # the stand-in: see the docstring
        else:
            compile_unet_in_place(pipe, placement, preset)
        if not unet_is_compiled(pipe):
            raise RuntimeError("compile_unet left the UNet eager (see its log for why)")
        record = compile_and_warm(pipe, pipe.scheduler.config, family, CompiledShapes(ctx.sd_size, ctx.sd_size, images))
        compiled = measure(ctx, pipe, family, drawing.spec)
        line = row("compiled", compiled, drawing.spec.steps, size=ctx.sd_size)
        speed = (f"; x{statistics.median(eager.seconds) / statistics.median(compiled.seconds):.2f} eager's speed"
                 if eager.seconds and compiled.seconds else "")
        line["note"] = (f"{'--cpu stand-in, no graph: ' if ctx.cpu else ''}{record.graphs} graph(s) compiled in "
                        f"{record.seconds:.1f} s for 1-{images} images{speed}")
        outcome.rows.append(line)
        graphs, eager_calls = graphs_compiled(), record.eager_calls
        elsewhere = measure(ctx, pipe, family, dataclasses.replace(drawing.spec, width=other_size, height=other_size),
                            runs=1)
        recompiled = graphs_compiled() - graphs
        line = row(f"other size ({other_size} px)", elsewhere, drawing.spec.steps, size=other_size)
        line["note"] = (f"eager calls {record.eager_calls - eager_calls}, compiled calls {record.compiled_calls}, "
                        f"graphs compiled {recompiled}" + ("" if recompiled == 0 else " (a recompile: a bug)"))
        outcome.rows.append(line)
        outcome.details = {"record": record.public(), "recompiled_at_other_size": recompiled,
                           "eager_calls_at_other_size": record.eager_calls - eager_calls}
    finally:
        del pipe
        free_memory()
    return outcome


def memory(ctx: Context, args: list[str]) -> Outcome:
    """bench.memory's GPU figures (working memory of the UNet families' parts by size, from which
    alice/engine/device.py's constants come), where that module is in this tree: its own command
    (`python -m bench.memory --device cuda`, in its own process, so its allocator statistics start
    clean), the figures it writes kept in the report's details."""
    if importlib.util.find_spec("bench.memory") is None:
        raise SectionSkipped("no bench/memory.py in this tree")
    if ctx.cpu:
        raise SectionSkipped("its GPU mode needs a card (its CPU mode runs on its own)")
    figures = ctx.work_dir / "memory_figures_gpu.json"
    command = [sys.executable, "-m", "bench.memory", *args, "--write", str(figures)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=max(10.0, ctx.seconds_left),
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = (done.stdout + done.stderr)[-6000:]
    if done.returncode != 0 or not figures.exists():
        raise RuntimeError(f"{' '.join(command[1:])} exited {done.returncode}: {output[-1500:]}")
    return Outcome(rows=[{"line": " ".join(command[1:4]), "note": "figures in the JSON report's details"}],
                   details={"command": command[1:], "output": output,
                            "figures": json.loads(figures.read_text(encoding="utf-8"))})
