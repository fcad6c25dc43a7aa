"""Queue throughput: N clients at once against the real server; images per second over 1 / single latency.

    .venv/bin/python -m bench.throughput --clients 8 --jobs 32

1.00 means the worker never idles between queued jobs (target: at least 0.97).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.support import alice_environment, running_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    body = {"prompt": "a lighthouse", "width": args.size, "height": args.size, "steps": args.steps, "seed": 1,
            "scheduler": "ddim"}
    with tempfile.TemporaryDirectory() as scratch, alice_environment(Path(scratch), {"ALICE_QUEUE_SIZE": "1000"}):
        with running_server(Path(scratch) / "server.log") as server, httpx.Client(timeout=600) as client:
            url = f"{server.url}/generate"
            for _ in range(3):
                client.post(url, json=body)
            singles = []
            for _ in range(8):
                started = time.perf_counter()
                client.post(url, json=body).raise_for_status()
                singles.append(time.perf_counter() - started)
            single = statistics.median(singles)

            def one(_: int) -> None:
                with httpx.Client(timeout=600) as own:
                    own.post(url, json=body).raise_for_status()

            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(one, range(args.jobs)))
            elapsed = time.perf_counter() - started
    rate = args.jobs / elapsed
    print(f"size={args.size} steps={args.steps} clients={args.clients} jobs={args.jobs}")
    print(f"single request median {single * 1000:.1f} ms -> ideal {1 / single:.2f} images/s")
    print(f"{args.clients} clients: {rate:.2f} images/s  ratio {rate * single:.3f}")


if __name__ == "__main__":
    main()
