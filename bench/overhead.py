"""Serving overhead: end-to-end HTTP latency against the bare pipeline call, side by side.

    .venv/bin/python -m bench.overhead                  # demo model, 64 px, 4 steps
    .venv/bin/python -m bench.overhead --baseline f56388a^ --runs 30   # A/B with an older commit
    .venv/bin/python -m bench.overhead --full-size      # SD 1.5 architecture, 256 px (slow on a CPU)
    .venv/bin/python -m bench.overhead --tiny-flux      # a tiny random-weight FLUX.1 (harness/tiny_pipelines.py)

Both sides run the same model, scheduler, size, steps and seed, one after the other, in one
run (bare, `/generate`, chat completion + image download, repeated; with `--baseline` the same
requests to a second server running that commit's service.py and alice/, alternated request by
request, so both see the same load). Printed per server and route:

- ratio: median HTTP latency over median bare time (1.00 = no overhead);
- paired: the median of each request's latency over the bare run just before it, which
  cancels slow drifts of the machine;
- outside the job: latency minus the job's own time on the server (`timings.generation_s`,
  from start of the generation to the last image saved), median per request: what HTTP,
  validation, the queue hand-offs and the response cost, free of the run-to-run noise of
  the generation itself. On a CPU shared with other work this is the steadier figure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import httpx

from alice.models import checkpoints
from alice.models import store as model_store
from alice.engine.generate import GenerationSpec, run_generation
from alice.engine.pipelines import choose_placement, load_pipeline
from bench.startup import tree_of
from harness.environment import alice_environment
from harness.server import ServerProcess, running_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="SD 1.5 architecture at 256 px")
    parser.add_argument("--tiny-flux", action="store_true", help="a tiny random-weight FLUX.1 dev, 64 px")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--baseline", metavar="REV", help="a second server on this commit's service.py and alice/")
    args = parser.parse_args()
    size = 256 if args.full_size else 64
    steps = args.steps or (10 if args.full_size else 4)
    runs = args.runs or (5 if args.full_size else 15)

    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        tmp = Path(scratch)
        env = {}
        if args.full_size:
            from bench.fullsize import save_sd15_architecture

            env["ALICE_DEFAULT_MODEL"] = "sd15-arch"
        if args.tiny_flux:
            env["ALICE_DEFAULT_MODEL"] = "tiny-flux"
        stack.enter_context(alice_environment(tmp, env))
        if args.full_size:
            checkpoints.import_pipeline_folder(save_sd15_architecture(tmp / "sd15"), "sd15-arch")
        if args.tiny_flux:
            from harness.tiny_pipelines import build_tiny_flux

            checkpoints.import_pipeline_folder(build_tiny_flux(tmp / "tiny-flux"), "tiny-flux")
        model = model_store.get_model(env.get("ALICE_DEFAULT_MODEL", "alice-demo"))
        scheduler = "flow-euler" if args.tiny_flux else "ddim"
        # FLUX.1 dev's embedded guidance; the SD runs keep the spec's default.
        drawing = {"steps": steps, "scheduler": scheduler, **({"guidance_scale": 3.5} if args.tiny_flux else {})}
        spec = GenerationSpec(prompt="a lighthouse at dusk", seed=1, width=size, height=size, **drawing)
        pipe = load_pipeline(model.path, choose_placement())
        config = pipe.scheduler.config
        body = {"prompt": spec.prompt, "seed": 1, "width": size, "height": size, **drawing}
        chat = {"messages": [{"role": "user", "content": spec.prompt}],
                "metadata": {"seed": 1, "width": size, "height": size, **drawing}}

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

        routes: dict[str, Callable[[httpx.Client, str], float]] = {"/generate": native, "chat + image GET": openai}
        servers = {"this tree": stack.enter_context(running_server(tmp / "server.log"))}
        if args.baseline:
            tree = stack.enter_context(tree_of(args.baseline))
            # A BentoML home of its own (BentoML empties its metrics folder at each start), the same models.
            home = tmp / "baseline-bentoml"
            home.mkdir()
            (home / "models").symlink_to(Path(os.environ["BENTOML_HOME"]) / "models")
            baseline_env = {**os.environ, "PYTHONPATH": str(tree), "ALICE_DATA_DIR": str(tmp / "baseline-data"),
                            "BENTOML_HOME": str(home)}
            server = ServerProcess(tmp / "baseline.log", cwd=tree, base_env=baseline_env)
            stack.callback(server.close)
            servers = {f"baseline {args.baseline}": server.wait_ready(), **servers}
        client = stack.enter_context(httpx.Client(timeout=600))  # kept alive, as SAM's
        lines = [(label, name) for label in servers for name in routes]
        for label, name in lines:  # warm-up every side
            routes[name](client, servers[label].url)
        run_generation(pipe, config, spec)
        bare: list[float] = []
        latency: dict[tuple[str, str], list[float]] = {line: [] for line in lines}
        job: dict[tuple[str, str], list[float]] = {line: [] for line in lines}
        for run in range(runs):
            started = time.perf_counter()
            run_generation(pipe, config, spec)
            bare.append(time.perf_counter() - started)
            # Alternate which server goes first, so neither always follows the bare run.
            for label, name in (lines if run % 2 == 0 else lines[::-1]):
                started = time.perf_counter()
                job[label, name].append(routes[name](client, servers[label].url))
                latency[label, name].append(time.perf_counter() - started)
    base = statistics.median(bare)
    print(f"model={model.name} size={size} steps={steps} runs={runs} device={choose_placement().device} "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"bare pipeline     median {base * 1000:9.1f} ms  (min {min(bare) * 1000:.1f}, max {max(bare) * 1000:.1f})")
    for label, name in lines:
        seconds = latency[label, name]
        paired = statistics.median(http / before for http, before in zip(seconds, bare))
        outside = [http - inside for http, inside in zip(seconds, job[label, name])]
        print(f"{label}: {name:17s} median {statistics.median(seconds) * 1000:8.1f} ms  "
              f"ratio {statistics.median(seconds) / base:.3f}  paired {paired:.3f}  "
              f"outside the job median {statistics.median(outside) * 1000:.1f} ms "
              f"(min {min(outside) * 1000:.1f}, max {max(outside) * 1000:.1f})")


if __name__ == "__main__":
    main()
