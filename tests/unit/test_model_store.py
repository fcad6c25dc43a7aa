"""ALICE's view of the Bento model store, on a private store per test."""

from __future__ import annotations

import json
import shutil
import time
from datetime import timezone
from pathlib import Path

import bentoml
import pytest

from alice.models import checkpoints
from alice.models import store as model_store
from alice.engine.demo import DEMO_MODEL_NAME, save_demo_pipeline
from alice.engine.pipeline_configs import native_size
from alice.models.store import InvalidModelName, ModelNotFound


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo-folder")
    save_demo_pipeline(folder)
    return folder


def _store_names() -> list[str]:
    return sorted(str(m.tag) for m in bentoml.models.list())


def test_import_get_list(bentoml_home: Path, demo_folder: Path) -> None:
    stored = checkpoints.import_pipeline_folder(demo_folder, "tiny", source="test")
    assert stored.name == "tiny" and stored.tag.startswith("tiny:")
    assert stored.family == "sd15" and stored.kind == "pipeline" and stored.source == "test"
    assert stored.path.is_relative_to(bentoml_home / "models")
    assert (stored.path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert 5e6 < stored.size_bytes < 15e6  # the demo's fp16 weights
    assert stored.created.tzinfo is not None and stored.created.utcoffset() == timezone.utc.utcoffset(None)
    assert model_store.get_model("tiny") == stored
    assert model_store.list_models() == [stored]
    labels = bentoml.models.get(stored.tag).info.labels
    assert labels == {"alice": "pipeline", "family": "sd15"}


def test_import_leaves_no_staging_copy(bentoml_home: Path, demo_folder: Path, tmp_path: Path, monkeypatch) -> None:
    # bentoml.models.create stages in the temp dir and never cleans it up itself
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    checkpoints.import_pipeline_folder(demo_folder, "tiny")
    assert not list(tmp_path.glob("bentoml-model-*"))
    assert (demo_folder / "model_index.json").is_file()  # the source folder is untouched


def test_list_shows_only_alice_models_newest_first_by_name(bentoml_home: Path, demo_folder: Path) -> None:
    with bentoml.models.create("someone-elses") as other:
        (Path(other.path) / "weights.bin").write_bytes(b"x")
    first_b = checkpoints.import_pipeline_folder(demo_folder, "b-model")
    time.sleep(0.01)  # versions are ordered by creation time
    newest_b = checkpoints.import_pipeline_folder(demo_folder, "b-model")
    a = checkpoints.import_pipeline_folder(demo_folder, "a-model")
    assert newest_b.tag != first_b.tag and newest_b.created > first_b.created
    assert [m.tag for m in model_store.list_models()] == [a.tag, newest_b.tag]
    assert model_store.get_model("b-model").tag == newest_b.tag
    with pytest.raises(ModelNotFound, match="someone-elses"):
        model_store.get_model("someone-elses")
    with pytest.raises(ModelNotFound):
        model_store.delete_model("someone-elses")
    assert any(tag.startswith("someone-elses:") for tag in _store_names())


def test_delete_removes_every_version(bentoml_home: Path, demo_folder: Path) -> None:
    checkpoints.import_pipeline_folder(demo_folder, "gone")
    checkpoints.import_pipeline_folder(demo_folder, "gone")
    kept = checkpoints.import_pipeline_folder(demo_folder, "kept")
    model_store.delete_model("gone")
    assert [m.tag for m in model_store.list_models()] == [kept.tag]
    with pytest.raises(ModelNotFound, match="'gone' is not in the model store"):
        model_store.get_model("gone")
    with pytest.raises(ModelNotFound):
        model_store.delete_model("gone")


def test_a_lookup_is_reused_until_the_store_changes(bentoml_home: Path, demo_folder: Path, monkeypatch) -> None:
    first = checkpoints.import_pipeline_folder(demo_folder, "kept-up")
    model_store.get_model("kept-up")
    reads: list[str] = []
    real_get = bentoml.models.get
    monkeypatch.setattr(bentoml.models, "get", lambda tag: reads.append(str(tag)) or real_get(tag))
    assert model_store.get_model("kept-up") == first and reads == []  # unchanged: not read again
    time.sleep(0.01)
    newer = checkpoints.import_pipeline_folder(demo_folder, "kept-up")
    assert model_store.get_model("kept-up") == newer and len(reads) == 1  # a new version is seen
    model_store.delete_model("kept-up")
    with pytest.raises(ModelNotFound):
        model_store.get_model("kept-up")


def test_missing_model(bentoml_home: Path) -> None:
    with pytest.raises(ModelNotFound) as caught:
        model_store.get_model("nothing-here")
    assert str(caught.value) == "model 'nothing-here' is not in the model store"
    assert isinstance(caught.value, KeyError)
    assert model_store.list_models() == []


@pytest.mark.parametrize("name", ["ok", "sd-1.5_fp16", "a" * 63, "0x"])
def test_valid_names(name: str) -> None:
    assert model_store.validate_model_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "../x", "..", "a/b", "a\\b", "Upper", "-lead", "trail-", "sp ace", "sd/x", "a" * 64, "é"]
)
def test_invalid_names_refused(name: str, bentoml_home: Path, demo_folder: Path) -> None:
    with pytest.raises(InvalidModelName, match="lowercase letters, digits"):
        model_store.validate_model_name(name)
    with pytest.raises(InvalidModelName):
        model_store.get_model(name)
    with pytest.raises(InvalidModelName):
        model_store.delete_model(name)
    with pytest.raises(InvalidModelName):
        checkpoints.import_pipeline_folder(demo_folder, name)
    assert _store_names() == []


def _write_configs(folder: Path, class_name: str, cross_attention_dim: int) -> Path:
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    (folder / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": cross_attention_dim}))
    return folder


def test_folder_that_is_not_a_pipeline_is_refused(bentoml_home: Path, tmp_path: Path, demo_folder: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="not a diffusers pipeline folder"):
        checkpoints.import_pipeline_folder(empty, "empty")
    # configs only, no weights: the loader itself must reject it
    configs_only = _write_configs(tmp_path / "configs", "StableDiffusionXLPipeline", 2048)
    with pytest.raises(ValueError, match="does not load as a diffusers pipeline"):
        checkpoints.import_pipeline_folder(configs_only, "configs")
    with pytest.raises(ValueError, match="not a diffusers pipeline folder"):
        checkpoints.import_pipeline_folder(tmp_path / "does-not-exist", "missing")
    # a complete folder whose weights are corrupt
    broken = tmp_path / "broken"
    shutil.copytree(demo_folder, broken)
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.write_bytes(b"not weights")
    with pytest.raises(ValueError, match="does not load as a diffusers pipeline"):
        checkpoints.import_pipeline_folder(broken, "broken")
    assert _store_names() == [] and model_store.list_models() == []


def test_ensure_demo_model_is_idempotent(bentoml_home: Path) -> None:
    demo = checkpoints.ensure_demo_model()
    assert demo.name == DEMO_MODEL_NAME and demo.source.startswith("demo:") and demo.family == "sd15"
    assert checkpoints.ensure_demo_model() == demo
    assert len(bentoml.models.list(DEMO_MODEL_NAME)) == 1


def test_retrained_demo_weights_are_stored_as_a_new_version(bentoml_home: Path, tmp_path: Path, monkeypatch) -> None:
    first = checkpoints.ensure_demo_model()
    retrained = tmp_path / "demo_model"
    shutil.copytree(checkpoints.DEMO_MODEL_DIR, retrained)
    (retrained / "training.json").write_text('{"retrained": true}')
    monkeypatch.setattr(checkpoints, "DEMO_MODEL_DIR", retrained)
    second = checkpoints.ensure_demo_model()
    assert second.tag != first.tag and second.source != first.source
    assert model_store.get_model(DEMO_MODEL_NAME) == second  # the newest is served
    assert (second.path / "training.json").read_text() == '{"retrained": true}'
    assert checkpoints.ensure_demo_model() == second


def test_the_demo_is_native_at_64_and_its_stored_record_says_so(bentoml_home: Path) -> None:
    from alice.engine.demo import DEMO_MODEL_DIR

    assert native_size(DEMO_MODEL_DIR) == 64
    assert checkpoints.ensure_demo_model().native_size == 64


def test_the_listing_is_reused_until_the_store_changes(bentoml_home: Path, demo_folder: Path, monkeypatch) -> None:
    checkpoints.import_pipeline_folder(demo_folder, "listed-a")
    model_store.list_models()
    lists: list[int] = []
    real_list = bentoml.models.list
    monkeypatch.setattr(bentoml.models, "list", lambda *args: lists.append(1) or real_list(*args))

    def names_and_reads() -> tuple[list[str], int]:
        before = len(lists)
        names = [m.name for m in model_store.list_models()]
        return names, len(lists) - before

    assert names_and_reads() == (["listed-a"], 0)  # unchanged: not read again
    time.sleep(0.01)
    newer = checkpoints.import_pipeline_folder(demo_folder, "listed-a")  # a new version of a name
    assert names_and_reads() == (["listed-a"], 1) and newer in model_store.list_models()
    checkpoints.import_pipeline_folder(demo_folder, "listed-b")  # a new name
    assert names_and_reads() == (["listed-a", "listed-b"], 1)
    model_store.delete_model("listed-b")
    assert names_and_reads() == (["listed-a"], 1)
    model_store.delete_model("listed-a")
