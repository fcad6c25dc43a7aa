"""Train the demo model from scratch on procedural shapes, on a CPU, reproducibly.

Two stages, as Stable Diffusion was made: an autoencoder that squeezes 64x64 pictures into
8x8x4 latents, then a text-conditioned UNet that denoises those latents. The text encoder is
CLIP-shaped but frozen and random (see `build_demo_architecture`): its job is only to give
each word a distinct vector. The recipe (sizes, learning rates, min-SNR weighting, EMA) was
measured to draw the asked colours on a 2-core CPU in well under an hour.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from alice.demo_training import shapes
from alice.engine.demo import build_demo_architecture

log = logging.getLogger("alice.demo_training")


@dataclass(frozen=True)
class TrainingPlan:
    seed: int = 0
    images: int = 20_000
    vae_steps: int = 600
    vae_batch: int = 32
    unet_steps: int = 3_200
    unet_batch: int = 64
    # Share of captions left empty, so classifier-free guidance has an unconditional model.
    empty_caption_share: float = 0.1
    # Extra loss weight on pixels near an edge: a shape's corners are a few pixels of 4,096, and
    # without it the autoencoder rounds them off (a square or triangle comes back a blob).
    vae_edge_weight: float = 4.0
    vae_learning_rate: float = 1e-3
    unet_learning_rate: float = 6e-4
    # Weight of a second denoiser loss, on the guided prediction: the empty caption's plus w times
    # (the caption's minus the empty caption's), w drawn from 1 to 8, must also give the noise.
    # Without it guidance at the service's 7.5 pushes a square's corners out into a four-pointed
    # star, which reads as a circle: the empty caption predicts the rounder average of all shapes,
    # and guidance magnifies the difference. Costs a second UNet call on half of each batch.
    guided_loss_weight: float = 0.0


def _as_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], as diffusers' VAE expects."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _near_an_edge(batch: torch.Tensor) -> torch.Tensor:
    """1 where a pixel differs from its 5x5 neighbourhood's mean (within 2 px of an edge), else 0."""
    blurred = F.avg_pool2d(batch, 5, stride=1, padding=2, count_include_pad=False)
    return ((batch - blurred).abs().amax(dim=1, keepdim=True) > 0.05).float()


def train_autoencoder(vae, pixels: np.ndarray, plan: TrainingPlan, generator: torch.Generator, progress: bool) -> float:
    """Fit the VAE to the pictures; returns the last PSNR in dB, measured on a fixed batch."""
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=plan.vae_learning_rate, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, 100, plan.vae_steps)
    bar = tqdm(range(plan.vae_steps), desc="autoencoder", disable=not progress, unit="step")
    for _ in bar:
        batch = _as_tensor(pixels[torch.randint(len(pixels), (plan.vae_batch,), generator=generator).numpy()])
        posterior = vae.encode(batch).latent_dist
        decoded = vae.decode(posterior.sample(generator)).sample
        # L1 beside MSE keeps edges crisp; the KL term only stops latents drifting far off.
        error = (decoded - batch) ** 2 + 0.5 * (decoded - batch).abs()
        weight = 1 + plan.vae_edge_weight * _near_an_edge(batch)
        loss = (weight * error).mean() / weight.mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    vae.eval().requires_grad_(False)
    return autoencoder_psnr(vae, pixels)


@torch.no_grad()
def autoencode(vae, pixels: np.ndarray) -> torch.Tensor:
    """The pictures after the autoencoder's round trip (encode, decode), in [-1, 1]."""
    return vae.decode(vae.encode(_as_tensor(pixels)).latent_dist.mode()).sample.clamp(-1, 1)


def autoencoder_psnr(vae, pixels: np.ndarray) -> float:
    """How well the autoencoder gives back the first 256 pictures, in dB."""
    check = _as_tensor(pixels[:256])
    mse = F.mse_loss((autoencode(vae, pixels[:256]) + 1) / 2, (check + 1) / 2).item()
    return 10 * float(np.log10(1 / max(mse, 1e-10)))


@torch.no_grad()
def encode_latents(vae, pixels: np.ndarray) -> torch.Tensor:
    """Latents of every picture, scaled to unit spread; sets the VAE's `scaling_factor`."""
    latents = torch.cat([vae.encode(_as_tensor(pixels[i : i + 256])).latent_dist.mode() for i in range(0, len(pixels), 256)])
    scaling = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scaling)
    return latents * scaling


@torch.no_grad()
def encode_captions(
    pipe: StableDiffusionPipeline, captions: list[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The frozen text encoder's output for each distinct caption, each picture's index into it,
    and the output for the empty caption (the unconditional input of guidance).

    Tokenized exactly as the pipeline tokenizes a prompt, so training sees what sampling sees.
    """
    distinct = sorted(set(captions) | {""})
    position = {caption: i for i, caption in enumerate(distinct)}
    ids = pipe.tokenizer(
        distinct, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    states = torch.cat([pipe.text_encoder(ids[i : i + 512])[0] for i in range(0, len(ids), 512)])
    return states, torch.tensor([position[caption] for caption in captions]), states[position[""]]


def train_denoiser(
    unet, scheduler_config, latents, states, caption_index, empty, plan, generator, progress,
    checkpoint=None, checkpoint_every: int = 0,
) -> float:
    """Fit the UNet to predict the noise; returns the last smoothed loss. Leaves EMA weights in `unet`.

    `checkpoint(step)` is called every `checkpoint_every` steps with the EMA weights in
    `unet`, to save them; training goes on with its own weights afterwards.
    """
    noise_schedule = DDPMScheduler.from_config(scheduler_config)
    alphas = noise_schedule.alphas_cumprod
    snr = alphas / (1 - alphas)
    unet.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=plan.unet_learning_rate, weight_decay=1e-2)
    schedule = get_cosine_schedule_with_warmup(optimizer, 250, plan.unet_steps)
    ema = EMAModel(unet.parameters(), decay=0.998)
    steps = noise_schedule.config.num_train_timesteps
    batch = plan.unet_batch
    smoothed = None
    bar = tqdm(range(plan.unet_steps), desc="denoiser", disable=not progress, unit="step")
    for step in bar:
        pick = torch.randint(len(latents), (batch,), generator=generator)
        clean = latents[pick]
        condition = states[caption_index[pick]].clone()
        dropped = torch.rand(batch, generator=generator) < plan.empty_caption_share
        condition[dropped] = empty
        # Timesteps spread evenly over the batch: every batch sees easy and hard noise levels.
        t = ((torch.arange(batch) + torch.rand(batch, generator=generator)) * steps / batch).long().clamp(max=steps - 1)
        noise = torch.randn(clean.shape, generator=generator)
        noisy = noise_schedule.add_noise(clean, noise, t)
        predicted = unet(noisy, t, encoder_hidden_states=condition).sample
        # Min-SNR-5 weighting: nearly clean steps stop dominating, training converges faster.
        weight = snr[t].clamp(max=5.0) / snr[t]
        denoising = (weight * ((predicted - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        loss = denoising
        if plan.guided_loss_weight:
            loss = denoising + plan.guided_loss_weight * _guided_loss(
                unet, predicted, noise, noisy, t, empty, weight, ~dropped, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema.step(unet.parameters())
        smoothed = denoising.item() if smoothed is None else 0.98 * smoothed + 0.02 * denoising.item()
        bar.set_postfix(loss=f"{smoothed:.4f}", refresh=False)
        if checkpoint and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < plan.unet_steps:
            ema.store(unet.parameters())
            ema.copy_to(unet.parameters())
            checkpoint(step + 1)
            ema.restore(unet.parameters())
    ema.copy_to(unet.parameters())
    unet.eval().requires_grad_(False)
    return float(smoothed or 0.0)


def _guided_loss(unet, predicted, noise, noisy, t, empty, weight, captioned, generator) -> torch.Tensor:
    """The guided prediction's error on the first half of the batch (its captioned pictures),
    at a guidance scale drawn from 1 to 8 each; divided by the scale, so high scales, whose error
    is the difference magnified, do not drown the rest (divided by its square, the loss was too
    weak to straighten a square's sides: measured on the held-out medium squares)."""
    half = len(predicted) // 2
    unconditional = unet(noisy[:half], t[:half], encoder_hidden_states=empty.expand(half, -1, -1)).sample
    scale = 1 + 7 * torch.rand(half, generator=generator)
    guided = unconditional + scale.view(-1, 1, 1, 1) * (predicted[:half] - unconditional)
    error = weight[:half] * ((guided - noise[:half]) ** 2).mean(dim=(1, 2, 3)) / scale
    keep = captioned[:half]
    return error[keep].mean() if keep.any() else error.sum() * 0


def _save(pipe: StableDiffusionPipeline, folder: Path) -> None:
    # Half precision halves the committed files; the service loads them in its own dtype.
    copy.deepcopy(pipe).to(torch.float16).save_pretrained(str(folder), safe_serialization=True)


def start_from(pipe: StableDiffusionPipeline, folder: Path) -> None:
    """Load a trained demo's weights into `pipe`, built for the current vocabulary, to train on.

    Words the earlier model knew keep their embeddings (matched by token, since ids move when
    words are added), so its text encoder gives the same states for every caption it saw;
    new words keep `pipe`'s random ones.
    """
    earlier = StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32)
    pipe.unet.load_state_dict(earlier.unet.state_dict())
    pipe.vae.load_state_dict(earlier.vae.state_dict())
    earlier_rows = earlier.text_encoder.get_input_embeddings().weight.detach()
    text = {key: value for key, value in earlier.text_encoder.state_dict().items() if "token_embedding" not in key}
    earlier_ids = earlier.tokenizer.get_vocab()
    rows = pipe.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for token, index in pipe.tokenizer.get_vocab().items():
            if token in earlier_ids:
                rows[index] = earlier_rows[earlier_ids[token]]
    missing, unexpected = pipe.text_encoder.load_state_dict(text, strict=False)
    assert [key for key in missing if "token_embedding" not in key] == [] and not unexpected, (missing, unexpected)


def train_demo(
    output: Path,
    plan: TrainingPlan = TrainingPlan(),
    progress: bool = True,
    checkpoint_every: int = 0,
    earlier: Path | None = None,
) -> dict:
    """Train the demo model and save it to `output` as a diffusers folder (fp16 safetensors).

    From scratch, or with `earlier` from that trained demo's weights (both stages go on from
    them: the autoencoder, then the UNet on the latents of the autoencoder so trained).

    With `checkpoint_every`, the UNet's EMA weights so far are also saved every that many steps
    as whole pipelines in `output/checkpoints/step-N`, to evaluate while training goes on.
    Returns what was measured; it is also written to `output/training.json`.
    """
    started, cpu_started = time.monotonic(), time.process_time()
    random.seed(plan.seed)
    torch.manual_seed(plan.seed)
    generator = torch.Generator().manual_seed(plan.seed)
    pipe = build_demo_architecture(plan.seed, whole_words=shapes.WORDS)
    if earlier is not None:
        start_from(pipe, earlier)
    log.info("drawing %d training pictures", plan.images)
    _, captions, pixels = shapes.training_scenes(plan.images, plan.seed)

    # A stage of 0 steps keeps the earlier model's: the two stages can run as two commands.
    if plan.vae_steps:
        psnr = train_autoencoder(pipe.vae, pixels, plan, generator, progress)
    else:
        psnr = autoencoder_psnr(pipe.vae.eval(), pixels)
    log.info("autoencoder: %.1f dB PSNR", psnr)
    loss = None
    if plan.unet_steps:
        latents = encode_latents(pipe.vae, pixels)
        states, caption_index, empty = encode_captions(pipe, captions)
        loss = train_denoiser(
            pipe.unet, pipe.scheduler.config, latents, states, caption_index, empty, plan, generator, progress,
            checkpoint=lambda step: _save(pipe, output / "checkpoints" / f"step-{step}"), checkpoint_every=checkpoint_every,
        )
    _save(pipe, output)
    report = {
        "plan": asdict(plan),
        # What training went on from: that model's own report, so the whole recipe is here.
        **({"started_from": json.loads((earlier / "training.json").read_text())} if earlier else {}),
        "autoencoder_psnr_db": round(psnr, 2),
        "denoiser_loss": None if loss is None else round(loss, 5),
        "distinct_captions": len(set(captions)),
        "minutes": round((time.monotonic() - started) / 60, 1),
        # Process CPU time, all threads together: on a shared machine the wall clock also counts
        # the time others had the cores.
        "cpu_minutes": round((time.process_time() - cpu_started) / 60, 1),
        "torch_threads": torch.get_num_threads(),
    }
    (output / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
