"""ALICE's pipeline configuration against plain diffusers, matched side by side, on one GPU.

    .venv/bin/python -m bench.gpu                    # SD 1.5 at 512 px, then SDXL at 1024 px, 25 steps
    .venv/bin/python -m bench.gpu --models sd15      # one family
    .venv/bin/python -m bench.gpu --cpu --model-dir alice/demo_model --size 64 --steps 2 --runs 1
                                                     # the whole run on the CPU, tiny (the tests do this)

Every line draws the same prompt with the same scheduler, steps, seed, size and guidance, through
ALICE's `run_generation`; only the pipeline differs:

- diffusers fp32 / fp16 / bf16: `AutoPipelineForText2Image.from_pretrained(dtype=...).to(device)`,
  diffusers' defaults (SDPA attention, its default on torch 2, in every line);
- ALICE bare: `load_pipeline` in ALICE's dtype for the card with every option off;
- + channels_last, + attention slicing, + VAE tiling, + model offload, + sequential offload,
  + compile: ALICE bare plus that one option, so each line shows that option's own contribution;
- ALICE auto: what the server does on this card with no settings.

Lines are interleaved: each round runs every line once (in turn, one pipeline on the card at a
time, the others parked in host memory), so a slow spell of the card hits all lines alike. Printed
per line: the median time per image with min and max over the rounds, images/s, the ratio to
diffusers fp32 (and for the + lines to ALICE bare), peak memory of the run (weights included,
`torch.cuda.max_memory_allocated` reset before each run), and apart from those the load time and
the first call (with `+ compile`: the compilation). An out-of-memory error ends only its line
("OOM") and the run goes on. Rounds stop early when `--budget-s` would be passed (default 450 s,
so the whole run fits in 8 minutes), and a line not yet started once the budget is spent is
reported as skipped.

Weights are random, built from the shipped architecture configs (alice/configs/sd15, sdxl; no
download): the images mean nothing, the speed and memory are the real models'.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoPipelineForText2Image, DiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from alice.engine.generate import GenerationSpec, run_generation
from alice.engine.pipelines import MemoryOptions, choose_placement, load_pipeline

CONFIGS = Path(__file__).resolve().parents[1] / "alice" / "configs"
NATIVE_SIZE = {"sd15": 512, "sdxl": 1024}
SCHEDULER = "dpm++_2m_karras"
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
    pipe: DiffusionPipeline | None = None
    parks: bool = True  # moved to host memory between its runs (not when CPU offload keeps it there)
    load_s: float = 0.0
    first_s: float = 0.0
    seconds: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    failure: str | None = None


def random_pipeline_folder(family: str, folder: Path, device: str) -> Path:
    """A diffusers folder with random weights in the architecture of alice/configs/<family>,
    saved in fp16 (every line loads it in its own dtype)."""
    source = CONFIGS / family
    index = json.loads((source / "model_index.json").read_text(encoding="utf-8"))
    components: dict[str, Any] = {}
    torch.manual_seed(0)
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list):
            continue
        library, class_name = spec
        if class_name is None:
            components[name] = None
            continue
        cls = getattr(importlib.import_module(library), class_name)
        part = source / name
        if name.startswith("tokenizer") or name == "scheduler":
            components[name] = cls.from_pretrained(str(part))
        elif library == "diffusers":
            with torch.device(device):  # random init is much faster on the card
                components[name] = cls.from_config(cls.load_config(str(part)))
        else:
            from transformers import AutoConfig

            with torch.device(device):
                components[name] = cls(AutoConfig.from_pretrained(str(part)))
    pipeline_class = getattr(importlib.import_module("diffusers"), index["_class_name"])
    extras = {key: value for key, value in index.items() if not key.startswith("_") and not isinstance(value, list)}
    pipe = pipeline_class(**components, **extras)
    pipe.to(torch.float16).save_pretrained(str(folder), safe_serialization=True)
    del pipe, components
    free_memory()
    return folder


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def make_lines(folder: Path, device: str, skip: set[str]) -> list[Line]:
    placement = choose_placement(device)

    def diffusers_default(dtype: torch.dtype) -> Callable[[], DiffusionPipeline]:
        def build() -> DiffusionPipeline:
            pipe = AutoPipelineForText2Image.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
            pipe.set_progress_bar_config(disable=True)
            return pipe.to(device)
        return build

    def alice(**changes: Any) -> Callable[[], DiffusionPipeline]:
        options = MemoryOptions() if changes.get("auto") else dataclasses.replace(
            MemoryOptions(), **{**BARE, **changes})
        return lambda: load_pipeline(folder, placement, options)

    dtype_name = str(placement.dtype).removeprefix("torch.")
    lines = [
        Line("diffusers fp32", diffusers_default(torch.float32)),
        Line("diffusers fp16", diffusers_default(torch.float16)),
        Line("diffusers bf16", diffusers_default(torch.bfloat16)),
        Line(f"ALICE bare ({dtype_name})", alice()),
        Line("+ channels_last", alice(channels_last=True), "bare"),
        Line("+ attention slicing", alice(attention_slicing=True), "bare"),
        Line("+ VAE tiling", alice(vae_tiling=True), "bare"),
        Line("+ model offload", alice(cpu_offload="model"), "bare"),
        Line("+ sequential offload", alice(cpu_offload="sequential"), "bare"),
        Line("+ compile", alice(compile_unet=True), "bare"),
        Line("ALICE auto (the server)", alice(auto=True), "bare"),
    ]
    return [line for line in lines if not any(word.lower() in line.label.lower() for word in skip)]


def run_line(line: Line, draw: Callable[[DiffusionPipeline], None], device: str, inject_oom: str | None) -> None:
    """One timed run of the line (loading it and its first call the first time), its peak memory
    recorded; an out-of-memory error ends the line."""
    on_gpu = device.startswith("cuda")
    try:
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        if inject_oom and inject_oom.lower() in line.label.lower():
            raise InjectedOutOfMemory(f"injected out-of-memory error in {line.label}")
        if line.pipe is None:
            started = time.perf_counter()
            line.pipe = line.build()
            line.load_s = time.perf_counter() - started
            started = time.perf_counter()
            draw(line.pipe)  # first call: allocations, cuDNN autotuning, compilation
            synchronize(device)
            line.first_s = time.perf_counter() - started
            # Under CPU offload (chosen, or by ALICE auto) the weights live in host memory already.
            line.parks = next(line.pipe.unet.parameters()).device.type == "cuda"
            if on_gpu:
                torch.cuda.reset_peak_memory_stats(device)
        elif line.parks and on_gpu:
            line.pipe.to(device)
        started = time.perf_counter()
        draw(line.pipe)
        synchronize(device)
        line.seconds.append(time.perf_counter() - started)
        if on_gpu:
            line.peaks.append(torch.cuda.max_memory_allocated(device))
    except torch.cuda.OutOfMemoryError as error:
        line.failure = "OOM"
        line.pipe = None
        print(f"  {line.label}: out of memory ({str(error).splitlines()[0][:120]}); the run goes on", flush=True)
    finally:
        if line.pipe is not None and line.parks and on_gpu:
            line.pipe.to("cpu")
        if line.failure:
            line.pipe = None
        free_memory()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def report(lines: list[Line], title: str, on_gpu: bool) -> None:
    print(title)
    medians = {line.label: statistics.median(line.seconds) for line in lines if line.seconds and not line.failure}
    fp32 = medians.get("diffusers fp32")
    bare = next((median for label, median in medians.items() if label.startswith("ALICE bare")), None)
    print(f"  {'line':26s} {'median s':>9s} {'min':>7s} {'max':>7s} {'img/s':>7s} {'vs fp32':>8s} {'vs bare':>8s}"
          f" {'peak GiB':>9s} {'load s':>7s} {'first call s':>12s}")
    for line in lines:
        if line.failure or not line.seconds:
            print(f"  {line.label:26s} {line.failure or 'no run':>9s}", flush=True)
            continue
        median = medians[line.label]
        vs_fp32 = f"x{fp32 / median:.2f}" if fp32 else "-"
        vs_bare = f"x{bare / median:.2f}" if bare and line.compare_to == "bare" else ""
        peak = f"{max(line.peaks) / 2**30:.2f}" if on_gpu and line.peaks else "-"
        print(f"  {line.label:26s} {median:9.3f} {min(line.seconds):7.3f} {max(line.seconds):7.3f}"
              f" {1 / median:7.3f} {vs_fp32:>8s} {vs_bare:>8s} {peak:>9s} {line.load_s:7.1f} {line.first_s:12.1f}",
              flush=True)


def bench_family(folder: Path, title: str, args: argparse.Namespace, device: str, deadline: float) -> None:
    lines = make_lines(folder, device, set(args.skip))
    spec = GenerationSpec(prompt="a lighthouse at dusk", seed=1234, width=args.size_for,
                          height=args.size_for, steps=args.steps, scheduler=SCHEDULER)
    config_holder: dict[int, Any] = {}

    def draw(pipe: DiffusionPipeline) -> None:
        # Each line's own scheduler config (the same file), one fresh scheduler per run.
        config = config_holder.setdefault(id(pipe), pipe.scheduler.config)
        run_generation(pipe, config, spec)

    round_started = time.perf_counter()
    for round_index in range(args.runs):
        for line in lines:
            if not line.failure and not line.seconds and time.perf_counter() > deadline:
                line.failure = "skipped: over --budget-s"  # a line not yet loaded would only run later
            if not line.failure:
                run_line(line, draw, device, args.inject_oom)
        round_seconds = time.perf_counter() - round_started
        round_started = time.perf_counter()
        if round_index + 1 < args.runs and time.perf_counter() + round_seconds > deadline:
            print(f"  (stopping after {round_index + 1} rounds: the next would pass --budget-s)", flush=True)
            break
    for line in lines:
        line.pipe = None
    free_memory()
    report(lines, title, device.startswith("cuda"))
    if not device.startswith("cuda"):
        print("  (on the CPU channels_last, offload and peak memory do not apply: those lines show noise)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sd15,sdxl", help="families from alice/configs, comma-separated")
    parser.add_argument("--model-dir", type=Path, help="a diffusers folder to use instead (e.g. alice/demo_model)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (slow: use a small model and size)")
    parser.add_argument("--size", type=int, help="image size (default: the family's native size)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--runs", type=int, default=3, help="timed rounds (each runs every line once)")
    parser.add_argument("--budget-s", type=float, default=450, help="start no round that would end after this")
    parser.add_argument("--skip", action="append", default=[], help="leave out lines whose label contains this")
    parser.add_argument("--inject-oom", help="raise an out-of-memory error in the line with this label (a test)")
    args = parser.parse_args(argv)
    device = "cpu" if args.cpu else "cuda"
    diffusers_logging.set_verbosity_error()  # no progress bars or per-load notices between the lines
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA GPU: pass --cpu for the CPU run")
    started = time.perf_counter()
    deadline = started + args.budget_s
    name = torch.cuda.get_device_name(device) if device == "cuda" else "CPU"
    print(f"bench.gpu on {name}, torch {torch.__version__}; scheduler {SCHEDULER}, {args.steps} steps, seed 1234, "
          f"{args.runs} interleaved rounds", flush=True)
    if args.model_dir:
        args.size_for = args.size or 512
        bench_family(args.model_dir, f"{args.model_dir.name} {args.size_for}x{args.size_for}", args, device, deadline)
    else:
        for family in args.models.split(","):
            args.size_for = args.size or NATIVE_SIZE[family]
            with tempfile.TemporaryDirectory() as scratch:
                made = time.perf_counter()
                folder = random_pipeline_folder(family, Path(scratch) / family, device)
                print(f"{family}: random weights built and saved in {time.perf_counter() - made:.0f} s", flush=True)
                bench_family(folder, f"{family} architecture (random weights) {args.size_for}x{args.size_for}",
                             args, device, deadline)
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
