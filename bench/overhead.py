"""Serving overhead: end-to-end HTTP latency against the bare pipeline call, side by side.

    .venv/bin/python -m bench.overhead                  # demo model, 64 px
    .venv/bin/python -m bench.overhead --full-size      # SD 1.5 architecture, 256 px (slow on a CPU)

Both sides run the same model, scheduler, size, steps and seed, alternately, in one run; the
ratio is the median HTTP time over the median bare time (1.00 = no overhead).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from alice import model_store
from alice.engine.generate import GenerationSpec, run_generation
from alice.engine.pipelines import choose_placement, load_pipeline
from tests.support import alice_environment, running_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="SD 1.5 architecture at 256 px")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    size = 256 if args.full_size else 64
    steps = args.steps or (10 if args.full_size else 8)
    runs = args.runs or (3 if args.full_size else 15)

    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        env = {}
        if args.full_size:
            from bench.fullsize import save_sd15_architecture

            env["ALICE_DEFAULT_MODEL"] = "sd15-arch"
        with alice_environment(tmp, env):
            if args.full_size:
                model_store.import_pipeline_folder(save_sd15_architecture(tmp / "sd15"), "sd15-arch")
            model = model_store.get_model(env.get("ALICE_DEFAULT_MODEL", "alice-demo"))
            spec = GenerationSpec(prompt="a lighthouse at dusk", seed=1, width=size, height=size, steps=steps,
                                  scheduler="ddim")
            pipe = load_pipeline(model.path, choose_placement())
            config = pipe.scheduler.config
            body = {"prompt": spec.prompt, "seed": 1, "width": size, "height": size, "steps": steps, "scheduler": "ddim"}
            chat = {"messages": [{"role": "user", "content": spec.prompt}],
                    "metadata": {"seed": 1, "width": size, "height": size, "steps": steps, "scheduler": "ddim"}}
            with running_server(tmp / "server.log") as server, httpx.Client(timeout=600) as client:
                client.post(f"{server.url}/generate", json=body)  # warm-up both sides
                run_generation(pipe, config, spec)
                bare, native, openai = [], [], []
                for _ in range(runs):
                    started = time.perf_counter()
                    run_generation(pipe, config, spec)
                    bare.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    assert client.post(f"{server.url}/generate", json=body).status_code == 200
                    native.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    response = client.post(f"{server.url}/v1/chat/completions", json=chat)
                    url = response.json()["choices"][0]["message"]["image_urls"][0]
                    client.get(url)  # SAM downloads the image too
                    openai.append(time.perf_counter() - started)
    base = statistics.median(bare)
    print(f"model={model.name} size={size} steps={steps} runs={runs} device={choose_placement().device}")
    print(f"bare pipeline     median {base * 1000:8.1f} ms")
    print(f"/generate         median {statistics.median(native) * 1000:8.1f} ms  ratio {statistics.median(native) / base:.3f}")
    print(f"chat + image GET  median {statistics.median(openai) * 1000:8.1f} ms  ratio {statistics.median(openai) / base:.3f}")


if __name__ == "__main__":
    main()
