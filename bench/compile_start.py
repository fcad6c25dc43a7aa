"""ALICE_COMPILE_UNET on a real server: time to ready, then first and next request at the
default size and at another size.

    .venv/bin/python -m bench.compile_start                  # a cold inductor cache, then a warm one
    .venv/bin/python -m bench.compile_start --starts 1       # the cold start only

Each start is `bentoml serve service:Alice` on the demo model with ALICE_COMPILE_UNET=true and
its own inductor cache folder (TORCHINDUCTOR_CACHE_DIR): the first start finds it empty (a first
start on a host), the next ones find what the first compiled (a restart). Requests: 64 px (the
demo's native size) and 128 px, 4 steps of DDIM, one image, the time of `POST /generate`. The
server's `/health` says what it compiled and how many UNet calls ran eager.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import httpx

from harness.environment import alice_environment
from harness.server import ServerProcess

BODY = {"prompt": "a boat", "steps": 4, "scheduler": "ddim", "seed": 8}


def one_start(log: Path, cache: Path) -> str:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    server = ServerProcess(log, base_env=env, ALICE_COMPILE_UNET="true").wait_ready(stalled_after=300, limit=1800)
    ready = time.perf_counter() - started
    try:
        with httpx.Client(timeout=900) as client:
            def timed(size: int) -> float:
                begun = time.perf_counter()
                client.post(f"{server.url}/generate", json={**BODY, "width": size, "height": size}).raise_for_status()
                return time.perf_counter() - begun

            times = [timed(64), timed(64), timed(128), timed(128)]
            compiled = client.get(f"{server.url}/health").json()["unet_compile"]["models"]
    finally:
        server.close()
    return (f"ready {ready:.1f} s; 64 px first {times[0]:.2f} s, next {times[1]:.2f} s; "
            f"128 px first {times[2]:.2f} s, next {times[3]:.2f} s; /health: {compiled}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=2, help="starts sharing one inductor cache (the first cold)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, alice_environment(Path(scratch), {}):
        tmp = Path(scratch)
        for run in range(args.starts):
            load = os.getloadavg()[0]
            line = one_start(tmp / f"start-{run}.log", tmp / "inductor-cache")
            print(f"#{run + 1} ({'cold' if run == 0 else 'warm'} cache, load {load:.1f}): {line}", flush=True)


if __name__ == "__main__":
    main()
