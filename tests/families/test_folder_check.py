"""A transformer family's folder is checked at import without loading it (alice/engine/folder_check.py):
every component built on the meta device against its weight files' headers."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from alice.engine.folder_check import FolderDoesNotLoad, check_folder_loads
from harness.tiny_pipelines import BUILDERS


@pytest.mark.parametrize("tiny", sorted(BUILDERS))
def test_every_tiny_family_folder_passes(tiny_family: Callable[[str], Path], tiny: str) -> None:
    check_folder_loads(tiny_family(tiny))


@pytest.fixture
def flux_copy(tiny_family: Callable[[str], Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_family("flux"), tmp_path / "flux"))


def weights(folder: Path, component: str) -> Path:
    [file] = sorted((folder / component).glob("*.safetensors"))
    return file


def test_a_truncated_weight_file_is_named(flux_copy: Path) -> None:
    file = weights(flux_copy, "transformer")
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(FolderDoesNotLoad, match=r"transformer: .* is truncated"):
        check_folder_loads(flux_copy)


def test_a_text_encoder_missing_a_block_is_found(flux_copy: Path) -> None:
    file = weights(flux_copy, "text_encoder_2")  # T5: transformers' names, checked by amount
    tensors = {key: value for key, value in load_file(file).items() if ".block.1." not in key}
    save_file(tensors, file)
    with pytest.raises(FolderDoesNotLoad, match="text_encoder_2: its weights hold"):
        check_folder_loads(flux_copy)


def test_weights_of_another_size_than_the_config_are_found(flux_copy: Path) -> None:
    config_file = flux_copy / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    config["num_single_layers"] += 1  # the config now expects a block the weights do not have
    config_file.write_text(json.dumps(config))
    with pytest.raises(FolderDoesNotLoad, match="transformer: .* tensors are missing"):
        check_folder_loads(flux_copy)


def test_a_component_without_weights_is_named(flux_copy: Path) -> None:
    weights(flux_copy, "vae").unlink()
    with pytest.raises(FolderDoesNotLoad, match="vae: no .safetensors weights"):
        check_folder_loads(flux_copy)


def test_the_import_refuses_a_broken_folder_with_the_reason(flux_copy: Path, bentoml_home: Path) -> None:
    from alice.models import checkpoints

    weights(flux_copy, "vae").unlink()
    with pytest.raises(ValueError, match="does not load as a flux1-dev pipeline: vae: no .safetensors"):
        checkpoints.import_pipeline_folder(flux_copy, "broken-flux")
