"""A private model store, data folder and ALICE_* settings for a test or a benchmark."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.models import ModelStore

ROOT = Path(__file__).resolve().parents[1]  # the repository


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block (and its subprocesses), then put back what was there."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def private_bentoml_home(home: Path) -> Iterator[Path]:
    """Point BentoML's model store at `home`, in this process and for subprocesses."""
    (home / "models").mkdir(parents=True, exist_ok=True)
    with environment({"BENTOML_HOME": str(home)}), BentoMLContainer.bentoml_home.patch(str(home)), \
            BentoMLContainer.model_store.patch(ModelStore(str(home / "models"))):
        yield home


@contextlib.contextmanager
def alice_environment(tmp: Path, env: dict[str, str]) -> Iterator[Path]:
    """A private store holding the demo model, a private data folder, and extra ALICE_* settings."""
    from alice.models import checkpoints

    with environment({"ALICE_DATA_DIR": str(tmp / "data"), **env}), private_bentoml_home(tmp / "bentoml"):
        checkpoints.ensure_demo_model()
        yield tmp
