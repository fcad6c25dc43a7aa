"""LoRAs on a compiled UNet: how often torch.compile recompiles, and whether plain stays plain.

    .venv/bin/python -m bench.lora_recompiles            # ALICE's way: LoRAs fused, weights put back
    .venv/bin/python -m bench.lora_recompiles --layers   # peft's adapter layers left in for the run

The demo model's UNet is compiled in place as the server does (ALICE_COMPILE_UNET=true), then
drawn plain, with LoRA a, plain, with b at 0.5, with a and b, with a at 0.7, plain again. Printed
per draw: seconds and dynamo's count of compiled graphs (each recompile adds one), then whether
the plain images after LoRAs equal the first bit for bit.

Measured on the project's 2-core CPU VM (inductor's C++ backend; seconds include compiles, the
first with a warm inductor cache): fused, 1 graph for the whole sequence (0 recompiles); adapter
layers, 5 graphs (a recompile at every LoRA change: names, scale, mix). Plain images bit for bit
after LoRAs both ways.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from alice.models import checkpoints
from alice.engine.device import MemoryOptions, MemoryPreset
from alice.engine.generate import GenerationSpec, run_generation
from alice.engine.loras import loras_applied
from alice.engine.pipelines import choose_placement, load_pipeline
from harness.environment import alice_environment
from harness.lora import write_demo_lora


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", action="store_true", help="leave peft's adapter layers in (no fusing)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alice-bench-") as scratch, alice_environment(Path(scratch), {}):
        tmp = Path(scratch)
        a, b = write_demo_lora(tmp / "a", seed=0), write_demo_lora(tmp / "b", seed=1)
        pipe = load_pipeline(
            checkpoints.ensure_demo_model().path,
            choose_placement("cpu"),
            MemoryOptions(compile_unet=True),
            MemoryPreset("sd15", "none", None, False, False),
        )
        spec = GenerationSpec(prompt="a boat", seed=8, width=64, height=64, steps=4, scheduler="ddim")

        def draw(loras: list[tuple[str, Path, float]]) -> bytes:
            started = time.perf_counter()
            with loras_applied(pipe, loras, fuse=not args.layers), torch.no_grad():
                image = run_generation(pipe, pipe.scheduler.config, spec).images[0].tobytes()
            label = " + ".join(f"{name} {scale:g}" for name, _, scale in loras) or "plain"
            print(f"{label:>14}: {time.perf_counter() - started:6.1f} s, graphs {counters['stats']['unique_graphs']}")
            return image

        plain = draw([])
        sequence = [[("a", a, 1.0)], [], [("b", b, 0.5)], [("a", a, 1.0), ("b", b, 0.3)], [("a", a, 0.7)], []]
        images = [draw(loras) for loras in sequence]
        print("plain after LoRAs, bit for bit:", images[1] == plain and images[-1] == plain)
        print("recompiles after the first compile:", counters["stats"]["unique_graphs"] - 1)


if __name__ == "__main__":
    main()
