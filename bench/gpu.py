"""ALICE's pipeline configuration against plain diffusers, matched side by side, on one GPU.

    .venv/bin/python -m bench.gpu                    # SD 1.5 at 512 px, then SDXL at 1024 px, 25 steps
    .venv/bin/python -m bench.gpu --models sd15      # one family
    .venv/bin/python -m bench.gpu --models sd35-medium,flux1-schnell --runs 2   # at 1024 px (bench/device_families.sh)
    .venv/bin/python -m bench.gpu --cpu --model-dir alice/demo_model --size 64 --steps 2 --runs 1
    .venv/bin/python -m bench.gpu --cpu --tiny --models flux1-schnell --size 64 --steps 2
                                                     # the whole run on the CPU, tiny (the tests do this)

Every line draws the same prompt with the same scheduler, steps, guidance, seed and size, through
ALICE's `run_generation`; only the pipeline differs. The drawing settings are the family's defaults
(alice/engine/families.py: FLUX.1 schnell 4 steps, guidance 0; SD 3.5 28 steps, guidance 7 with
CFG; flow-euler), except the UNet families' scheduler, dpm++_2m_karras; `--steps` overrides.

Lines of the UNet families (sd15, sd2, sdxl):
- diffusers fp32 / fp16 / bf16: `AutoPipelineForText2Image.from_pretrained(dtype=...).to(device)`,
  diffusers' defaults (SDPA attention, its default on torch 2, in every line);
- ALICE bare: `load_pipeline` in ALICE's dtype for the card with every option off;
- + channels_last, + attention slicing, + VAE tiling, + model offload, + sequential offload,
  + compile: ALICE bare plus that one option, so each line shows that option's own contribution;
  the VAE tiling line's tiles are half the image's side (at the native size ALICE's own tile, the
  native side, would tile nothing);
- ALICE auto: what the server does on this card with no settings.
Lines of the transformer families (flux1-schnell, sd35-medium); the UNet-only options
(channels_last, attention slicing, compile) do not apply to them:
- diffusers bf16 / fp16: `DiffusionPipeline.from_pretrained(dtype=...).to(device)` (fp16 is the
  dtype ALICE computes in on cards before Ampere);
- ALICE bare: everything on the card in ALICE's dtype (its memory preset forced to that layout);
- + model offload, + group offload (ALICE_CPU_OFFLOAD=model / group);
- + GGUF Q8_0 transformer (FLUX.1): the transformer written as a Q8_0 GGUF file beside the other
  parts (bench/gguf_q8.py), loaded as ALICE loads an imported GGUF, everything on the card;
- ALICE auto: the server's preset for this card.
Each ALICE line prints the preset it loaded with.

UNet families' lines are interleaved: each round runs every line once (in turn, one pipeline on the
card at a time, the others parked in host memory), so a slow spell of the card hits all lines
alike. The transformer families run line by line (load, first call, the timed runs, then freed):
FLUX.1's pipeline is 34 GB in bf16, and seven of them do not park in host memory. Printed per line:
the median time per image with min and max over the runs, images/s, the ratio to the first
diffusers line (fp32, or bf16 for the transformer families; "vs ref"), for the + lines and ALICE
auto the ratio to ALICE bare, the memory of the run: the caching allocator's peak
(`torch.cuda.max_memory_reserved`, reset before each run, weights included: what a server must
budget) and the whole card's use by the driver after it (`mem_get_info`: the CUDA context and
cuDNN's workspaces too), the load time and the first call (with `+ compile`: the compilation), and
how close the line's image is to its reference line's (PSNR in dB, "same" when identical): a
dtype's diffusers line against the first, ALICE bare against diffusers in its dtype, each + line
and ALICE auto against ALICE bare. Matched lines must draw the same picture: an option that
changes it shows here. The run's first line names the card, driver, CUDA, cuDNN and the TF32
settings (bench/card.py). An out-of-memory error, or any other error (bf16 on a card that
cannot run it), ends only its line ("OOM", "error") and the run goes on. `--budget-s` (default 450 s, so the whole run
fits in 8 minutes) is shared by the families in turn, what one leaves passing to the next: runs stop
early when the next would pass the family's share, and a line not yet started is reported as skipped
(line by line: one that would not end in time if it took as long as the line before it).

Weights are random, built from the shipped architecture configs (alice/configs/sd15, sdxl,
flux1-schnell, sd35-medium; no download; bench/random_pipelines.py), saved once per family in fp16
(UNet families) or bf16, and every line loads them from that folder as the server loads a stored
model: the images mean nothing, the speed and memory are the real models'. Each model is built on
the card where it fits twice over, else on the CPU, in the dtype it is saved in; each line then
loads it in its own dtype, so a card too small for a line fails that line alone. The folder goes under
`--work-dir` (default: the system's temporary directory): FLUX.1 takes 34 GB there, and its GGUF
line 13 GB more.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoPipelineForText2Image, DiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from alice.engine.families import Family, detect_family, family_named
from alice.engine.heap import freeze_imported_objects
from alice.engine.generate import GenerationSpec, run_generation
from alice.engine.pipelines import MemoryOptions, choose_placement, load_pipeline, memory_preset
from bench.card import GiB, card_facts, card_used, describe, peak_reserved, reset_peak
from bench.gguf_q8 import gguf_pipeline_folder
from bench.random_pipelines import CONFIGS, random_pipeline_folder

SD_SCHEDULER = "dpm++_2m_karras"  # the UNet families' lines (the transformer families': their default)
# Every option off: the base the "+" lines add one option to.
BARE = {"attention_slicing": False, "vae_tiling": False, "cpu_offload": "none", "channels_last": False,
        "compile_unet": False}


class InjectedOutOfMemory(torch.cuda.OutOfMemoryError):
    """What `--inject-oom LINE` raises in that line's runs, to show the run survives one."""


@dataclass
class Line:
    label: str
    build: Callable[[], DiffusionPipeline]
    compare_to: str | None = None  # the line whose time this one's option changes
    image_of: str | None = None  # the line whose image this one's must match (PSNR)
    # Work before its first load, timed apart from loading (writing its GGUF file); says what it did.
    prepare: Callable[[], str] | None = None
    pipe: DiffusionPipeline | None = None
    parks: bool = True  # moved to host memory between its runs (not when CPU offload keeps it there)
    load_s: float = 0.0
    first_s: float = 0.0
    seconds: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)  # the allocator's peak reserved bytes, per run
    card_bytes: list[int] = field(default_factory=list)  # the card's use after each run (mem_get_info)
    image: np.ndarray | None = None  # of its first timed run
    failure: str | None = None


@dataclass(frozen=True)
class Drawing:
    """What every line of one family draws."""

    family: Family
    spec: GenerationSpec

    def describe(self) -> str:
        return (f"scheduler {self.spec.scheduler}, {self.spec.steps} steps, guidance {self.spec.guidance_scale:g}, "
                f"seed {self.spec.seed}")


def drawing_for(family: Family, size: int, steps: int | None) -> Drawing:
    """The family's defaults (the UNet families with SD_SCHEDULER), at `size`, `steps` if given."""
    scheduler = SD_SCHEDULER if family.is_unet else family.default_scheduler
    return Drawing(family, GenerationSpec(
        prompt="a lighthouse at dusk", seed=1234, width=size, height=size, steps=steps or family.default_steps,
        guidance_scale=family.default_guidance, scheduler=scheduler))


def save_dtype(family: Family) -> torch.dtype:
    """The random weights' dtype on disk: fp16 for the UNet families, bf16 (the released files') for the rest."""
    return torch.float16 if family.is_unet else torch.bfloat16


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def tile_below(size: int) -> int:
    """A VAE tile side that tiles an image of `size`: half of it, rounded down to a multiple of 32 px."""
    return max(32, size // 2 // 32 * 32)


def make_lines(folder: Path, family: Family, device: str, skip: set[str], scratch: Path, size: int) -> list[Line]:
    placement = choose_placement(device)
    unet = family.is_unet

    def diffusers_default(dtype: torch.dtype) -> Callable[[], DiffusionPipeline]:
        loader = AutoPipelineForText2Image if unet else DiffusionPipeline

        def build() -> DiffusionPipeline:
            pipe = loader.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
            pipe.set_progress_bar_config(disable=True)
            return pipe.to(device)
        return build

    def alice(label: str, source: Path = folder, auto: bool = False, tile: int | None = None,
              **changes: Any) -> Callable[[], DiffusionPipeline]:
        options = MemoryOptions() if auto else dataclasses.replace(MemoryOptions(), **{**BARE, **changes})

        def build() -> DiffusionPipeline:
            preset = memory_preset(source, placement, options)
            if not auto and not unet and preset.fp8_storage:
                # The bare lines keep every part in the compute dtype; where that does not fit, the line OOMs.
                preset = dataclasses.replace(preset, fp8_storage=())
            if tile:
                preset = dataclasses.replace(preset, vae_tiling_above=tile)
            print(f"  {label}: {preset.describe()}", flush=True)
            return load_pipeline(source, placement, options, preset=preset)
        return build

    dtype_name = str(placement.dtype).removeprefix("torch.")
    bare = f"ALICE bare ({dtype_name})"
    short = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[dtype_name]
    tile = tile_below(size)
    tiling = f"+ VAE tiling ({tile} px)"
    if unet:
        lines = [
            Line("diffusers fp32", diffusers_default(torch.float32)),
            Line("diffusers fp16", diffusers_default(torch.float16), image_of="diffusers fp32"),
            Line("diffusers bf16", diffusers_default(torch.bfloat16), image_of="diffusers fp32"),
            Line(bare, alice(bare), image_of=f"diffusers {short}"),
            Line("+ channels_last", alice("+ channels_last", channels_last=True), "bare"),
            Line("+ attention slicing", alice("+ attention slicing", attention_slicing=True), "bare"),
            Line(tiling, alice(tiling, vae_tiling=True, tile=tile), "bare"),
            Line("+ model offload", alice("+ model offload", cpu_offload="model"), "bare"),
            Line("+ sequential offload", alice("+ sequential offload", cpu_offload="sequential"), "bare"),
            Line("+ compile", alice("+ compile", compile_unet=True), "bare"),
        ]
    else:
        lines = [
            Line("diffusers bf16", diffusers_default(torch.bfloat16)),
            Line("diffusers fp16", diffusers_default(torch.float16), image_of="diffusers bf16"),
            # No diffusers fp32 line for these (FLUX.1 is 48 GB in fp32): on the CPU bare is set against bf16.
            Line(bare, alice(bare), image_of=f"diffusers {short}" if short != "fp32" else "diffusers bf16"),
            Line("+ model offload", alice("+ model offload", cpu_offload="model"), "bare"),
            Line("+ group offload", alice("+ group offload", cpu_offload="group"), "bare"),
        ]
        if family.name.startswith("flux1"):
            gguf_folder = scratch / f"{folder.name}-gguf"

            def write_gguf() -> str:
                gguf_pipeline_folder(folder, gguf_folder, device)
                size = sum(f.stat().st_size for f in (gguf_folder / "transformer").glob("*.gguf"))
                return f"transformer written as GGUF Q8_0 ({size / 1e9:.2f} GB)"

            label = "+ GGUF Q8_0 transformer"
            lines.append(Line(label, alice(label, source=gguf_folder), "bare", prepare=write_gguf))
    lines.append(Line("ALICE auto (the server)", alice("ALICE auto", auto=True), "bare"))
    for line in lines:
        if line.compare_to == "bare":
            line.image_of = bare
    return [line for line in lines if not any(word.lower() in line.label.lower() for word in skip)]


def denoiser(pipe: DiffusionPipeline) -> torch.nn.Module:
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def run_line(line: Line, draw: Callable[[DiffusionPipeline], np.ndarray], device: str, inject_oom: str | None,
             park: bool, inject_error: str | None = None) -> None:
    """One timed run of the line (preparing and loading it and its first call the first time), its
    peak memory recorded; an out-of-memory error, or any other, ends the line. With `park`, the
    pipeline goes back to host memory after the run (the interleaved rounds)."""
    on_gpu = device.startswith("cuda")
    try:
        reset_peak(device)
        if inject_oom and inject_oom.lower() in line.label.lower():
            raise InjectedOutOfMemory(f"injected out-of-memory error in {line.label}")
        if inject_error and inject_error.lower() in line.label.lower():
            raise RuntimeError(f"injected error in {line.label}")
        if line.pipe is None:
            if line.prepare is not None:
                started = time.perf_counter()
                done = line.prepare()
                print(f"  {line.label}: {done} in {time.perf_counter() - started:.0f} s", flush=True)
            started = time.perf_counter()
            line.pipe = line.build()
            line.load_s = time.perf_counter() - started
            started = time.perf_counter()
            draw(line.pipe)  # first call: allocations, cuDNN autotuning, compilation
            synchronize(device)
            line.first_s = time.perf_counter() - started
            # Under CPU offload (chosen, or by ALICE auto) the weights live in host memory already.
            line.parks = park and next(denoiser(line.pipe).parameters()).device.type == "cuda"
            reset_peak(device)
        elif line.parks and on_gpu:
            line.pipe.to(device)
        started = time.perf_counter()
        image = draw(line.pipe)
        synchronize(device)
        line.seconds.append(time.perf_counter() - started)
        if line.image is None:
            line.image = image
        if on_gpu:
            line.peaks.append(peak_reserved(device))
            line.card_bytes.append(card_used(device))
        if line.pipe is not None and line.parks and on_gpu:
            line.pipe.to("cpu")
    except torch.cuda.OutOfMemoryError as error:
        line.failure = "OOM"
        print(f"  {line.label}: out of memory ({str(error).splitlines()[0][:120]}); the run goes on", flush=True)
    except Exception as error:  # one broken line must not cost the other lines their device time
        line.failure = "error"
        print(f"  {line.label}: {type(error).__name__}: {str(error)[:300]}; the run goes on", flush=True)
        traceback.print_exc()
    finally:
        if line.failure:
            line.pipe = None
        free_memory()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def report(lines: list[Line], title: str, on_gpu: bool) -> None:
    print(title)
    medians = {line.label: statistics.median(line.seconds) for line in lines if line.seconds and not line.failure}
    reference_label = lines[0].label if lines else ""  # the first diffusers line: fp32, or bf16
    reference = medians.get(reference_label)
    bare = next((median for label, median in medians.items() if label.startswith("ALICE bare")), None)
    versus = f"vs {reference_label.split()[-1]}" if reference_label.startswith("diffusers") else "vs ref"
    images = {line.label: line.image for line in lines if line.image is not None}
    print(f"  {'line':26s} {'median s':>9s} {'min':>7s} {'max':>7s} {'img/s':>7s} {versus:>8s} {'vs bare':>8s}"
          f" {'reserved GiB':>12s} {'card GiB':>8s} {'load s':>7s} {'first call s':>12s} {'PSNR dB':>8s}")
    for line in lines:
        if line.failure or not line.seconds:
            print(f"  {line.label:26s} {line.failure or 'no run':>9s}", flush=True)
            continue
        median = medians[line.label]
        vs_reference = f"x{reference / median:.2f}" if reference else "-"
        vs_bare = f"x{bare / median:.2f}" if bare and line.compare_to == "bare" else ""
        peak = f"{max(line.peaks) / GiB:.2f}" if on_gpu and line.peaks else "-"
        card = f"{max(line.card_bytes) / GiB:.2f}" if on_gpu and line.card_bytes else "-"
        match = "-"
        if line.image_of and line.image is not None and line.image_of in images:
            match = f"{format_psnr(psnr(line.image, images[line.image_of])):>8s} vs {line.image_of}"
        print(f"  {line.label:26s} {median:9.3f} {min(line.seconds):7.3f} {max(line.seconds):7.3f}"
              f" {1 / median:7.3f} {vs_reference:>8s} {vs_bare:>8s} {peak:>12s} {card:>8s} {line.load_s:7.1f}"
              f" {line.first_s:12.1f} {match:>8s}", flush=True)


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two 8-bit images in dB; infinite when they are identical."""
    error = np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return math.inf if error == 0 else 10 * math.log10(255.0**2 / error)


def format_psnr(value: float) -> str:
    return "same" if math.isinf(value) else f"{value:.1f}"


def bench_family(folder: Path, title: str, drawing: Drawing, args: argparse.Namespace, device: str,
                 deadline: float, scratch: Path) -> None:
    lines = make_lines(folder, drawing.family, device, set(args.skip), scratch, drawing.spec.width)
    config_holder: dict[int, Any] = {}

    def draw(pipe: DiffusionPipeline) -> np.ndarray:
        # Each line's own scheduler config (the same file), one fresh scheduler per run.
        config = config_holder.setdefault(id(pipe), pipe.scheduler.config)
        return np.asarray(run_generation(pipe, config, drawing.spec, family=drawing.family).images[0])

    interleaved = drawing.family.is_unet and not args.line_by_line
    order = "interleaved rounds" if interleaved else "runs a line, line by line"
    print(f"{title}: {drawing.describe()}; {args.runs} {order}", flush=True)
    if interleaved:
        run_interleaved(lines, draw, args, device, deadline)
    else:
        run_line_by_line(lines, draw, args, device, deadline)
    free_memory()
    report(lines, title, device.startswith("cuda"))
    if not device.startswith("cuda"):
        print("  (on the CPU channels_last, offload and peak memory do not apply: those lines show noise)")


def run_interleaved(lines: list[Line], draw: Callable[[DiffusionPipeline], np.ndarray], args: argparse.Namespace,
                    device: str, deadline: float) -> None:
    round_started = time.perf_counter()
    for round_index in range(args.runs):
        for line in lines:
            if not line.failure and not line.seconds and time.perf_counter() > deadline:
                line.failure = "skipped: over --budget-s"  # a line not yet loaded would only run later
            if not line.failure:
                run_line(line, draw, device, args.inject_oom, park=True, inject_error=args.inject_error)
        round_seconds = time.perf_counter() - round_started
        round_started = time.perf_counter()
        if round_index + 1 < args.runs and time.perf_counter() + round_seconds > deadline:
            print(f"  (stopping after {round_index + 1} rounds: the next would pass --budget-s)", flush=True)
            break
    for line in lines:
        line.pipe = None


def run_line_by_line(lines: list[Line], draw: Callable[[DiffusionPipeline], np.ndarray], args: argparse.Namespace,
                     device: str, deadline: float) -> None:
    """Each line's load, first call and runs, then the next line. A line starts only when one as
    long as the last (FLUX.1: a minute or more, loading 34 GB included) would end within the budget."""
    last_line_s = 0.0
    for line in lines:
        started = time.perf_counter()
        if started + last_line_s > deadline:
            line.failure = "skipped: over --budget-s"
            continue
        for run_index in range(args.runs):
            run_line(line, draw, device, args.inject_oom, park=False, inject_error=args.inject_error)
            if line.failure:
                break
            if run_index + 1 < args.runs and time.perf_counter() + line.seconds[-1] > deadline:
                print(f"  ({line.label}: stopping after {run_index + 1} runs: the next would pass --budget-s)",
                      flush=True)
                break
        line.pipe = None
        free_memory()
        last_line_s = time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sd15,sdxl", help="architectures from alice/configs, comma-separated")
    parser.add_argument("--model-dir", type=Path, help="a diffusers folder to use instead (e.g. alice/demo_model)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (slow: use a small model and size)")
    parser.add_argument("--tiny", action="store_true", help="shrink the --models architectures to a few narrow "
                        "layers each (bench/random_pipelines.py): the whole run on the CPU in seconds")
    parser.add_argument("--size", type=int, help="image size (default: the family's native size)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the family's: SD 25, FLUX.1 schnell 4, "
                        "SD 3.5 28)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each line")
    parser.add_argument("--budget-s", type=float, default=450, help="start no run that would end after this")
    parser.add_argument("--line-by-line", action="store_true", help="the UNet families' lines too, not interleaved")
    parser.add_argument("--work-dir", type=Path, help="where the random-weight folders are written "
                        "(default: the system's temporary directory)")
    parser.add_argument("--skip", action="append", default=[], help="leave out lines whose label contains this")
    parser.add_argument("--inject-oom", help="raise an out-of-memory error in the line with this label (a test)")
    parser.add_argument("--inject-error", help="raise another error (a RuntimeError) in the line with this label")
    args = parser.parse_args(argv)
    device = "cpu" if args.cpu else "cuda"
    diffusers_logging.set_verbosity_error()  # no progress bars or per-load notices between the lines
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA GPU: pass --cpu for the CPU run")
    freeze_imported_objects()  # each line's free_memory() then costs milliseconds, not 0.35 s
    started = time.perf_counter()
    print(f"bench.gpu on {describe(card_facts(device))}; {args.runs} timed runs a line", flush=True)
    if args.model_dir:
        family = family_named(detect_family(args.model_dir))
        size = args.size or family.native_size
        with tempfile.TemporaryDirectory(dir=args.work_dir) as scratch:
            bench_family(args.model_dir, f"{args.model_dir.name} {size}x{size}", drawing_for(family, size, args.steps),
                         args, device, started + args.budget_s, Path(scratch))
    else:
        names = args.models.split(",")
        for index, architecture in enumerate(names):
            # This family's share of what is left of the budget.
            left = started + args.budget_s - time.perf_counter()
            deadline = time.perf_counter() + max(0.0, left) / (len(names) - index)
            try:
                bench_architecture(architecture, args, device, deadline)
            except Exception:  # the next family still runs
                print(f"{architecture}: failed; the run goes on", flush=True)
                traceback.print_exc()
            free_memory()
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)


def bench_architecture(architecture: str, args: argparse.Namespace, device: str, deadline: float) -> None:
    """One alice/configs architecture, with random weights in a scratch folder."""
    family = family_named(detect_family(CONFIGS / architecture))
    size = args.size or family.native_size
    with tempfile.TemporaryDirectory(dir=args.work_dir) as scratch:
        made = time.perf_counter()
        folder = random_pipeline_folder(architecture, Path(scratch) / architecture, device, save_dtype(family),
                                        tiny=args.tiny)
        print(f"{architecture}: random weights built and saved in {time.perf_counter() - made:.0f} s", flush=True)
        kind = "tiny " if args.tiny else ""
        bench_family(folder, f"{architecture} {kind}architecture (random weights) {size}x{size}",
                     drawing_for(family, size, args.steps), args, device, deadline, Path(scratch))


if __name__ == "__main__":
    main()
