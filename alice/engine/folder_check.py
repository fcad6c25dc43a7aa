"""Whether a diffusers folder of a transformer family would load, checked without loading it.

Importing a Stable Diffusion folder loads it on the CPU to check it (a few GB). A FLUX.1 folder
is 34 GB of weights, in float32 on the CPU twice that: loading it to check it would need more
RAM than the GPU server that runs it may have. So for these families each component is built on
the meta device from its config (no memory), and its weight files' headers (names, shapes) are
compared with what the model expects: a missing, misshapen or unreadable tensor, or a config that
does not build, is found as a load would find it, in seconds and with no weights read.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

WEIGHTS_SUFFIX = ".safetensors"


class FolderDoesNotLoad(ValueError):
    """A component of the folder would not load; the message names it and what is wrong."""


def check_folder_loads(folder: Path, *, skip: tuple[str, ...] = ()) -> None:
    """FolderDoesNotLoad unless every component of the folder (but those in `skip`) builds from
    its config and its weight files hold exactly the tensors the model expects (a
    transformer-only file in `transformer/` is checked when it is imported, see
    alice/models/transformer_imports.py)."""
    folder = Path(folder)
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FolderDoesNotLoad(f"{folder}: model_index.json unreadable ({exc})") from None
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[1] is None or name in skip:
            continue
        library, class_name = spec
        try:
            cls = getattr(importlib.import_module(library), class_name)
        except (ImportError, AttributeError):
            raise FolderDoesNotLoad(f"{name}: {library}.{class_name} does not exist in this install") from None
        part = folder / name
        if not _has_weights(cls):
            _load_small_part(cls, part, name)
            continue
        files = sorted(part.glob(f"*{WEIGHTS_SUFFIX}"))
        if not files and name == "transformer" and any(part.glob("*.gguf")):
            continue  # a GGUF transformer: read and checked at its import
        if not files:
            raise FolderDoesNotLoad(f"{name}: no {WEIGHTS_SUFFIX} weights in {part}")
        model = _on_meta(cls, library, part, name)
        found = _tensors_in(files, name)
        if library == "diffusers":  # diffusers' names are its own and stable: compare them one by one
            _compare(name, {key: tuple(t.shape) for key, t in model.state_dict().items()}, found)
        else:
            # transformers renames checkpoints' keys on load (older layouts, tied embeddings saved
            # once): what must hold is the amount, within the few buffers files may carry or not.
            _compare_amount(name, sum(p.numel() for p in model.parameters()), found)


def _has_weights(cls: type) -> bool:
    import torch

    return isinstance(cls, type) and issubclass(cls, torch.nn.Module)


def _load_small_part(cls: Any, part: Path, name: str) -> None:
    """Tokenizers, schedulers, processors: small, loaded as the pipeline would."""
    try:
        if hasattr(cls, "from_pretrained"):
            cls.from_pretrained(str(part), local_files_only=True)
        else:
            cls.from_config(cls.load_config(str(part)))
    except Exception as exc:  # each library raises its own kinds
        raise FolderDoesNotLoad(f"{name}: {type(exc).__name__}: {exc}") from None


def _on_meta(cls: Any, library: str, part: Path, name: str) -> Any:
    """The component's model built from its config on the meta device (no memory)."""
    import torch

    try:
        with torch.device("meta"):
            if library == "diffusers":
                return cls.from_config(cls.load_config(str(part)))
            from transformers import AutoConfig

            return cls._from_config(AutoConfig.from_pretrained(str(part), local_files_only=True))
    except Exception as exc:
        raise FolderDoesNotLoad(f"{name}: its config does not build a {cls.__name__}: {type(exc).__name__}: {exc}") from None


def _tensors_in(files: list[Path], name: str) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape in the weight files (a sharded set's shards, or one file),
    from their headers; FolderDoesNotLoad for one that is truncated or not safetensors."""
    found: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with open(file, "rb") as stream:
                length = int.from_bytes(stream.read(8), "little")
                header = json.loads(stream.read(length))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (OSError, ValueError, KeyError, TypeError):
            raise FolderDoesNotLoad(f"{name}: {file.name} is not a readable safetensors file") from None
        if file.stat().st_size < 8 + length + end:
            raise FolderDoesNotLoad(f"{name}: {file.name} is truncated ({file.stat().st_size} bytes, "
                                    f"its header describes {8 + length + end})")
        found.update({key: tuple(entry["shape"]) for key, entry in header.items() if key != "__metadata__"})
    return found


def _compare(name: str, expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> None:
    missing = [key for key in expected if key not in found]
    if missing:
        raise FolderDoesNotLoad(f"{name}: {len(missing)} of its {len(expected)} tensors are missing from its "
                                f"weights (such as {', '.join(missing[:3])})")
    unexpected = [key for key in found if key not in expected]
    if unexpected:
        raise FolderDoesNotLoad(f"{name}: its weights hold {len(unexpected)} tensors its config does not have "
                                f"(such as {', '.join(unexpected[:3])}): weights of another model?")
    misshapen = [key for key, shape in found.items() if expected[key] != shape]
    if misshapen:
        key = misshapen[0]
        raise FolderDoesNotLoad(f"{name}: {len(misshapen)} tensors are not the shape its config says "
                                f"(such as {key}: {list(found[key])}, expected {list(expected[key])})")


def _compare_amount(name: str, parameters: int, found: dict[str, tuple[int, ...]]) -> None:
    """The weights hold the model's parameters, give or take 2% (position ids and other small
    buffers some files carry): a missing block (a T5 layer is 4%) or another model is found."""
    held = sum(_numel(shape) for shape in found.values())
    if not 0.98 * parameters <= held <= 1.02 * parameters:
        raise FolderDoesNotLoad(f"{name}: its weights hold {held:,} values where its config has {parameters:,} "
                                "parameters: a part is missing, or they are another model's")


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for side in shape:
        count *= side
    return count
