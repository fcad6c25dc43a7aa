"""The `alice` command line (also `python -m alice`).

Sub-command groups are separate typer apps so `models search|download` and `serve` can be
added beside these without touching them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

# Importing diffusers makes transformers warn three times that torchvision is missing (it
# falls back to PIL image processors, which SD does not even use); keep the CLI readable.
# The filter must be in place before diffusers is imported, hence before the model store and its imports.
logging.getLogger("transformers.utils.import_utils").addFilter(
    lambda record: "requires torchvision" not in record.getMessage()
)

from transformers.utils import logging as transformers_logging  # noqa: E402

from alice.engine.preview_decoders import families_sharing_latents, is_tiny_autoencoder_folder  # noqa: E402
from alice.engine.spec import setting, setting_limit  # noqa: E402
from alice.models import checkpoints  # noqa: E402
from alice.models import store as model_store  # noqa: E402
from alice.logs import configure_logging  # noqa: E402


def _setting_option(name: str, **options: Any) -> Any:
    """A typer option for a drawing setting, with its default and range as GenerationSpec
    declares them: the service's, with no copy here to drift."""
    return typer.Option(setting(name).default, min=setting_limit(name, "ge"), max=setting_limit(name, "le"), **options)


app = typer.Typer(help="ALICE: self-hosted Stable Diffusion.", no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="Models in the Bento model store.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("demo")
def models_demo() -> None:
    """Build the embedded demo model (offline) and put it in the model store, once."""
    model = checkpoints.ensure_demo_model()
    typer.echo(model.tag)


@models_app.command("train-demo")
def models_train_demo(
    output: Path = typer.Option(Path("demo-model"), help="Folder to write the trained diffusers pipeline to."),
    seed: int = typer.Option(0, help="Seed for the data, the initial weights and the training order."),
    vae_steps: int = typer.Option(
        None, min=0, help="Autoencoder training steps (default: the shipped recipe; 0 keeps --earlier's)."),
    vae_batch: int = typer.Option(None, min=1, help="Autoencoder batch size (default: the shipped recipe)."),
    unet_steps: int = typer.Option(
        None, min=0, help="Denoiser training steps (default: the shipped recipe; 0 keeps --earlier's)."),
    vae_learning_rate: float = typer.Option(
        None, min=0, help="Autoencoder peak learning rate (default: the shipped recipe)."),
    unet_learning_rate: float = typer.Option(None, min=0, help="Denoiser peak learning rate (default: the shipped recipe)."),
    guided_loss_weight: float = typer.Option(
        None, min=0, help="Weight of the denoiser's loss on the guided prediction (default: the shipped recipe)."),
    images: int = typer.Option(None, min=64, help="Pictures in the training set (default: the shipped recipe)."),
    checkpoint_every: int = typer.Option(0, min=0, help="Also save the model every N denoiser steps, in OUTPUT/checkpoints."),
    earlier: Path = typer.Option(None, help="Go on training from this trained demo model's weights, not from scratch."),
) -> None:
    """Train the demo model on procedural shapes, from scratch or on from an earlier one.

    The shipped weights in alice/demo_model/ came from this command (its training.json has the
    plans; README's "The demo model" the commands); copy a new result there and run
    `alice models demo` to serve it. On a busy machine OMP_NUM_THREADS=1 trains fastest.
    """
    from dataclasses import replace

    from alice.demo_training.train import TrainingPlan, train_demo

    if earlier is None and 0 in (vae_steps, unet_steps):
        raise typer.BadParameter("0 steps keeps a stage of an earlier model: name it with --earlier")
    chosen = {"seed": seed, "vae_steps": vae_steps, "vae_batch": vae_batch, "unet_steps": unet_steps, "images": images,
              "vae_learning_rate": vae_learning_rate, "unet_learning_rate": unet_learning_rate,
              "guided_loss_weight": guided_loss_weight}
    plan = replace(TrainingPlan(), **{key: value for key, value in chosen.items() if value is not None})
    report = train_demo(output, plan, checkpoint_every=checkpoint_every, earlier=earlier)
    typer.echo(f"{output}: autoencoder {report['autoencoder_psnr_db']} dB, "
               f"denoiser loss {report['denoiser_loss']}, {report['minutes']} min")


@models_app.command("evaluate-demo")
def models_evaluate_demo(
    model: Path = typer.Option(None, help="A demo-shaped diffusers folder (default: the shipped demo model)."),
    steps: int = _setting_option("steps"),
    guidance: float = _setting_option("guidance_scale"),
    scheduler: str = _setting_option("scheduler", help="Sampler name."),
    seeds: int = typer.Option(1, min=1, help="Images per held-out prompt (seeds 0, 1, ...)."),
    save_to: Path = typer.Option(None, help="Also write each image here, named by its prompt."),
    autoencoder: bool = typer.Option(
        False, help="Instead, judge the shapes after the autoencoder's round trip alone (the model's ceiling)."),
) -> None:
    """Generate for held-out colour/shape/background prompts and judge the pixels."""
    from alice.demo_training.evaluate import autoencoder_round_trip, evaluate
    from alice.engine.demo import DEMO_MODEL_DIR
    from alice.engine.scheduler_names import canonical_scheduler_name

    if autoencoder:
        shares = autoencoder_round_trip(model or DEMO_MODEL_DIR)
        typer.echo("shape after the autoencoder alone: " + ", ".join(f"{size} {share:.1%}" for size, share in shares.items()))
        return

    result = evaluate(
        model or DEMO_MODEL_DIR,
        steps=steps,
        guidance_scale=guidance,
        scheduler=canonical_scheduler_name(scheduler),
        seeds=tuple(range(seeds)),
        save_to=save_to,
    )
    for scene, prompt, verdict in result.results:
        mark = "ok " if verdict.colours_right(scene) else "BAD"
        typer.echo(f"{mark} {prompt!r}: drew {verdict}")
    typer.echo(result.summary())


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
    """`sd15` for a pipeline (`sd15 inpainting` for an inpainting checkpoint); other kinds say so:
    `lora/sdxl`, `preview/sd15,sd2`."""
    if model.kind == model_store.PREVIEW:  # one decoder previews every family sharing its latents
        return f"preview/{','.join(families_sharing_latents(model.family))}"
    if model.kind != model_store.PIPELINE:
        return f"{model.kind}/{model.family}"
    return f"{model.family} inpainting" if model.inpainting else model.family


@models_app.command("import")
def models_import(
    path: Path = typer.Argument(
        ..., help="A diffusers pipeline folder (SD 1.x, 2.x, XL, 3; FLUX.1; Chroma; Z-Image; FLUX.2 Klein; "
                  "Qwen-Image), a single-file .safetensors checkpoint (SD 1.x, 2.x, SDXL; all-in-one SD3, "
                  "FLUX.1, Chroma, Z-Image), a transformer-only .safetensors, .gguf or NF4 folder (with --base), "
                  "a T5 encoder .gguf or NF4/8-bit folder (with --base), a textual-inversion "
                  "embedding (A1111's .pt or .safetensors), or a tiny autoencoder folder for live previews "
                  "(diffusers' AutoencoderTiny: TAESD, TAESDXL, TAESD3, TAEF1)."
    ),
    name: str = typer.Option(..., "--name", help="The model's id in ALICE (lowercase letters, digits, . _ -)."),
    lora: bool = typer.Option(False, "--lora", help="The file is a LoRA, not a checkpoint."),
    base: str = typer.Option(
        None, "--base",
        help="For a transformer-only file (.gguf, a FLUX fine-tune) or folder (NF4, saved by diffusers): the "
             "stored model of its family whose text encoders, tokenizers and VAE it uses; for a T5 encoder "
             "(.gguf, or a folder saved by transformers): the stored model whose T5 it replaces. For an "
             "all-in-one file: the stored model whose configs it converts with, and whose parts it lacks "
             "(or holds in float8) it uses.",
    ),
    family: str = typer.Option(
        None, "--family",
        help="For a tiny autoencoder folder: the family whose latents it decodes (sd15, sdxl, sd3, flux1-dev, ...); "
             "by default told by its released name in the folder's or --name's (taesd, taesdxl, taesd3, taef1).",
    ),
) -> None:
    """Import a diffusers folder, a single-file checkpoint (converted offline), a transformer-only
    file onto a stored model's other parts, a LoRA, or a preview decoder into the model store."""
    try:
        if lora:
            model = checkpoints.import_lora_file(path, name)
        elif path.is_file():
            model = checkpoints.import_checkpoint_file(path, name, base=base)
        elif base is not None:  # a transformer or T5 folder (NF4, 8-bit) onto a stored base
            model = checkpoints.import_folder_onto_base(path, name, base=base)
        elif family is not None or is_tiny_autoencoder_folder(path):
            model = checkpoints.import_preview_decoder_folder(path, name, family=family)
        else:
            model = checkpoints.import_pipeline_folder(path, name)
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


search_app = typer.Typer(help="Search Hugging Face or CivitAI.", no_args_is_help=True)
download_app = typer.Typer(help="Download a model and import it into the store, with a progress bar.",
                           no_args_is_help=True)
models_app.add_typer(search_app, name="search")
models_app.add_typer(download_app, name="download")


@search_app.command("huggingface")
def search_huggingface(query: str = typer.Argument(""), limit: int = typer.Option(20, min=1, max=100)) -> None:
    """Text-to-image diffusers repos, most downloaded first."""
    from alice.downloads import huggingface

    for model in _or_exit(lambda: huggingface.search(query, limit, "downloads")):
        typer.echo(f"{model['id']}  downloads={model['downloads']}  likes={model['likes']}")


@search_app.command("civitai")
def search_civitai(
    query: str = typer.Argument(""),
    types: list[str] = typer.Option([], "--type", help="Checkpoint or LORA; repeat for both."),
    limit: int = typer.Option(20, min=1, max=100),
    nsfw: bool = typer.Option(False, "--nsfw"),
) -> None:
    """CivitAI models (browse when no query is given)."""
    from alice.downloads.console import manager_for

    manager = manager_for(_settings())
    for model in _or_exit(lambda: manager.civitai.search(query, types, "Highest Rated", nsfw, limit, 1)):
        versions = ", ".join(f"{v['id']} ({v['baseModel']})" for v in model["versions"][:3])
        typer.echo(f"{model['id']}  {model['type']}  {model['name']}  versions: {versions}")


_BASE_HELP = ("For a transformer-only file (a FLUX fine-tune, a .gguf): the stored model of its family whose "
              "text encoders, tokenizers and VAE it uses.")


@download_app.command("huggingface")
def download_huggingface(
    repo: str = typer.Argument(..., help="owner/name"),
    filename: str | None = typer.Option(None, help="One .safetensors or .gguf file of the repo instead of the pipeline."),
    revision: str = typer.Option("main"),
    without_transformer: bool = typer.Option(
        False, "--without-transformer",
        help="Everything but the transformer's weights (text encoders, tokenizers, VAE), stored as a base "
             "named <repo>-base for transformer-only files.",
    ),
    base: str = typer.Option(None, "--base", help=_BASE_HELP),
) -> None:
    """A diffusers repo (what its pipeline loads, safetensors, fp16 where offered) or one file of it.
    A gated repo (FLUX.1-dev, SD 3.5) needs its licence accepted on its page and HF_TOKEN set."""
    if without_transformer and filename:
        typer.echo("error: --without-transformer is for a whole repo, not --filename", err=True)
        raise typer.Exit(2)
    _download(lambda manager: manager.huggingface_download(repo, filename, revision,
                                                           without_transformer=without_transformer, base=base))


@download_app.command("civitai")
def download_civitai(
    model_id: int = typer.Argument(...),
    version: int | None = typer.Option(None, help="Model version id (default: the newest)."),
    file: int | None = typer.Option(None, help="File id (default: the version's primary .safetensors or .gguf)."),
    lora: bool = typer.Option(False, "--lora", help="It is a LoRA."),
    base: str = typer.Option(None, "--base", help=_BASE_HELP),
) -> None:
    """A CivitAI model version's file (checkpoint or LoRA); CIVITAI_API_KEY is sent if set."""
    _download(lambda manager: manager.civitai_download(model_id, version, file, "LORA" if lora else "Checkpoint",
                                                       base=base))


@download_app.command("url")
def download_url(
    url: str = typer.Argument(...),
    filename: str | None = typer.Option(None),
    lora: bool = typer.Option(False, "--lora"),
) -> None:
    """Any direct .safetensors URL."""
    _download(lambda manager: manager.url_download(url, filename, lora))


def _download(make_task) -> None:
    from alice.downloads.console import manager_for, run_with_progress

    manager = manager_for(_settings())
    try:
        task = run_with_progress(manager, _or_exit(lambda: make_task(manager)))
    finally:
        manager.stop()
    if task.status != "completed":
        typer.echo(f"error: download {task.status}: {task.error or ''}", err=True)
        raise typer.Exit(1)
    typer.echo(task.model)


tls_app = typer.Typer(help="HTTPS for ALICE on a home network.", no_args_is_help=True)
app.add_typer(tls_app, name="tls")


@tls_app.command("init")
def tls_init(
    folder: Path = typer.Option(None, "--dir", help="Where to write the files (default: DATA_DIR/tls)."),
    hosts: list[str] = typer.Option(
        None, "--host", help="A name or address clients use for this box (repeat; default: its host names and addresses)."
    ),
) -> None:
    """Make a local certificate authority and a server certificate for this box.

    Install the authority's ca.pem once on each client (the Mac running SAM); ALICE serves
    with server.pem and server.key. Existing keys are never overwritten.
    """
    from alice.http import tls

    folder = folder or _settings().data_dir / "tls"
    try:
        made = tls.init_local_authority(folder, hosts or tls.default_names())
    except (tls.TlsFilesExist, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    authority = "made" if made.ca_created else "reused"
    typer.echo(f"""Certificate authority ({authority}): {made.ca_cert}
  SHA-256 fingerprint: {made.fingerprint()}
  Its key {made.ca_key} can vouch for any name: keep it on this box only.
Server certificate for {", ".join(made.names)}:
  {made.server_cert}
  {made.server_key}

Serve HTTPS with (environment, alice.env, or the YAML config):
  ALICE_TLS_CERTFILE={made.server_cert}
  ALICE_TLS_KEYFILE={made.server_key}

On the Mac that runs SAM, trust the authority once:
  1. Copy {made.ca_cert} to the Mac (AirDrop, scp), e.g. to ~/Downloads/alice-ca.pem.
  2. Check its fingerprint matches the one above:
       openssl x509 -noout -fingerprint -sha256 -in ~/Downloads/alice-ca.pem
  3. Trust it for the whole system:
       sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain ~/Downloads/alice-ca.pem
     (or open it in Keychain Access, then Get Info > Trust > "Always Trust").
  4. In SAM, use https://{made.names[0]}:PORT/v1 as ALICE's base URL.
Other clients: Python's httpx/openai read SSL_CERT_FILE={made.ca_cert}; curl takes --cacert.""")


def _settings():
    from alice.config import ConfigError, load_settings

    try:
        return load_settings()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _or_exit(call):
    from alice.downloads.civitai import CivitAIError
    from alice.downloads.huggingface import HubError

    try:
        return call()
    except (CivitAIError, HubError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def main() -> None:
    """Console-script entry point: INFO logs from `alice.*` go to stderr, results to stdout."""
    configure_logging("INFO")
    transformers_logging.disable_progress_bar()  # its "Loading weights" bars are noise here
    app(prog_name="alice")
