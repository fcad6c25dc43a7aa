"""GPU speed: ALICE's pipeline configuration against plain diffusers (fp32 and fp16), images per second.

    .venv/bin/python -m bench.gpu              # SD 1.5 architecture, 512x512, 25 steps
    .venv/bin/python -m bench.gpu --sdxl       # SDXL architecture, 1024x1024, 25 steps
    .venv/bin/python -m bench.gpu --compile    # ALICE with torch.compile on the UNet too

Weights are random (the architectures are built from their configs): the speed is the real model's.
Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoPipelineForText2Image

from alice.engine.generate import GenerationSpec, run_generation
from alice.engine.pipelines import MemoryOptions, choose_placement, load_pipeline


def images_per_second(draw, runs: int) -> float:
    draw()  # warm-up (and compilation)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(runs):
        draw()
    torch.cuda.synchronize()
    return runs / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdxl", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    from bench.fullsize import save_sd15_architecture, save_sdxl_architecture

    size = 1024 if args.sdxl else 512
    with tempfile.TemporaryDirectory() as scratch:
        folder = (save_sdxl_architecture if args.sdxl else save_sd15_architecture)(Path(scratch) / "model")
        spec = GenerationSpec(prompt="a lighthouse at dusk", seed=1, width=size, height=size, steps=args.steps,
                              scheduler="euler")
        results = {}
        for label, dtype in (("diffusers fp32", torch.float32), ("diffusers fp16", torch.float16)):
            pipe = AutoPipelineForText2Image.from_pretrained(str(folder), dtype=dtype).to("cuda")
            pipe.set_progress_bar_config(disable=True)
            results[label] = images_per_second(
                lambda: pipe(spec.prompt, width=size, height=size, num_inference_steps=args.steps), args.runs)
            del pipe
            torch.cuda.empty_cache()
        placement = choose_placement("cuda")
        pipe = load_pipeline(folder, placement, MemoryOptions(compile_unet=args.compile))
        config = pipe.scheduler.config
        results[f"ALICE ({str(placement.dtype).removeprefix('torch.')}"
                f"{', compiled' if args.compile else ''})"] = images_per_second(
            lambda: run_generation(pipe, config, spec), args.runs)
    print(f"{'SDXL' if args.sdxl else 'SD 1.5'} architecture {size}x{size}, {args.steps} steps, "
          f"{torch.cuda.get_device_name()}")
    base = results["diffusers fp32"]
    for label, rate in results.items():
        print(f"{label:28s} {rate:6.3f} images/s  x{rate / base:.2f} vs fp32")


if __name__ == "__main__":
    main()
