"""The garbage collector and what the imports leave behind.

torch, diffusers and transformers leave over 500,000 objects that live as long as the process.
Python's full collections walk every one of them: 0.35 s of a 2-core CPU per `gc.collect()`,
which ALICE calls after an eviction, an out-of-memory error and an import (to give gigabytes of
weights back at once), and which Python also runs by itself as the heap grows, on whichever
thread allocates, the event loop's included. Frozen, they are left out of every collection.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger("alice.engine")


def freeze_imported_objects() -> None:
    """Leave every object alive now out of the collector's walks, once per process.

    Call it after the imports and before any pipeline is loaded: a frozen object that later
    becomes garbage in a reference cycle is never collected, and a pipeline's weights are
    gigabytes. Objects freed by their reference count (most) are freed as before."""
    if gc.get_freeze_count():
        return
    gc.collect()  # what the imports left as garbage goes now, not into the frozen set
    gc.freeze()
    logger.debug("%d objects of the imports left out of garbage collection", gc.get_freeze_count())
