"""The `alice` command line (also `python -m alice`).

Sub-command groups are separate typer apps so `models search|download` and `serve` can be
added beside these without touching them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

# Importing diffusers makes transformers warn three times that torchvision is missing (it
# falls back to PIL image processors, which SD does not even use); keep the CLI readable.
# The filter must be in place before diffusers is imported, hence before model_store.
logging.getLogger("transformers.utils.import_utils").addFilter(
    lambda record: "requires torchvision" not in record.getMessage()
)

from transformers.utils import logging as transformers_logging  # noqa: E402

from alice import model_store  # noqa: E402
from alice.logs import configure_logging  # noqa: E402

app = typer.Typer(help="ALICE: self-hosted Stable Diffusion.", no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="Models in the Bento model store.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("demo")
def models_demo() -> None:
    """Build the embedded demo model (offline) and put it in the model store, once."""
    model = model_store.ensure_demo_model()
    typer.echo(model.tag)


@models_app.command("list")
def models_list() -> None:
    """Show ALICE's models in the store."""
    models = model_store.list_models()
    if not models:
        typer.echo("no models; run `alice models demo` or `alice models import`")
        return
    rows = [("ID", "TYPE", "SIZE", "CREATED")] + [
        (f"sd/{m.name}", _model_type(m), f"{m.size_bytes / 1e6:.1f} MB", f"{m.created:%Y-%m-%d %H:%M} UTC")
        for m in models
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _model_type(model: model_store.StoredModel) -> str:
    """`sd15` for a pipeline; other kinds (LoRAs, later) say so: `lora/sdxl`."""
    return model.family if model.kind == model_store.PIPELINE else f"{model.kind}/{model.family}"


@models_app.command("import")
def models_import(
    path: Path = typer.Argument(..., help="A diffusers pipeline folder (model_index.json and components)."),
    name: str = typer.Option(..., "--name", help="The model's id in ALICE (lowercase letters, digits, . _ -)."),
) -> None:
    """Import a diffusers folder into the model store, after checking it loads."""
    try:
        model = model_store.import_pipeline_folder(path, name)
    except ValueError as exc:  # InvalidModelName is one too
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(model.tag)


@models_app.command("delete")
def models_delete(name: str = typer.Argument(..., help="The model's id, with or without `sd/`.")) -> None:
    """Remove a model (every version) from the store."""
    try:
        model_store.delete_model(name.removeprefix("sd/"))
    except (model_store.ModelNotFound, model_store.InvalidModelName) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def main() -> None:
    """Console-script entry point: INFO logs from `alice.*` go to stderr, results to stdout."""
    configure_logging("INFO")
    transformers_logging.disable_progress_bar()  # its "Loading weights" bars are noise here
    app(prog_name="alice")
