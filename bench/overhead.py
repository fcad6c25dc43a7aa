"""Serving overhead: end-to-end HTTP latency against the bare pipeline call, side by side.

    .venv/bin/python -m bench.overhead                  # demo model, 64 px
    .venv/bin/python -m bench.overhead --full-size      # SD 1.5 architecture, 256 px (slow on a CPU)

Both sides run the same model, scheduler, size, steps and seed, one after the other, in one
run (bare, `/generate`, chat completion + image download, repeated). Printed per route:

- ratio: median HTTP latency over median bare time (1.00 = no overhead);
- paired: the median of each request's latency over the bare run just before it, which
  cancels slow drifts of the machine;
- outside the job: latency minus the job's own time on the server (`timings.generation_s`,
  from start of the generation to the last image saved): what HTTP, validation, the queue
  and the response cost, free of the run-to-run noise of the generation itself.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from alice.models import checkpoints
from alice.models import store as model_store
from alice.engine.generate import GenerationSpec, run_generation
from alice.engine.pipelines import choose_placement, load_pipeline
from harness.environment import alice_environment
from harness.server import running_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="SD 1.5 architecture at 256 px")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    size = 256 if args.full_size else 64
    steps = args.steps or (10 if args.full_size else 8)
    runs = args.runs or (5 if args.full_size else 15)

    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        env = {}
        if args.full_size:
            from bench.fullsize import save_sd15_architecture

            env["ALICE_DEFAULT_MODEL"] = "sd15-arch"
        with alice_environment(tmp, env):
            if args.full_size:
                checkpoints.import_pipeline_folder(save_sd15_architecture(tmp / "sd15"), "sd15-arch")
            model = model_store.get_model(env.get("ALICE_DEFAULT_MODEL", "alice-demo"))
            spec = GenerationSpec(prompt="a lighthouse at dusk", seed=1, width=size, height=size, steps=steps,
                                  scheduler="ddim")
            pipe = load_pipeline(model.path, choose_placement())
            config = pipe.scheduler.config
            body = {"prompt": spec.prompt, "seed": 1, "width": size, "height": size, "steps": steps, "scheduler": "ddim"}
            chat = {"messages": [{"role": "user", "content": spec.prompt}],
                    "metadata": {"seed": 1, "width": size, "height": size, "steps": steps, "scheduler": "ddim"}}

            def native(client: httpx.Client, url: str) -> float:
                response = client.post(f"{url}/generate", json=body)
                response.raise_for_status()
                return response.json()["timings"]["generation_s"]

            def openai(client: httpx.Client, url: str) -> float:
                response = client.post(f"{url}/v1/chat/completions", json=chat)
                response.raise_for_status()
                message = response.json()["choices"][0]["message"]
                client.get(message["image_urls"][0]).raise_for_status()  # SAM downloads the image too
                return message["metadata"]["timings"]["generation_s"]

            routes = {"/generate": native, "chat + image GET": openai}
            with running_server(tmp / "server.log") as server, httpx.Client(timeout=600) as client:
                native(client, server.url)  # warm-up both sides
                run_generation(pipe, config, spec)
                bare: list[float] = []
                latency: dict[str, list[float]] = {name: [] for name in routes}
                job: dict[str, list[float]] = {name: [] for name in routes}
                for _ in range(runs):
                    started = time.perf_counter()
                    run_generation(pipe, config, spec)
                    bare.append(time.perf_counter() - started)
                    for name, call in routes.items():
                        started = time.perf_counter()
                        job[name].append(call(client, server.url))
                        latency[name].append(time.perf_counter() - started)
    base = statistics.median(bare)
    print(f"model={model.name} size={size} steps={steps} runs={runs} device={choose_placement().device}")
    print(f"bare pipeline     median {base * 1000:9.1f} ms  (min {min(bare) * 1000:.1f}, max {max(bare) * 1000:.1f})")
    for name in routes:
        seconds = latency[name]
        paired = statistics.median(http / before for http, before in zip(seconds, bare))
        outside = statistics.median(http - inside for http, inside in zip(seconds, job[name]))
        print(f"{name:17s} median {statistics.median(seconds) * 1000:9.1f} ms  ratio {statistics.median(seconds) / base:.3f}"
              f"  paired {paired:.3f}  outside the job {outside * 1000:.1f} ms ({outside / base:.2%} of bare)")


if __name__ == "__main__":
    main()
