"""Single-file `.safetensors` checkpoints (CivitAI / A1111 layout): family from the weights,
offline conversion through the shipped config folders, import into the model store and the CLI."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPTokenizer
from typer.testing import CliRunner

from alice.models import checkpoints
from alice.models import store as model_store
from alice.cli import app
from alice.engine.demo import build_demo_architecture, save_untrained_demo
from alice.engine.families import detect_family
from alice.engine.pipelines import choose_placement, load_pipeline
from alice.engine.single_file import CONFIGS, convert_single_file, detect_checkpoint_family
from tests.support import write_original_checkpoint

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: torch's default count makes tiny generations slow on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection (the hub, for a config) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo model three ways: a diffusers folder, the same weights as one original-layout
    checkpoint, and a config-only folder with the demo's (tiny) shapes in place of SD 1.5's."""
    root = tmp_path_factory.mktemp("single-file")
    folder = root / "demo"
    save_untrained_demo(folder)
    checkpoint = write_original_checkpoint(build_demo_architecture(), root / "my-model.safetensors")
    configs = root / "configs"
    shutil.copytree(folder, configs / "sd15", ignore=shutil.ignore_patterns("*.safetensors"))
    return {"folder": folder, "checkpoint": checkpoint, "configs": configs}


@pytest.fixture
def demo_shapes_as_sd15(demo: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the import's own code path (the shipped `sd15` config folder) read the demo's shapes."""
    monkeypatch.setattr("alice.engine.single_file.CONFIGS", demo["configs"])


def _draw(folder: Path) -> np.ndarray:
    pipe = load_pipeline(folder, choose_placement("cpu"))
    generator = torch.Generator().manual_seed(1234)
    return pipe("a red circle", num_inference_steps=4, height=64, width=64, generator=generator,
                output_type="np").images[0]


# ---- conversion ------------------------------------------------------------------------------


def test_checkpoint_converts_offline_and_draws_like_the_folder(demo, tmp_path: Path, no_network) -> None:
    assert detect_checkpoint_family(demo["checkpoint"]) == "sd15"
    out = tmp_path / "converted"
    convert_single_file(demo["checkpoint"], out, "sd15", config_dir=demo["configs"] / "sd15")
    for component in ("unet", "vae", "text_encoder"):
        assert list((out / component).glob("*.safetensors")), component
    assert not list(out.rglob("*.bin"))
    # every weight came through unchanged ...
    original, converted = build_demo_architecture(), load_pipeline(out, choose_placement("cpu"))
    for component in ("unet", "vae", "text_encoder"):
        expected, got = getattr(original, component).state_dict(), getattr(converted, component).state_dict()
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected), component
    # ... so the picture is the diffusers folder's, pixel for pixel
    np.testing.assert_allclose(_draw(out), _draw(demo["folder"]), atol=1e-6)


def test_half_precision_file_stays_half(tmp_path: Path, demo) -> None:
    checkpoint = write_original_checkpoint(build_demo_architecture().to(torch.float16), tmp_path / "fp16.safetensors")
    out = tmp_path / "out"
    convert_single_file(checkpoint, out, "sd15", config_dir=demo["configs"] / "sd15")
    from safetensors import safe_open

    with safe_open(str(out / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as weights:
        assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"F16"}


@pytest.mark.parametrize(("written", "expected"), [("v", "v_prediction"), ("epsilon", "epsilon")])
def test_prediction_type_from_modelspec_metadata(tmp_path: Path, demo, written: str, expected: str) -> None:
    checkpoint = write_original_checkpoint(
        build_demo_architecture(), tmp_path / "m.safetensors", metadata={"modelspec.prediction_type": written}
    )
    convert_single_file(checkpoint, tmp_path / "out", "sd15", config_dir=demo["configs"] / "sd15")
    scheduler = json.loads((tmp_path / "out" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == expected


def test_unknown_family_refused(demo, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model family 'sd4'"):
        convert_single_file(demo["checkpoint"], tmp_path / "out", "sd4")
    with pytest.raises(ValueError, match="flux1-dev single files are not Stable Diffusion checkpoints"):
        convert_single_file(demo["checkpoint"], tmp_path / "out", "flux1-dev")


# ---- the shipped architecture folders --------------------------------------------------------

_SHIPPED = {  # family: pipeline class, UNet cross-attention width, text encoders' widths
    "sd15": ("StableDiffusionPipeline", 768, {"text_encoder": 768}),
    "sd2": ("StableDiffusionPipeline", 1024, {"text_encoder": 1024}),
    "sdxl": ("StableDiffusionXLPipeline", 2048, {"text_encoder": 768, "text_encoder_2": 1280}),
}


@pytest.mark.parametrize("family", sorted(_SHIPPED))
def test_shipped_config_folder(family: str) -> None:
    pipeline_class, context, encoders = _SHIPPED[family]
    folder = CONFIGS / family
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == pipeline_class
    assert detect_family(folder) == family  # the stored model's family will agree
    assert json.loads((folder / "unet" / "config.json").read_text())["cross_attention_dim"] == context
    for encoder, width in encoders.items():
        assert json.loads((folder / encoder / "config.json").read_text())["hidden_size"] == width
    assert not list(folder.rglob("*.safetensors")) and not list(folder.rglob("*.bin"))  # configs only
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 3.5e6
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == ("v_prediction" if family == "sd2" else "epsilon")


@pytest.mark.parametrize("tokenizer", ["sd15/tokenizer", "sd2/tokenizer", "sdxl/tokenizer", "sdxl/tokenizer_2"])
def test_shipped_tokenizers_are_clips(tokenizer: str) -> None:
    loaded = CLIPTokenizer.from_pretrained(CONFIGS / tokenizer, local_files_only=True)
    assert len(loaded) == 49408 and loaded.model_max_length == 77
    assert loaded("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP's own ids
    assert len(loaded("word " * 100, truncation=True).input_ids) == 77
    # OpenCLIP (SD 2.x, SDXL's second encoder) pads with id 0 ("!"), OpenAI's CLIP with <|endoftext|>
    assert loaded.pad_token_id == (0 if tokenizer in ("sd2/tokenizer", "sdxl/tokenizer_2") else 49407)


# ---- family detection from the tensors -------------------------------------------------------


def _fake_checkpoint(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """Tiny tensors under real checkpoint names: detection reads only the header."""
    save_file({key: torch.zeros(shape, dtype=torch.float16) for key, shape in shapes.items()}, str(path))
    return path


_UNET = {
    "model.diffusion_model.input_blocks.0.0.weight": (2, 4, 1, 1),
    "model.diffusion_model.out.2.weight": (4, 2, 1, 1),
    "first_stage_model.decoder.conv_out.weight": (3, 2, 1, 1),
}


def _attn2(width: int) -> dict[str, tuple[int, ...]]:
    return {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (2, width)}


_CLIP_L = {"cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 2)}
_OPEN_CLIP_H = {"cond_stage_model.model.token_embedding.weight": (2, 2), "cond_stage_model.model.text_projection": (2, 2)}
_SDXL_TEXT = {
    "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": (77, 2),
    "conditioner.embedders.1.model.positional_embedding": (77, 2),
    "conditioner.embedders.1.model.text_projection": (2, 2),
}


@pytest.mark.parametrize(
    ("file_name", "shapes", "family"),
    [
        ("sd15.safetensors", {**_UNET, **_attn2(768), **_CLIP_L}, "sd15"),
        ("sd2.safetensors", {**_UNET, **_attn2(1024), **_OPEN_CLIP_H}, "sd2"),
        # the cross-attention width alone tells SD 2.x even with the text encoder in the CLIP layout
        ("sd2-hf-text.safetensors", {**_UNET, **_attn2(1024), **_CLIP_L}, "sd2"),
        ("sdxl.safetensors", {**_UNET, **_attn2(2048), **_SDXL_TEXT}, "sdxl"),
        # names lie: only the tensors count
        ("SDXL_Turbo_v2.1.safetensors", {**_UNET, **_attn2(768), **_CLIP_L}, "sd15"),
        ("sd15-pruned.safetensors", {**_UNET, **_attn2(2048), **_SDXL_TEXT}, "sdxl"),
    ],
)
def test_family_from_tensors(tmp_path: Path, file_name: str, shapes, family: str) -> None:
    assert detect_checkpoint_family(_fake_checkpoint(tmp_path / file_name, shapes)) == family


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (  # kohya / A1111 LoRA
            {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 2),
             "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (2, 4)},
            "is a LoRA, not a checkpoint",
        ),
        (  # diffusers / peft LoRA
            {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (4, 2)},
            "is a LoRA, not a checkpoint",
        ),
        ({"encoder.conv_in.weight": (2, 3, 1, 1), "decoder.conv_out.weight": (3, 2, 1, 1)}, "not a Stable Diffusion checkpoint"),
        ({k: v for k, v in {**_UNET, **_CLIP_L}.items() if not k.startswith("first_stage_model.")}, "has no VAE weights"),
        ({**_UNET, **_CLIP_L, "model.diffusion_model.input_blocks.0.0.weight": (2, 9, 1, 1)}, "takes 9 channels"),
        ({**_UNET, **_attn2(1280), "conditioner.embedders.0.model.positional_embedding": (77, 2)}, "SDXL refiner"),
        ({**_UNET, **_attn2(768)}, "no text encoder weights"),
    ],
    ids=["kohya-lora", "peft-lora", "vae-only", "no-vae", "inpainting", "refiner", "no-text-encoder"],
)
def test_other_files_refused(tmp_path: Path, shapes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        detect_checkpoint_family(_fake_checkpoint(tmp_path / "x.safetensors", shapes))


@pytest.mark.parametrize(
    "content", [b"", b"not a checkpoint at all\n", b"\x80\x04\x95PK\x03\x04 pickled .ckpt", b"\xff" * 64]
)
def test_non_safetensors_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a readable .safetensors file"):
        detect_checkpoint_family(path)
    with pytest.raises(ValueError, match="is not a readable .safetensors file"):
        detect_checkpoint_family(tmp_path / "missing.safetensors")
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(content)
    with pytest.raises(ValueError, match="pickled checkpoints are not imported"):
        detect_checkpoint_family(pickled)


# ---- into the model store, and through the CLI -----------------------------------------------


def test_import_checkpoint_file(
    bentoml_home: Path, demo, demo_shapes_as_sd15, tmp_path: Path, monkeypatch, no_network
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    stored = checkpoints.import_checkpoint_file(demo["checkpoint"], "from-file", source="civitai:1")
    assert (stored.name, stored.family, stored.kind, stored.source) == ("from-file", "sd15", "pipeline", "civitai:1")
    assert (stored.path / "model_index.json").is_file()
    assert (stored.path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert model_store.list_models() == [stored]
    assert list(scratch.iterdir()) == []  # neither the converted folder nor bentoml's staging copy is left
    assert demo["checkpoint"].is_file()  # the source file is untouched
    np.testing.assert_allclose(_draw(stored.path), _draw(demo["folder"]), atol=1e-6)


def test_import_refusals_store_nothing(bentoml_home: Path, demo, demo_shapes_as_sd15, tmp_path: Path) -> None:
    lora = _fake_checkpoint(tmp_path / "lora.safetensors", {"lora_unet_x.lora_down.weight": (2, 2)})
    with pytest.raises(ValueError, match="is a LoRA"):
        checkpoints.import_checkpoint_file(lora, "lora-as-model")
    with pytest.raises(model_store.InvalidModelName):
        checkpoints.import_checkpoint_file(demo["checkpoint"], "Bad Name")
    # right names, wrong shapes: the conversion's error becomes a ValueError naming the file
    mismatched = _fake_checkpoint(tmp_path / "odd.safetensors", {**_UNET, **_attn2(768), **_CLIP_L})
    with pytest.raises(ValueError, match="odd.safetensors does not convert as an sd15 checkpoint"):
        checkpoints.import_checkpoint_file(mismatched, "odd")
    assert model_store.list_models() == []


def test_cli_imports_a_checkpoint_file(bentoml_home: Path, demo, demo_shapes_as_sd15, tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "import", str(demo["checkpoint"]), "--name", "civitai-model"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("civitai-model:")
    listed = runner.invoke(app, ["models", "list"]).stdout
    assert "sd/civitai-model" in listed and "sd15" in listed

    lora = _fake_checkpoint(tmp_path / "style.safetensors", {"lora_unet_x.lora_down.weight": (2, 2)})
    refused = runner.invoke(app, ["models", "import", str(lora), "--name", "style"])
    assert refused.exit_code == 1 and isinstance(refused.exception, SystemExit)
    assert refused.stderr.startswith("error: ") and "is a LoRA" in refused.stderr
    not_weights = tmp_path / "notes.txt"
    not_weights.write_text("hello")
    refused = runner.invoke(app, ["models", "import", str(not_weights), "--name", "notes"])
    assert refused.exit_code == 1 and "is not a readable .safetensors file" in refused.stderr
