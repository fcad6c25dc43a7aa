"""Transformer-only files (GGUF, a fine-tune's .safetensors) imported onto a stored model's parts.

The files are written here from the tiny FLUX.1 transformer with its diffusers names (the BFL
converter hard-codes FLUX.1's real widths, so a tiny BFL-named file cannot load), quantized
with the `gguf` package as files in the wild are. Images are 64x64, 4 steps, fp32 on the CPU.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from alice.cli import app
from alice.engine.pipelines import choose_placement, load_pipeline
from alice.models import checkpoints
from alice.models import store as model_store
from alice.models.transformer_imports import import_transformer_file

WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"
# Measured on this CPU with the tiny FLUX.1 dev (seed 0, "a red circle"): Q8_0 64.5 dB, Q4_0 39.1 dB
# from the unquantized model's image. The bounds leave ~10 dB: a broken dequantization (wrong
# block layout, wrong scales) draws noise, under 15 dB.
PSNR_BOUNDS = {"Q8_0": 55.0, "Q4_0": 30.0}


def write_gguf(weights: Path, out: Path, quant: str) -> Path:
    """A GGUF of a diffusers-named state dict as city96's files are laid out: 2-D weights
    quantized where rows split into whole blocks, biases and norms kept in F32."""
    import gguf

    qtype = gguf.GGMLQuantizationType[quant]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    writer = gguf.GGUFWriter(str(out), arch="flux")
    for name, tensor in load_file(str(weights)).items():
        array = tensor.float().numpy()
        if array.ndim == 2 and array.shape[-1] % block == 0:
            quantized = gguf.quants.quantize(array, qtype)
            writer.add_tensor(name, quantized, raw_shape=quantized.shape, raw_dtype=qtype)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def draw(folder: Path) -> np.ndarray:
    """The image the service's loader draws for a fixed prompt and seed."""
    pipe = load_pipeline(folder, choose_placement("cpu"))
    image = pipe("a red circle", num_inference_steps=4, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    return np.asarray(image, dtype=np.float64)


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(np.mean((reference - image) ** 2), 1e-20)))


@pytest.fixture(scope="module")
def flux(tiny_family: Callable[[str], Path]) -> Path:
    return tiny_family("flux")  # FLUX.1 dev (a guidance embedder)


@pytest.fixture(scope="module")
def reference(flux: Path) -> np.ndarray:
    return draw(flux)


@pytest.fixture
def base(bentoml_home: Path, flux: Path) -> model_store.StoredModel:
    return checkpoints.import_pipeline_folder(flux, "flux-base")


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0"])
def test_gguf_on_a_stored_base_draws_close_to_the_unquantized_model(
    base: model_store.StoredModel, flux: Path, reference: np.ndarray, tmp_path: Path, quant: str
) -> None:
    file = write_gguf(flux / WEIGHTS, tmp_path / f"flux1-dev-{quant}.gguf", quant)
    stored = import_transformer_file(file, "quantized", base="flux-base")
    assert (stored.kind, stored.family) == ("pipeline", "flux1-dev")
    assert sorted(p.name for p in (stored.path / "transformer").iterdir()) == ["config.json", file.name]
    assert (stored.path / "transformer" / file.name).read_bytes() == file.read_bytes()  # the file as given

    pipe = load_pipeline(stored.path, choose_placement("cpu"))
    quantized = {type(p).__name__ for p in pipe.transformer.parameters()}
    assert "GGUFParameter" in quantized  # it stays quantized in memory
    del pipe
    measured = psnr(reference, draw(stored.path))
    assert measured > PSNR_BOUNDS[quant], f"{quant}: {measured:.1f} dB"


def test_transformer_safetensors_draws_as_the_base_and_shares_its_files(
    base: model_store.StoredModel, flux: Path, reference: np.ndarray, tmp_path: Path
) -> None:
    file = tmp_path / "my-finetune.safetensors"
    shutil.copyfile(flux / WEIGHTS, file)  # diffusers-named, as some fine-tunes are shared
    stored = checkpoints.import_checkpoint_file(file, "finetune", base="flux-base")
    assert stored.family == "flux1-dev" and (stored.path / "transformer" / file.name).is_file()
    assert not (stored.path / WEIGHTS).exists()
    assert np.array_equal(draw(stored.path), reference)  # bit for bit

    # Every other part is the base's own file, hard-linked: one copy on disk, whichever is deleted.
    shared = [p.relative_to(base.path) for p in base.path.rglob("*")
              if p.is_file() and p.name != "model.yaml" and p.parts[-2] != "transformer"]
    assert any(str(p).startswith("text_encoder_2/") for p in shared) and len(shared) > 10
    for relative in shared:
        assert (stored.path / relative).stat().st_ino == (base.path / relative).stat().st_ino, relative
    model_store.delete_model("flux-base")
    assert np.array_equal(draw(model_store.get_model("finetune").path), reference)


def test_dev_file_on_a_schnell_base_is_a_dev_model(
    bentoml_home: Path, tiny_family: Callable[[str], Path], flux: Path, tmp_path: Path
) -> None:
    schnell = checkpoints.import_pipeline_folder(tiny_family("flux-schnell"), "schnell")
    file = write_gguf(flux / WEIGHTS, tmp_path / "dev.gguf", "Q8_0")
    stored = import_transformer_file(file, "dev-on-schnell", base="schnell")
    assert (schnell.family, stored.family) == ("flux1-schnell", "flux1-dev")  # the file decides
    config = json.loads((stored.path / "transformer" / "config.json").read_text())
    assert config["guidance_embeds"] is True
    scheduler = json.loads((stored.path / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["use_dynamic_shifting"] is True and scheduler["shift"] == 3.0  # dev's, not schnell's
    pipe = load_pipeline(stored.path, choose_placement("cpu"))
    assert pipe.transformer.config.guidance_embeds


def test_a_base_without_transformer_is_stored_apart_and_serves_as_base(
    bentoml_home: Path, flux: Path, reference: np.ndarray, tmp_path: Path
) -> None:
    parts = tmp_path / "flux-parts"
    shutil.copytree(flux, parts)
    (parts / WEIGHTS).unlink()  # a repo fetched without its transformer keeps the config
    assert (parts / "vae").is_dir() and not (parts / WEIGHTS).exists()
    stored_base = checkpoints.import_pipeline_folder(parts, "flux-parts")
    assert (stored_base.kind, stored_base.family) == ("base", "flux1-dev")

    file = tmp_path / "transformer.safetensors"
    shutil.copyfile(flux / WEIGHTS, file)
    stored = import_transformer_file(file, "on-parts", base="flux-parts")
    assert np.array_equal(draw(stored.path), reference)
    listed = runner.invoke(app, ["models", "list"]).stdout
    assert "base/flux1-dev" in listed and "sd/on-parts" in listed


runner = CliRunner()


def test_cli_imports_a_gguf_with_base(base: model_store.StoredModel, flux: Path, tmp_path: Path) -> None:
    file = write_gguf(flux / WEIGHTS, tmp_path / "flux-q4.gguf", "Q4_0")
    result = runner.invoke(app, ["models", "import", str(file), "--name", "q4", "--base", "flux-base"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("q4:")
    assert model_store.get_model("q4").family == "flux1-dev"


def test_cli_without_base_says_which_stored_models_would_do(
    base: model_store.StoredModel, flux: Path, tmp_path: Path
) -> None:
    file = write_gguf(flux / WEIGHTS, tmp_path / "flux-q8.gguf", "Q8_0")
    result = runner.invoke(app, ["models", "import", str(file), "--name", "q8"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    message = " ".join(result.stderr.split())  # the terminal wraps it
    assert "flux-q8.gguf holds only a flux1-dev transformer" in message
    assert "--base <a stored flux1-dev or flux1-schnell model>" in message
    assert "stored flux1-dev or flux1-schnell models: flux-base" in message


def test_a_base_of_another_family_is_refused(
    base: model_store.StoredModel, tiny_family: Callable[[str], Path], flux: Path
) -> None:
    checkpoints.import_pipeline_folder(tiny_family("chroma"), "chroma")
    with pytest.raises(ValueError, match="holds a flux1-dev transformer, but chroma is a chroma model"):
        import_transformer_file(flux / WEIGHTS, "mixed", base="chroma")
    with pytest.raises(ValueError, match="no such model"):
        import_transformer_file(flux / WEIGHTS, "mixed", base="nowhere")
    assert [m.name for m in model_store.list_models()] == ["chroma", "flux-base"]


def test_files_that_are_no_transformer_are_refused(base: model_store.StoredModel, flux: Path, tmp_path: Path) -> None:
    vae = flux / "vae" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(ValueError, match="holds no transformer of a model family ALICE knows"):
        import_transformer_file(vae, "vae", base="flux-base")
    lora = tmp_path / "lora.safetensors"
    save_file({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 32)}, str(lora))
    with pytest.raises(ValueError, match="is a LoRA"):
        import_transformer_file(lora, "lora", base="flux-base")


@pytest.mark.parametrize("suffix", [".gguf", ".safetensors"])
def test_truncated_files_are_refused(base: model_store.StoredModel, flux: Path, tmp_path: Path, suffix: str) -> None:
    whole = tmp_path / f"whole{suffix}"
    if suffix == ".gguf":
        write_gguf(flux / WEIGHTS, whole, "Q8_0")
    else:
        shutil.copyfile(flux / WEIGHTS, whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])  # a download cut short
    with pytest.raises(ValueError, match="not a readable"):
        import_transformer_file(cut, "cut", base="flux-base")
    assert [m.name for m in model_store.list_models()] == ["flux-base"]


def test_a_gguf_of_a_quantization_diffusers_cannot_compute_is_refused(
    base: model_store.StoredModel, tmp_path: Path
) -> None:
    import gguf

    qtype = gguf.GGMLQuantizationType.IQ2_XXS  # llama.cpp's; diffusers has no dequantization for it
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    file = tmp_path / "iq2.gguf"
    writer = gguf.GGUFWriter(str(file), arch="flux")
    writer.add_tensor("single_transformer_blocks.0.proj_out.weight", np.zeros((32, size), np.uint8),
                      raw_shape=(32, size), raw_dtype=qtype)
    writer.add_tensor("time_text_embed.text_embedder.linear_1.weight", np.zeros((32, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="quantized as IQ2_XXS, which diffusers cannot compute with"):
        import_transformer_file(file, "iq2", base="flux-base")


def test_a_base_without_transformer_config_takes_the_released_one(
    bentoml_home: Path, flux: Path, tmp_path: Path
) -> None:
    parts = tmp_path / "no-transformer"
    shutil.copytree(flux, parts, ignore=shutil.ignore_patterns("transformer"))
    assert checkpoints.import_pipeline_folder(parts, "bare").kind == "base"
    # The released FLUX.1 config (alice/configs/flux1-schnell) is read: the tiny file does not fit it,
    # and the import says so rather than storing a model that cannot load.
    with pytest.raises(ValueError, match="does not load as a flux1-dev transformer with bare.s config"):
        import_transformer_file(flux / WEIGHTS, "tiny-on-bare", base="bare")
    assert [m.name for m in model_store.list_models()] == ["bare"]
