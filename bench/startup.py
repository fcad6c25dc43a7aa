"""Cold start (`bentoml serve` to ready) and model switching (second stored model, cold and cached).

    .venv/bin/python -m bench.startup
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import httpx

from alice import model_store
from alice.engine.demo import save_untrained_demo
from tests.support import ServerProcess, alice_environment


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch, alice_environment(Path(scratch), {}):
        tmp = Path(scratch)
        save_untrained_demo(tmp / "second", seed=1)
        model_store.import_pipeline_folder(tmp / "second", "second")
        starts = []
        for _ in range(3):
            started = time.perf_counter()
            server = ServerProcess(tmp / "server.log").wait_ready()
            starts.append(time.perf_counter() - started)
            server.close()
        server = ServerProcess(tmp / "server.log").wait_ready()
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
    print(f"cold start (bentoml serve to /readyz): median {statistics.median(starts):.1f} s over {len(starts)}")
    print(f"same model: {same * 1000:.0f} ms; second model cold: {cold * 1000:.0f} ms; "
          f"switching between cached models: {cached * 1000:.0f} ms")


if __name__ == "__main__":
    main()
