"""What reading the service definition costs: `bentoml serve` imports service.py in its first
process only to read the decorator's settings and routes, before it starts the worker, so
whatever that import pulls in adds to every cold start (bench/startup.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from harness.environment import ROOT

# Together about 6 s of CPU to import (torch, then diffusers with transformers and peft); the
# worker imports them when it builds the Runtime and loads the default model.
ENGINE_LIBRARIES = ("torch", "diffusers", "transformers", "peft", "huggingface_hub")


def test_importing_the_service_definition_loads_no_engine_library():
    code = (
        "import json, sys\n"
        "import service\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {ENGINE_LIBRARIES!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []
