"""Tiny autoencoders in the model store: imported from a folder as TAESD ships one, listed apart
from the models, and loaded beside a model of their family so its live previews come at full size."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from alice.cli import app
from alice.engine import preview_decoders
from alice.engine.previews import TINY_AUTOENCODER_ATTRIBUTE, Preview
from harness.tiny_pipelines import build_tiny_autoencoder

runner = CliRunner()


def test_the_family_is_named_or_read_from_the_released_name_and_checked_against_the_channels(tmp_path):
    four = build_tiny_autoencoder(tmp_path / "decoder")
    sixteen = build_tiny_autoencoder(tmp_path / "other", latent_channels=16)
    assert preview_decoders.is_tiny_autoencoder_folder(four)
    assert preview_decoders.preview_family(four, None, ("madebyollin/taesdxl",)) == "sdxl"
    assert preview_decoders.preview_family(four, None, ("my-taesd",)) == "sd15"
    assert preview_decoders.preview_family(sixteen, None, ("taef1",)) == "flux1-dev"
    assert preview_decoders.preview_family(sixteen, None, ("taesd3-fp16",)) == "sd3"
    assert preview_decoders.preview_family(four, "sdxl", ("taesd",)) == "sdxl"  # --family wins over the name
    with pytest.raises(ValueError, match="fits several families.*sd15, sd2, sdxl.*--family"):
        preview_decoders.preview_family(four, None, ("decoder",))
    with pytest.raises(ValueError, match="reads 4 latent channels; flux1-dev models have 16"):
        preview_decoders.preview_family(four, "flux1-dev", ())
    with pytest.raises(ValueError, match="qwen-image models have no previews"):
        preview_decoders.preview_family(sixteen, "qwen-image", ())
    assert preview_decoders.families_sharing_latents("chroma") == ["flux1-dev", "flux1-schnell", "chroma", "zimage"]


def test_cli_imports_and_lists_preview_decoders_apart_from_models(bentoml_home: Path, tmp_path: Path) -> None:
    from alice.models import store

    taesd = build_tiny_autoencoder(tmp_path / "taesd")
    flux = build_tiny_autoencoder(tmp_path / "decoder16", latent_channels=16)
    imported = runner.invoke(app, ["models", "import", str(taesd), "--name", "taesd"])
    assert imported.exit_code == 0 and imported.stdout.startswith("taesd:"), imported.output
    refused = runner.invoke(app, ["models", "import", str(flux), "--name", "preview16"])
    assert refused.exit_code == 1 and "--family" in refused.output  # 16 channels: SD3's or FLUX.1's?
    named = runner.invoke(app, ["models", "import", str(flux), "--name", "preview16", "--family", "chroma"])
    assert named.exit_code == 0, named.output
    wrong = runner.invoke(app, ["models", "import", str(taesd), "--name", "x", "--family", "sd3"])
    assert wrong.exit_code == 1 and "reads 4 latent channels; sd3 models have 16" in wrong.output

    rows = {line.split()[0]: line.split()[1] for line in runner.invoke(app, ["models", "list"]).stdout.splitlines()[1:]}
    assert rows == {"sd/preview16": "preview/flux1-dev,flux1-schnell,chroma,zimage", "sd/taesd": "preview/sd15,sd2"}
    assert store.preview_decoder_for("sd2").name == "taesd"
    assert store.preview_decoder_for("zimage").name == "preview16"
    assert store.preview_decoder_for("sdxl") is None


def test_a_stored_decoder_previews_the_model_of_its_family_at_full_size(bentoml_home: Path, tmp_path: Path) -> None:
    """Through the runtime's engine on the demo model (SD 1.5-shaped): with TAESD in the store its
    previews are the image's 64x64, decoded by the stored autoencoder; without, the linear map's
    8x8 of the latents, as before."""
    from diffusers import AutoencoderTiny

    from alice.config import Settings
    from alice.engine.demo import DEMO_MODEL_NAME
    from alice.engine.generate import BatchEntry
    from alice.engine.spec import GenerationSpec
    from alice.models import checkpoints, store
    from alice.serving.runtime import Runtime

    checkpoints.ensure_demo_model()
    checkpoints.import_pipeline_folder(build_tiny_autoencoder(tmp_path / "taesd"), "taesd")
    runtime = Runtime(Settings(device="cpu", data_dir=tmp_path / "data"))
    spec = GenerationSpec(prompt="a red circle", seed=3, width=64, height=64, steps=2)

    def previews() -> list[Preview]:
        made: list[Preview] = []
        runtime.pipelines.generate(DEMO_MODEL_NAME, [BatchEntry(spec, previews=2, on_preview=made.append)],
                                   loras=(), max_images=1, should_stop=lambda: False)
        return made

    loaded = runtime.pipelines.get(DEMO_MODEL_NAME)
    tiny = getattr(loaded.pipe, TINY_AUTOENCODER_ATTRIBUTE)
    assert isinstance(tiny, AutoencoderTiny) and tiny.config.latent_channels == 4
    assert getattr(loaded.image_to_image, TINY_AUTOENCODER_ATTRIBUTE) is tiny  # img2img previews with it too
    decoded = []
    original = tiny.decode
    tiny.decode = lambda *args, **kwargs: decoded.append(1) or original(*args, **kwargs)
    assert [p.image.size for p in previews()] == [(64, 64), (64, 64)]
    assert len(decoded) == 2  # one decode of the tiny autoencoder per preview

    store.delete_model("taesd")
    runtime.pipelines.drop(DEMO_MODEL_NAME)
    assert not hasattr(runtime.pipelines.get(DEMO_MODEL_NAME).pipe, TINY_AUTOENCODER_ATTRIBUTE)
    assert [p.image.size for p in previews()] == [(8, 8), (8, 8)]  # the latents' size: the linear map
