"""Live previews' cost: a generation with previews on against the same without, side by side.

    .venv/bin/python -m bench.previews                       # demo model, 64 px, 8 steps, 3 previews
    .venv/bin/python -m bench.previews --sd15 --size 256     # SD 1.5 architecture, random weights
    .venv/bin/python -m bench.previews --runs 11 --previews 10

Both sides draw the same model, prompt, seed, size and steps in one process, alternated run by
run (previews off, on, off, on...) so both see the same load. Printed:

- ratio: median time with previews over median without (target <= 1.02);
- paired: the median of each run with previews over the run without just before it;
- fastest: the fastest run with previews over the fastest without (the runs least disturbed
  by other work on a shared machine);
- preview work: the time spent making previews (the callback's decode, measured around it) as
  a share of the runs with previews: the steadiest figure on a shared CPU, where two runs of
  the same drawing differ by more than the previews cost.

Previews off costs nothing by construction: no decoder is built and the step callback does one
dict test per step (alice/engine/generate.py).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from alice.engine import generate
from alice.engine.generate import BatchEntry, run_batch
from alice.engine.pipelines import choose_placement, load_pipeline
from alice.engine.spec import GenerationSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd15", action="store_true", help="SD 1.5 architecture, random weights")
    parser.add_argument("--size", type=int, default=None, help="image side (default 64 demo, 256 SD 1.5)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--runs", type=int, default=None, help="runs per side")
    parser.add_argument("--previews", type=int, default=3)
    args = parser.parse_args()
    size = args.size or (256 if args.sd15 else 64)
    steps = args.steps or (4 if args.sd15 else 8)
    runs = args.runs or (3 if args.sd15 else 15)

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "model"
        if args.sd15:
            import torch

            from bench.random_pipelines import random_pipeline_folder

            random_pipeline_folder("sd15", folder, "cpu", torch.float32)
        else:
            from alice.engine.demo import save_demo_pipeline

            save_demo_pipeline(folder)
        pipe = load_pipeline(folder, choose_placement("cpu"))
        config = pipe.scheduler.config
        spec = GenerationSpec(prompt="a red circle on a blue background", seed=7, width=size, height=size,
                              steps=steps, scheduler="ddim")

        spent = [0.0]  # seconds inside the preview work
        real_step = generate._Previews.step

        def timed_step(self, *a, **k):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            try:
                return real_step(self, *a, **k)
            finally:
                spent[0] += time.perf_counter() - started

        generate._Previews.step = timed_step  # type: ignore[method-assign]

        def draw(previews: int) -> float:
            made: list = []
            started = time.perf_counter()
            run_batch(pipe, config, [BatchEntry(spec, previews=previews, on_preview=made.append)])
            seconds = time.perf_counter() - started
            assert len(made) == min(previews, steps), made
            return seconds

        draw(args.previews)  # warm-up: the first run pays for allocations (and the demo VAE's one-off fit)
        draw(0)
        spent[0] = 0.0
        off, on = [], []
        for _ in range(runs):
            off.append(draw(0))
            on.append(draw(args.previews))
    name = "SD 1.5 architecture (random weights)" if args.sd15 else "demo"
    print(f"{name}, {size} px, {steps} steps, DDIM, {args.previews} previews, {runs} runs a side")
    print(f"  without: median {statistics.median(off) * 1000:.1f} ms (min {min(off) * 1000:.1f})")
    print(f"  with:    median {statistics.median(on) * 1000:.1f} ms (min {min(on) * 1000:.1f})")
    print(f"  ratio {statistics.median(on) / statistics.median(off):.4f}; "
          f"paired {statistics.median(b / a for a, b in zip(off, on)):.4f}; fastest {min(on) / min(off):.4f}; "
          f"preview work {spent[0] * 1000 / runs:.2f} ms a run = {spent[0] / sum(on):.4%} of the runs with previews")


if __name__ == "__main__":
    main()
