"""Queue throughput: N clients at once against the real server; images per second over 1 / single latency.

    .venv/bin/python -m bench.throughput --clients 8 --jobs 32

1.00 means the worker never idles between queued jobs (target: at least 0.97, measured with
ALICE_MAX_BATCH=1 in the environment; with batching, waiting jobs share pipeline calls and the
ratio goes above 1: bench/batching.py measures that). The single
latency is the median of one-at-a-time requests taken before and after the burst, so a drift
of the machine's speed during the run shows in neither side alone. Each client keeps one
HTTP connection, as SAM and the SDKs do; opening a client per request would spend the
server's CPU on the benchmark's TLS set-up.

It also prints how busy the worker was during the burst, from the server's own job records:
the time pipeline calls ran (start to `generated`; the jobs of a batch share one) over the time
from the first start to the last end. On a GPU the two numbers agree; on a small CPU the ratio
is lower, because the HTTP work of the waiting clients shares the cores with the generation.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from harness.environment import alice_environment
from harness.server import running_server


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
        with running_server(Path(scratch) / "server.log") as server:
            url = f"{server.url}/generate"
            clients = [httpx.Client(timeout=600) for _ in range(args.clients)]

            def singles(count: int) -> list[float]:
                seconds = []
                for _ in range(count):
                    started = time.perf_counter()
                    clients[0].post(url, json=body).raise_for_status()
                    seconds.append(time.perf_counter() - started)
                return seconds

            def one_client(client: httpx.Client, jobs: int) -> None:
                for _ in range(jobs):
                    client.post(url, json=body).raise_for_status()

            singles(3)  # warm-up
            before = singles(8)
            shares = [args.jobs // args.clients + (i < args.jobs % args.clients) for i in range(args.clients)]
            burst_began = time.time()
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(one_client, clients, shares))
            elapsed = time.perf_counter() - started
            burst = [job for job in clients[0].get(f"{server.url}/v1/jobs").json()["data"]
                     if job["created"] >= burst_began]
            after = singles(8)
            for client in clients:
                client.close()
    single = statistics.median(before + after)
    rate = args.jobs / elapsed
    print(f"size={args.size} steps={args.steps} clients={args.clients} jobs={args.jobs}")
    print(f"single request median {single * 1000:.1f} ms (before {statistics.median(before) * 1000:.1f}, "
          f"after {statistics.median(after) * 1000:.1f}) -> ideal {1 / single:.2f} images/s")
    print(f"{args.clients} clients: {rate:.2f} images/s  ratio {rate * single:.3f}")
    calls = {(job["started"], job["generated"]) for job in burst}  # a batch's jobs share their call
    generating = sum(end - start for start, end in calls)
    span = max(job["generated"] for job in burst) - min(job["started"] for job in burst)
    print(f"worker busy generating {generating / span:.4f} of the burst ({len(burst)} jobs in {len(calls)} calls, "
          f"idle {span - generating:.3f} s "
          f"in all), generation median {statistics.median(j['generated'] - j['started'] for j in burst) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
