"""Train the demo model from scratch on procedural shapes, on a CPU, reproducibly.

Two stages, as Stable Diffusion was made: an autoencoder that squeezes 64x64 pictures into
8x8x4 latents, then a text-conditioned UNet that denoises those latents. The text encoder is
CLIP-shaped but frozen and random (see `build_demo_architecture`): its job is only to give
each word a distinct vector. The recipe (sizes, learning rates, min-SNR weighting, EMA) was
measured to draw the asked colours on a 2-core CPU in well under an hour.
"""

from __future__ import annotations

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


def _as_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], as diffusers' VAE expects."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_autoencoder(vae, pixels: np.ndarray, plan: TrainingPlan, generator: torch.Generator, progress: bool) -> float:
    """Fit the VAE to the pictures; returns the last PSNR in dB, measured on a fixed batch."""
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, 100, plan.vae_steps)
    bar = tqdm(range(plan.vae_steps), desc="autoencoder", disable=not progress, unit="step")
    for _ in bar:
        batch = _as_tensor(pixels[torch.randint(len(pixels), (plan.vae_batch,), generator=generator).numpy()])
        posterior = vae.encode(batch).latent_dist
        decoded = vae.decode(posterior.sample(generator)).sample
        # L1 beside MSE keeps edges crisp; the KL term only stops latents drifting far off.
        loss = F.mse_loss(decoded, batch) + 0.5 * F.l1_loss(decoded, batch) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        check = _as_tensor(pixels[:256])
        decoded = vae.decode(vae.encode(check).latent_dist.mode()).sample.clamp(-1, 1)
        mse = F.mse_loss((decoded + 1) / 2, (check + 1) / 2).item()
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


def train_denoiser(unet, scheduler_config, latents, states, caption_index, empty, plan, generator, progress) -> float:
    """Fit the UNet to predict the noise; returns the last smoothed loss. Leaves EMA weights in `unet`."""
    noise_schedule = DDPMScheduler.from_config(scheduler_config)
    alphas = noise_schedule.alphas_cumprod
    snr = alphas / (1 - alphas)
    unet.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=6e-4, weight_decay=1e-2)
    schedule = get_cosine_schedule_with_warmup(optimizer, 250, plan.unet_steps)
    ema = EMAModel(unet.parameters(), decay=0.998)
    steps = noise_schedule.config.num_train_timesteps
    batch = plan.unet_batch
    smoothed = None
    bar = tqdm(range(plan.unet_steps), desc="denoiser", disable=not progress, unit="step")
    for _ in bar:
        pick = torch.randint(len(latents), (batch,), generator=generator)
        clean = latents[pick]
        condition = states[caption_index[pick]].clone()
        condition[torch.rand(batch, generator=generator) < plan.empty_caption_share] = empty
        # Timesteps spread evenly over the batch: every batch sees easy and hard noise levels.
        t = ((torch.arange(batch) + torch.rand(batch, generator=generator)) * steps / batch).long().clamp(max=steps - 1)
        noise = torch.randn(clean.shape, generator=generator)
        predicted = unet(noise_schedule.add_noise(clean, noise, t), t, encoder_hidden_states=condition).sample
        # Min-SNR-5 weighting: nearly clean steps stop dominating, training converges faster.
        weight = snr[t].clamp(max=5.0) / snr[t]
        loss = (weight * ((predicted - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema.step(unet.parameters())
        smoothed = loss.item() if smoothed is None else 0.98 * smoothed + 0.02 * loss.item()
        bar.set_postfix(loss=f"{smoothed:.4f}", refresh=False)
    ema.copy_to(unet.parameters())
    unet.eval().requires_grad_(False)
    return float(smoothed or 0.0)


def train_demo(output: Path, plan: TrainingPlan = TrainingPlan(), progress: bool = True) -> dict:
    """Train the demo model and save it to `output` as a diffusers folder (fp16 safetensors).

    Returns what was measured; it is also written to `output/training.json`.
    """
    started = time.monotonic()
    random.seed(plan.seed)
    torch.manual_seed(plan.seed)
    generator = torch.Generator().manual_seed(plan.seed)
    pipe = build_demo_architecture(plan.seed, whole_words=shapes.WORDS)
    log.info("drawing %d training pictures", plan.images)
    _, captions, pixels = shapes.training_scenes(plan.images, plan.seed)

    psnr = train_autoencoder(pipe.vae, pixels, plan, generator, progress)
    log.info("autoencoder: %.1f dB PSNR", psnr)
    latents = encode_latents(pipe.vae, pixels)
    states, caption_index, empty = encode_captions(pipe, captions)
    loss = train_denoiser(
        pipe.unet, pipe.scheduler.config, latents, states, caption_index, empty, plan, generator, progress
    )

    # Half precision halves the committed files; the service loads them in its own dtype.
    pipe.to(torch.float16).save_pretrained(str(output), safe_serialization=True)
    report = {
        "plan": asdict(plan),
        "autoencoder_psnr_db": round(psnr, 2),
        "denoiser_loss": round(loss, 5),
        "distinct_captions": len(states) - 1,
        "minutes": round((time.monotonic() - started) / 60, 1),
        "torch_threads": torch.get_num_threads(),
    }
    (output / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
