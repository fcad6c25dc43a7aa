"""The imports' objects are left out of the garbage collector's walks (alice/engine/heap.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_started_process_collects_in_milliseconds_and_still_frees_new_cycles() -> None:
    # A fresh interpreter: the suite's own process is frozen already (tests/conftest.py).
    script = textwrap.dedent("""
        import gc, time, weakref
        import diffusers, torch, transformers
        from diffusers import StableDiffusionPipeline  # diffusers' lazy modules, as a load imports them
        from alice.engine.heap import freeze_imported_objects

        def collect_s():
            started = time.perf_counter()
            gc.collect()
            return time.perf_counter() - started

        before = min(collect_s() for _ in range(3))
        freeze_imported_objects()
        frozen = gc.get_freeze_count()
        freeze_imported_objects()  # once per process
        assert gc.get_freeze_count() == frozen
        after = min(collect_s() for _ in range(3))

        class Node:
            pass
        node = Node(); node.me = node  # garbage in a cycle, made after the freeze
        gone = weakref.ref(node); del node
        gc.collect()
        print(frozen, before, after, gone() is None)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    frozen, before, after, freed = out.stdout.split()
    assert int(frozen) > 100_000, out.stdout
    assert float(after) < float(before) / 10, out.stdout  # 0.35 s -> ~0 on the dev box
    assert freed == "True"
