/* Facts about a job record (`/v1/jobs`) that the Generate and Queue pages share. */

export const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

/** A job's parameters as a form fill; LoRAs named in the prompt stay only in the prompt. */
export function jobSettings(job) {
  const p = job.parameters || {};
  const tagged = new Set(Array.from(String(p.prompt || "").matchAll(/<lora:([^:>]+)/g), (m) => m[1]));
  const loras = (p.loras || []).map(([name, scale]) => ({ name, scale })).filter((l) => !tagged.has(l.name));
  return {
    model: job.model, prompt: p.prompt, negative_prompt: p.negative_prompt, width: p.width, height: p.height,
    steps: p.steps, guidance_scale: p.guidance_scale, scheduler: p.scheduler, seed: p.seed,
    num_images: p.num_images, strength: p.strength, clip_skip: p.clip_skip, loras,
    hires_scale: p.hires_scale, hires_width: p.hires_width, hires_height: p.hires_height,
    hires_steps: p.hires_steps, hires_strength: p.hires_strength,
    hires_upscaler: p.hires_upscaler, output_format: p.output_format, output_compression: p.output_compression,
  };
}
