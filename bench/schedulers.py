"""The default sampler's cost: DPM++ SDE Karras (two UNet calls a step) against DPM++ 2M Karras (one).

    .venv/bin/python -m bench.schedulers                  # demo model, SD 1.5 architecture at 128 px, quality
    .venv/bin/python -m bench.schedulers --no-fullsize    # demo model only (a minute on a CPU)
    .venv/bin/python -m bench.schedulers --no-quality     # time only
    .venv/bin/python -m bench.schedulers --no-demo --no-quality --fullsize-runs 2   # the SD 1.5 architecture only

Time: each setting draws the same prompt, seed, size and guidance, the settings alternated run by
run (so a slow spell of the machine hits all of them), median and spread of `--runs`; the UNet's
forward calls are counted. The SD 1.5 architecture has random weights: its images mean nothing,
its time per call is the real model's.
Quality: the demo model's held-out evaluation (alice.demo_training.evaluate, what
`alice models evaluate-demo --scheduler X --steps N` prints) at each setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from diffusers import DiffusionPipeline

from alice.engine.generate import GenerationSpec, run_generation
from alice.engine.pipelines import choose_placement, load_pipeline

# (scheduler, steps): the old default, the candidate at equal steps, and the candidate with 20%
# more steps (still fewer UNet calls than the old default).
SETTINGS = (("dpm++_sde_karras", 25), ("dpm++_2m_karras", 25), ("dpm++_2m_karras", 30))


def label(setting: tuple[str, int]) -> str:
    return f"{setting[0]} x{setting[1]}"


def count_unet_calls(pipe: DiffusionPipeline) -> list[int]:
    """A one-element counter the UNet's forward increments (classifier-free guidance batches the
    conditional and unconditional halves into one call)."""
    counter = [0]
    pipe.unet.register_forward_pre_hook(lambda module, args: counter.__setitem__(0, counter[0] + 1))
    return counter


def time_settings(folder: Path, size: int, runs: int) -> dict[str, tuple[float, float, float, int]]:
    """Per setting: (median s, min s, max s, UNet calls per image), settings interleaved."""
    pipe = load_pipeline(folder, choose_placement("cpu"))
    config = pipe.scheduler.config
    calls = count_unet_calls(pipe)
    specs = {label(s): GenerationSpec(prompt="a red circle on a blue background", seed=7, width=size, height=size,
                                      steps=s[1], scheduler=s[0]) for s in SETTINGS}
    for spec in specs.values():  # warm-up: first-call allocations (a short run is enough)
        run_generation(pipe, config, dataclasses.replace(spec, steps=2))
    seconds: dict[str, list[float]] = {name: [] for name in specs}
    unet_calls: dict[str, int] = {}
    for _ in range(runs):
        for name, spec in specs.items():
            calls[0] = 0
            started = time.perf_counter()
            run_generation(pipe, config, spec)
            seconds[name].append(time.perf_counter() - started)
            unet_calls[name] = calls[0]
    return {name: (statistics.median(values), min(values), max(values), unet_calls[name])
            for name, values in seconds.items()}


def print_times(title: str, results: dict[str, tuple[float, float, float, int]]) -> None:
    base_name = label(SETTINGS[0])
    base = results[base_name][0]
    print(title)
    for name, (median, low, high, calls) in results.items():
        print(f"  {name:22s} {median * 1000:9.1f} ms/image (min {low * 1000:.1f}, max {high * 1000:.1f})"
              f"  UNet calls {calls:3d}  x{median / base:.2f} of {base_name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per setting (interleaved)")
    parser.add_argument("--fullsize-size", type=int, default=128, help="image size for the SD 1.5 architecture")
    parser.add_argument("--fullsize-runs", type=int, default=3)
    parser.add_argument("--no-demo", action="store_true", help="skip the demo model's timing")
    parser.add_argument("--no-fullsize", action="store_true")
    parser.add_argument("--no-quality", action="store_true")
    args = parser.parse_args()
    from alice.engine.demo import DEMO_MODEL_DIR

    if not args.no_demo:
        print_times(f"demo model, 64 px, {args.runs} runs each, CPU",
                    time_settings(DEMO_MODEL_DIR, 64, args.runs))
    if not args.no_fullsize:
        from bench.fullsize import save_sd15_architecture

        with tempfile.TemporaryDirectory() as scratch:
            folder = save_sd15_architecture(Path(scratch) / "sd15")
            print_times(f"SD 1.5 architecture (random weights), {args.fullsize_size} px, "
                        f"{args.fullsize_runs} runs each, CPU",
                        time_settings(folder, args.fullsize_size, args.fullsize_runs))
    if not args.no_quality:
        from alice.demo_training.evaluate import CHECKS, evaluate

        print("demo model held-out evaluation (share of pictures right; seed 0)")
        print(f"  {'':22s} " + "  ".join(f"{name:>12s}" for name in CHECKS))
        for setting in SETTINGS:
            shares = evaluate(DEMO_MODEL_DIR, steps=setting[1], scheduler=setting[0], progress=False).shares()
            print(f"  {label(setting):22s} " + "  ".join(f"{shares[name]:12.1%}" for name in CHECKS))


if __name__ == "__main__":
    main()
