"""`bentoml build` on this machine, offline: what the Bento holds."""

from __future__ import annotations

from alice.config import Settings
from tests.deploy.conftest import DEPLOY, ROOT, ImageBuild, bentofile
from tests.deploy.conftest import pins as _pins

IMAGE_LOCK = DEPLOY / "requirements-image.txt"


def test_the_bento_includes_the_default_model_at_the_stored_version(image_build: ImageBuild) -> None:
    default_model = Settings.model_fields["default_model"].default
    assert image_build.model_tag.split(":")[0] == default_model
    info = image_build.bento_info
    assert [model["tag"] for model in info["models"]] == [image_build.model_tag]
    assert info["name"] == "alice" and info["service"] == "service:Alice"


def test_the_bento_holds_the_service_code_and_nothing_else(image_build: ImageBuild) -> None:
    src = image_build.bento / "src"
    expected = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "alice").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    held = {path.relative_to(src).as_posix() for path in src.rglob("*") if path.is_file()}
    assert expected <= held, f"missing from the Bento: {sorted(expected - held)}"
    assert {"service.py", "pyproject.toml", "bentofile.yaml", "deploy/seed-models.sh", "deploy/healthcheck.py"} <= held
    strays = sorted(p for p in held if p.startswith(("tests/", "bench/", "harness/", ".venv/")) or p.endswith(".pyc"))
    assert not strays


def test_the_bento_is_built_from_the_lock_in_the_repository(image_build: ImageBuild) -> None:
    python = image_build.bento_info["python"]
    assert python["lock_packages"] is False and python["requirements_txt"] == "./deploy/requirements-image.txt"
    env_python = image_build.bento / "env" / "python"
    # With locking on, BentoML would have asked an index for requirements.lock.txt.
    assert not (env_python / "requirements.lock.txt").exists()
    assert _pins(IMAGE_LOCK).items() <= _pins(env_python / "requirements.txt").items()


def test_the_image_lock_agrees_with_requirements_txt() -> None:
    """deploy/requirements-image.txt = requirements.txt's pins + torch's CUDA wheels, all exact."""
    service, image = _pins(ROOT / "requirements.txt"), _pins(IMAGE_LOCK)
    differ = {name: (version, image.get(name)) for name, version in service.items() if image.get(name) != version}
    assert not differ, (
        f"deploy/requirements-image.txt is out of date ({differ}); regenerate it with the command at its top"
    )
    # One CUDA story: the CUDA 13.0 runtime that torch 2.13.0's wheel names, nothing else.
    assert image["torch"] == "2.13.0" and image["cuda-toolkit"].startswith("13.0.")
    assert image["nvidia-cudnn-cu13"] and image["triton"]
    assert not [name for name in image if name.endswith("-cu12")]


def test_the_bento_sets_the_data_folder_and_uses_the_dockerfile_template(image_build: ImageBuild) -> None:
    docker = image_build.bento_info["docker"]
    assert docker["env"] == {"ALICE_DATA_DIR": "/home/bentoml/data"}
    assert docker["cuda_version"] is None  # CUDA comes from torch's wheels, not the base image
    assert docker["dockerfile_template"] == bentofile()["docker"]["dockerfile_template"]
    assert (image_build.bento / "env" / "docker" / "Dockerfile.template").is_file()

