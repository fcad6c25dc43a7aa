"""The `alice` command line on a private model store: in process, and once as `python -m alice`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from alice.cli import app
from alice.engine.demo import DEMO_MODEL_NAME, save_demo_pipeline
from alice.engine.spec import GenerationSpec
from alice.engine.scheduler_names import DEFAULT_SCHEDULER

runner = CliRunner()


def test_demo_then_list(bentoml_home: Path) -> None:
    first = runner.invoke(app, ["models", "demo"])
    assert first.exit_code == 0, first.output
    tag = first.stdout.strip()
    assert tag.startswith(f"{DEMO_MODEL_NAME}:")
    again = runner.invoke(app, ["models", "demo"])
    assert again.stdout.strip() == tag  # idempotent: no second version

    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    header, row = listed.stdout.strip().splitlines()
    assert header.split() == ["ID", "TYPE", "SIZE", "CREATED"]
    id_, kind, size, unit = row.split()[:4]
    assert (id_, kind, unit) == (f"sd/{DEMO_MODEL_NAME}", "sd15", "MB") and float(size) > 0


def test_list_empty_store(bentoml_home: Path) -> None:
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0 and "no models" in result.stdout


def test_import_saved_demo_folder(bentoml_home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    save_demo_pipeline(folder)
    result = runner.invoke(app, ["models", "import", str(folder), "--name", "mine"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("mine:")
    assert "sd/mine" in runner.invoke(app, ["models", "list"]).stdout


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda tmp: [str(tmp), "--name", "empty"], "not a diffusers pipeline folder"),
        (lambda tmp: [str(tmp / "nowhere"), "--name", "nowhere"], "not a diffusers pipeline folder"),
        (lambda tmp: [str(tmp), "--name", "../escape"], "invalid model name '../escape'"),
    ],
)
def test_bad_import_exits_1_with_message(bentoml_home: Path, tmp_path: Path, make_args, message: str) -> None:
    result = runner.invoke(app, ["models", "import", *make_args(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an escaped exception
    assert "no models" in runner.invoke(app, ["models", "list"]).stdout


def test_delete(bentoml_home: Path) -> None:
    runner.invoke(app, ["models", "demo"])
    assert runner.invoke(app, ["models", "delete", f"sd/{DEMO_MODEL_NAME}"]).exit_code == 0
    missing = runner.invoke(app, ["models", "delete", DEMO_MODEL_NAME])
    assert missing.exit_code == 1 and "is not in the model store" in missing.stderr


def test_python_dash_m_uses_bentoml_home_and_logs_to_stderr(bentoml_home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    save_demo_pipeline(folder)
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home)}
    done = subprocess.run(
        [sys.executable, "-m", "alice", "models", "import", str(folder), "--name", "from-cli"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("from-cli:")
    assert "INFO alice.models: imported" in done.stderr
    assert "torchvision" not in done.stderr and "Loading weights" not in done.stderr
    assert (bentoml_home / "models" / "from-cli").is_dir()


def test_evaluate_demo_draws_with_the_services_defaults_and_limits() -> None:
    """The command's steps, guidance and scheduler are the drawing settings' own declaration
    (alice/engine/spec.py): no second copy of them."""
    command = typer.main.get_command(app).commands["models"].commands["evaluate-demo"]  # type: ignore[attr-defined]
    options = {param.name: param for param in command.params}
    steps, guidance = options["steps"], options["guidance"]
    assert (steps.default, steps.min, steps.max) == (GenerationSpec.steps, 1, 150)
    assert (guidance.default, guidance.min, guidance.max) == (GenerationSpec.guidance_scale, 0, 30)
    assert options["scheduler"].default == DEFAULT_SCHEDULER
    refused = runner.invoke(app, ["models", "evaluate-demo", "--steps", "151"])
    assert refused.exit_code == 2 and "less than or equal to 150" in refused.output
