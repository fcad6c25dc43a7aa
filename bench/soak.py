"""Soak: hundreds of generations in one process; memory and file handles must not creep.

    .venv/bin/python -m bench.soak --jobs 300

Runs the real Runtime (queue, worker, stores, metrics) in this process, as the service does,
and compares resident memory at the end with the level after warm-up. Prints the growth ratio
(target: within a few percent) and the open file handles before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tempfile
from pathlib import Path

import psutil

from alice.config import load_settings
from alice.protocol.generation import GenerationSettings
from alice.serving.runtime import Runtime
from harness.environment import alice_environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()
    process = psutil.Process()
    with tempfile.TemporaryDirectory() as scratch, alice_environment(Path(scratch), {"ALICE_QUEUE_SIZE": "1000"}):
        runtime = Runtime(load_settings()).start()
        schedulers = ["ddim", "euler_a", "dpm++_2m_karras", "dpm++_sde_karras", "unipc"]

        async def run(count: int, offset: int) -> None:
            for index in range(count):
                request = GenerationSettings(prompt=f"soak {index}", width=64, height=64, steps=2,
                                             seed=offset + index, scheduler=schedulers[index % len(schedulers)],
                                             num_images=1 + index % 2)
                job = await runtime.submit(request, "soak").wait()
                assert job.state.value == "succeeded", job.error

        asyncio.run(run(args.warmup, 0))
        gc.collect()
        rss_warm, files_warm = process.memory_info().rss, len(process.open_files())
        asyncio.run(run(args.jobs, args.warmup))
        gc.collect()
        rss_end, files_end = process.memory_info().rss, len(process.open_files())
        images = runtime.images.count()
        runtime.shutdown()
    print(f"jobs={args.jobs} (+{args.warmup} warm-up), images stored={images}, pid={os.getpid()}")
    print(f"RSS after warm-up {rss_warm / 2**20:.1f} MiB, at the end {rss_end / 2**20:.1f} MiB, "
          f"ratio {rss_end / rss_warm:.3f}")
    print(f"open files after warm-up {files_warm}, at the end {files_end}")


if __name__ == "__main__":
    main()
