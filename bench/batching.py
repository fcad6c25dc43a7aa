"""Batching across clients: images per second with batching against ALICE_MAX_BATCH=1, and
how close every batched image is to its unbatched twin.

    .venv/bin/python -m bench.batching                  # demo model, 64 px, 25 steps
    .venv/bin/python -m bench.batching --rounds 7 --psnr-steps 10
    .venv/bin/python -m bench.batching --full-size      # SD 1.5 shapes (random weights), 512 px: for a GPU

Throughput: two real `bentoml serve` processes on the demo model, one with the default
ALICE_MAX_BATCH and one with ALICE_MAX_BATCH=1, started side by side. In each round, 8 clients
(one HTTP connection each) post one `/generate` at once with distinct seeds, first to one
server, then to the other (the order alternates), so a drift of the machine's speed falls on
both alike; a round's rate is 8 images over the time the last answer took. Printed: the median
over the rounds of each, their ratio (target: at least 1.5 on the project's 2-core CPU), and
the batch sizes the server's job records report.

PSNR: in-process on the same demo pipeline, for every scheduler: 8 requests with distinct
prompts and seeds drawn alone, then as one batch; the PSNR of each batched image against its
twin (the promise: 40 dB or more). Both parts run on the GPU when there is one.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from harness.environment import alice_environment
from harness.server import running_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--full-size", action="store_true", help="SD 1.5 architecture, random weights")
    parser.add_argument("--size", type=int, default=None, help="default: 64, 512 with --full-size")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--scheduler", default="euler")
    parser.add_argument("--psnr-steps", type=int, default=25)
    parser.add_argument("--skip-psnr", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    args.size = args.size or (512 if args.full_size else 64)
    model = "SD 1.5 architecture" if args.full_size else "demo model"
    print(f"{model}: clients={args.clients} size={args.size} steps={args.steps} scheduler={args.scheduler}")
    if not args.skip_throughput:
        throughput(args)
    if not args.skip_psnr:
        twins(args)


def throughput(args: argparse.Namespace) -> None:
    env = {"ALICE_QUEUE_SIZE": "100", **({"ALICE_DEFAULT_MODEL": "sd15-arch"} if args.full_size else {})}
    with tempfile.TemporaryDirectory() as scratch, alice_environment(Path(scratch), env):
        log = Path(scratch)
        if args.full_size:
            from alice.models import checkpoints
            from bench.fullsize import save_sd15_architecture

            checkpoints.import_pipeline_folder(save_sd15_architecture(log / "sd15"), "sd15-arch")
        with running_server(log / "batched.log") as batched, \
                running_server(log / "single.log", ALICE_MAX_BATCH="1") as single:
            servers = {"batched": batched.url, "max_batch=1": single.url}
            clients = [httpx.Client(timeout=600) for _ in range(args.clients)]
            rates: dict[str, list[float]] = {name: [] for name in servers}
            batches: dict[str, Counter] = {name: Counter() for name in servers}
            seed = 0

            def burst(url: str, first_seed: int) -> float:
                bodies = [{"prompt": f"a lighthouse {i}", "seed": first_seed + i, "width": args.size,
                           "height": args.size, "steps": args.steps, "scheduler": args.scheduler}
                          for i in range(args.clients)]
                started = time.perf_counter()
                with ThreadPoolExecutor(args.clients) as pool:
                    for response in pool.map(lambda c, b: c.post(f"{url}/generate", json=b), clients, bodies):
                        response.raise_for_status()
                return args.clients / (time.perf_counter() - started)

            for url in servers.values():  # warm-up: the first calls of each server are slower
                burst(url, 10_000)
            for round_ in range(args.rounds):
                order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
                for name in order:
                    began = time.time()
                    rates[name].append(burst(servers[name], seed))
                    jobs = clients[0].get(f"{servers[name]}/v1/jobs").json()["data"]
                    batches[name].update(job["batch"] for job in jobs if job["created"] >= began)
                    seed += args.clients
            for client in clients:
                client.close()
    for name, values in rates.items():
        print(f"{name:>12}: median {statistics.median(values):.3f} images/s "
              f"(min {min(values):.3f}, max {max(values):.3f}; rounds {', '.join(f'{v:.3f}' for v in values)}); "
              f"jobs by batch size {dict(sorted(batches[name].items()))}")
    ratio = statistics.median(rates["batched"]) / statistics.median(rates["max_batch=1"])
    print(f"batched / max_batch=1: {ratio:.2f}x")


def psnr(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def twins(args: argparse.Namespace) -> None:
    from alice.engine.demo import save_demo_pipeline
    from alice.engine.generate import BatchEntry, GenerationSpec, run_batch, run_generation
    from alice.engine.pipelines import choose_placement, load_pipeline
    from alice.engine.scheduler_names import A1111_SAMPLERS

    with tempfile.TemporaryDirectory() as scratch:
        if args.full_size:
            from bench.fullsize import save_sd15_architecture

            folder = save_sd15_architecture(Path(scratch) / "sd15")
        else:
            save_demo_pipeline(folder := Path(scratch))
        pipe = load_pipeline(folder, choose_placement())
    config = pipe.scheduler.config
    print(f"PSNR of each batched image against its twin drawn alone ({args.clients} in one call, "
          f"{args.size} px, {args.psnr_steps} steps):")
    worst = float("inf")
    for name in A1111_SAMPLERS:
        specs = [GenerationSpec(prompt=f"a lighthouse {i}", seed=100 + i, width=args.size, height=args.size,
                                steps=args.psnr_steps, scheduler=name) for i in range(args.clients)]
        alone = [run_generation(pipe, config, spec).images[0] for spec in specs]
        batched = run_batch(pipe, config, [BatchEntry(spec) for spec in specs], max_images=args.clients)
        values = [psnr(twin, result.images[0]) for twin, result in zip(alone, batched)]
        worst = min(worst, *values)
        print(f"  {name:>17}: min {min(values):.1f} dB, median {statistics.median(values):.1f} dB "
              f"(identical: {sum(v == float('inf') for v in values)} of {len(values)})")
    print(f"lowest over all schedulers: {worst:.1f} dB")


if __name__ == "__main__":
    main()
