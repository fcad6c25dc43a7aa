"""Cold start (`bentoml serve` to ready) and model switching (second stored model, cold and cached).

    .venv/bin/python -m bench.startup                        # 5 cold starts, then model switching
    .venv/bin/python -m bench.startup --starts 7 --baseline fc2365e --no-switching

Each cold start is `bentoml serve service:Alice` on the demo model until `/readyz` answers 200
(polled every 0.25 s), with the CPU seconds its two processes used by then: BentoML's first
process (which imports service.py to read the service definition, then starts the worker) and
the worker (which imports it again, builds the Runtime and loads the default model). CPU
seconds hardly change with the machine's load, wall seconds do: on a shared machine compare
the CPU figures, and take the minimum as the closest to a quiet machine. The worker's own
start-phase line is printed too (commits that have it).

`--baseline REV` runs that commit's service.py and alice/ (from `git archive`) alternately with
this tree, start by start, so both see the same load, and prints the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from harness.environment import ROOT, alice_environment
from harness.server import ServerProcess

PHASES = re.compile(r"INFO alice: (start: .*)$", re.MULTILINE)


@dataclass
class Start:
    wall_s: float
    first_cpu_s: float  # `bentoml serve` itself
    worker_cpu_s: float
    phases: str | None  # the worker's start-phase line, where the code logs one


def cold_start(log: Path, tree: Path) -> Start:
    """One `bentoml serve` of the service in `tree`, from its start to /readyz 200."""
    env = {**os.environ, "PYTHONPATH": str(tree)}  # that tree's alice/ before the installed one
    server = ServerProcess(log, cwd=tree, base_env=env)
    try:
        server.wait_ready()
        server._cpu_seconds()
        first = server._cpu.get(server.process.pid, 0.0)
        worker = sum(server._cpu.values()) - first
    finally:
        server.close()
    found = PHASES.findall(log.read_text(errors="replace"))
    return Start(server.ready_after or 0.0, first, worker, found[-1] if found else None)


@contextlib.contextmanager
def tree_of(revision: str) -> Iterator[Path]:
    """service.py and alice/ as they were at `revision`, in a folder of their own."""
    with tempfile.TemporaryDirectory(prefix="alice-baseline-") as folder:
        archive = subprocess.run(["git", "archive", revision, "service.py", "alice"], cwd=ROOT,
                                 capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
        yield Path(folder)


def describe(label: str, starts: list[Start]) -> str:
    walls = [s.wall_s for s in starts]
    return (f"{label}: cold start median {statistics.median(walls):.1f} s, min {min(walls):.1f} s, "
            f"max {max(walls):.1f} s over {len(walls)}; CPU median: `bentoml serve` "
            f"{statistics.median(s.first_cpu_s for s in starts):.2f} s, worker "
            f"{statistics.median(s.worker_cpu_s for s in starts):.2f} s")


def model_switching(tmp: Path) -> str:
    from alice.models import checkpoints
    from alice.engine.demo import save_untrained_demo

    save_untrained_demo(tmp / "second", seed=1)
    checkpoints.import_pipeline_folder(tmp / "second", "second")
    server = ServerProcess(tmp / "switching.log").wait_ready()
    try:
        body = {"prompt": "x", "width": 64, "height": 64, "steps": 4, "seed": 1}
        with httpx.Client(timeout=600) as client:
            def timed(model: str) -> float:
                started = time.perf_counter()
                client.post(f"{server.url}/generate", json={**body, "model": model}).raise_for_status()
                return time.perf_counter() - started

            timed("alice-demo")
            same = statistics.median(timed("alice-demo") for _ in range(5))
            cold = timed("second")  # loaded on first use
            cached = statistics.median([timed("second"), timed("alice-demo"), timed("second")])
    finally:
        server.close()
    return (f"same model: {same * 1000:.0f} ms; second model cold: {cold * 1000:.0f} ms; "
            f"switching between cached models: {cached * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=5, help="cold starts of each tree")
    parser.add_argument("--baseline", metavar="REV", help="alternate with this commit's service.py and alice/")
    parser.add_argument("--no-switching", action="store_true", help="cold starts only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, alice_environment(Path(scratch), {}), \
            contextlib.ExitStack() as stack:
        tmp = Path(scratch)
        trees = {"this tree": ROOT}
        if args.baseline:
            trees = {f"baseline {args.baseline}": stack.enter_context(tree_of(args.baseline)), **trees}
        results: dict[str, list[Start]] = {label: [] for label in trees}
        for run in range(args.starts):
            for label, tree in trees.items():
                load = os.getloadavg()[0]
                start = cold_start(tmp / f"start-{len(results[label])}-{label.split()[0]}.log", tree)
                results[label].append(start)
                print(f"{label} #{run + 1}: {start.wall_s:.1f} s to ready (load {load:.1f}); CPU "
                      f"`bentoml serve` {start.first_cpu_s:.2f} s, worker {start.worker_cpu_s:.2f} s"
                      + (f"\n    {start.phases}" if start.phases else ""), flush=True)
        for label, starts in results.items():
            print(describe(label, starts))
        if args.baseline:
            base, new = (statistics.median(s.wall_s for s in starts) for starts in results.values())
            base_min, new_min = (min(s.wall_s for s in starts) for starts in results.values())
            print(f"this tree / baseline: median {new / base:.2f}, min {new_min / base_min:.2f}")
        if not args.no_switching:
            print(model_switching(tmp))


if __name__ == "__main__":
    main()
