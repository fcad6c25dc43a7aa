"""The Bento and the image build context, made once for the deploy tests.

`bentoml build` runs for real, offline (any index or hub request would fail), in a private
temporary BentoML home holding only the demo model: the user's store and the other tests'
stores are never touched. BentoML's stores are process-wide singletons, so they are pointed
at the private home only while building, and restored before any test runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from harness.environment import environment, private_bentoml_home

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# Environment that makes any download attempt fail rather than quietly succeed.
OFFLINE = {
    "PIP_NO_INDEX": "1",
    "UV_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "BENTOML_DO_NOT_TRACK": "true",
}


@dataclass(frozen=True)
class ImageBuild:
    home: Path  # the private BENTOML_HOME the Bento was built in
    bento: Path  # the Bento's folder in that home
    context: Path  # the build context `bentoml containerize` hands to the builder
    dockerfile: str  # the Dockerfile it generates for BuildKit (docker, buildx)
    dockerfile_without_buildkit: str  # ... and for podman, buildah, DOCKER_BUILDKIT=0
    bento_tag: str
    model_tag: str  # the demo model's tag in the store (name:version)

    @property
    def bento_info(self) -> dict:
        return yaml.safe_load((self.bento / "bento.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def image_build(tmp_path_factory: pytest.TempPathFactory) -> ImageBuild:
    return build_image(tmp_path_factory.mktemp("image"), ROOT / "bentofile.yaml")


@pytest.fixture(scope="session")
def image_build_cu126(tmp_path_factory: pytest.TempPathFactory) -> ImageBuild:
    """The flavour for GPUs older than Turing (bentofile-cu126.yaml)."""
    return build_image(tmp_path_factory.mktemp("image-cu126"), ROOT / "bentofile-cu126.yaml")


def build_image(base: Path, bentofile_path: Path) -> ImageBuild:
    import bentoml
    from bentoml._internal.bento import BentoStore
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.container import construct_containerfile

    from alice.models import checkpoints

    home, out, scratch = base / "bentoml", base / "out", base / "tmp"
    for folder in (home / "bentos", home / "tmp", out, scratch):
        folder.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        stack.enter_context(private_bentoml_home(home))
        stack.enter_context(BentoMLContainer.tmp_bento_store_dir.patch(str(home / "tmp")))
        stack.enter_context(environment(OFFLINE))
        stack.enter_context(_temp_folder(scratch))
        model = checkpoints.ensure_demo_model()
        # As `bentoml build` from the repository root: the bentofile's paths are relative to it.
        with contextlib.chdir(ROOT):
            bento = bentoml.bentos.build_bentofile(
                str(bentofile_path), build_ctx=str(ROOT), _bento_store=BentoStore(str(home / "bentos"))
            )
        # The call `bentoml containerize` makes for a BuildKit backend such as docker. It must
        # run from a folder above its temp build context: bentoml#5566 resolves the Bento's
        # dockerfile_template against the current directory.
        with contextlib.chdir(scratch), construct_containerfile(bento, enable_buildkit=True) as (context, _):
            shutil.copytree(context, out / "context", symlinks=True)
        # BentoML's podman and buildah backends (no BuildKit) get it without cache mounts.
        with contextlib.chdir(scratch), construct_containerfile(bento, enable_buildkit=False) as (context, _):
            without_buildkit = (Path(context) / "env" / "docker" / "Dockerfile").read_text(encoding="utf-8")
    context = out / "context"
    return ImageBuild(
        home=home,
        bento=Path(bento.path),
        context=context,
        dockerfile=(context / "env" / "docker" / "Dockerfile").read_text(encoding="utf-8"),
        dockerfile_without_buildkit=without_buildkit,
        bento_tag=str(bento.tag),
        model_tag=model.tag,
    )


@contextlib.contextmanager
def _temp_folder(folder: Path) -> Iterator[None]:
    """tempfile's folder (where containerize makes its build context), for a while."""
    saved = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = saved


def bentofile(name: str = "bentofile.yaml") -> dict:
    return yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))


def bentofile_env(name: str) -> str:
    """A value the bentofile sets in the image's environment."""
    return next(env["value"] for env in bentofile()["envs"] if env["name"] == name)


def known_env_names() -> set[str]:
    """Every environment variable ALICE reads as a setting (an unknown ALICE_* one stops it)."""
    from alice.config import CONFIG_FILE_ENV, Settings, env_name

    return {env_name(field) for field in Settings.model_fields} | {CONFIG_FILE_ENV}


def assert_real_settings(names: set[str], where: str) -> None:
    """ALICE refuses to start on an unknown ALICE_* variable: deployment files must not have one."""
    alice_names = {name for name in names if name.startswith("ALICE_") or name == "CIVITAI_API_KEY"}
    unknown = alice_names - known_env_names()
    assert not unknown, f"{where} sets {sorted(unknown)}, which ALICE does not know"


def find_tool(name: str) -> str | None:
    """A command on PATH or beside this Python (`make test` runs .venv/bin/python unactivated)."""
    return shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))


def pins(path: Path) -> dict[str, str]:
    """Normalised package name -> pinned version; every line must be an exact pin."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, separator, version = line.partition("==")
        assert separator and version, f"{path.name}: '{line}' is not an exact pin"
        found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found
