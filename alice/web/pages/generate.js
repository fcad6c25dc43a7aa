/* Generate: the form on show, a job sent and followed to its images, and the ways other
 * pages put settings, a model or an input image into the form. */
import { api, imageUrl } from "../lib/api.js";
import { effectiveDefaults } from "../lib/defaults.js";
import { $, el, fillKv, fillSelect, setProgress, setText } from "../lib/dom.js";
import { fmtSeconds } from "../lib/format.js";
import { FINISHED, jobSettings } from "../lib/jobs.js";
import { toast } from "../lib/overlays.js";
import { currentPage } from "../lib/router.js";
import { applyLimits, loadModels, loadSettings, loadStore, modelOptions } from "../lib/server.js";
import {
  addLoraRow, applyToForm, checkForm, chooseModel, followModel, readForm, setInputImage, wireForm,
} from "./generate-form.js";

let ready = false; // the form holds the defaults (and the user's changes since)
let pending = null; // what to do once the form is filled (a model chosen on the Models page)
let runningJob = null; // the id of the job this page waits for

// The form's inputs that hold a setting with limits, by the setting's name.
const FORM_SETTINGS = {
  "gen-prompt": "prompt", "gen-negative": "negative_prompt", "gen-width": "width", "gen-height": "height",
  "gen-count": "num_images", "gen-steps": "steps", "gen-guidance": "guidance_scale", "gen-seed": "seed",
  "gen-strength": "strength", "gen-clip-skip": "clip_skip", "gen-hires-scale": "hires_scale",
  "gen-hires-steps": "hires_steps", "gen-hires-strength": "hires_strength", "gen-compression": "output_compression",
  "gen-hires-width": "hires_width", "gen-hires-height": "hires_height",
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export const generate = {
  title: "Generate",
  wire() {
    wireForm();
    $("gen-form").addEventListener("submit", onGenerate);
    $("gen-cancel").addEventListener("click", onCancelGeneration);
    $("gen-prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("gen-form").requestSubmit();
    });
  },
  async enter() {
    await Promise.all([loadSettings(), loadModels(), loadStore()]);
    const defaults = effectiveDefaults();
    fillSelect($("gen-model"), modelOptions(), ready ? undefined : defaults.model);
    applyLimits(FORM_SETTINGS);
    if (!ready) {
      applyToForm(defaults, { keepPrompt: true }); // fits the form to the model as well
      ready = true;
    } else {
      followModel(); // the store may have changed since: the model's facts and LoRAs with it
    }
    if (pending) {
      const action = pending;
      pending = null;
      action();
    }
  },
};

/** The user's defaults changed: the form starts from them when next shown. */
export function defaultsChanged() {
  ready = false;
}

/** Fill the form with these settings (a job's, a gallery image's) and show it. */
export function reuse(settings) {
  const apply = () => {
    applyToForm(settings);
    window.scrollTo(0, 0);
    toast("Settings copied into the form.");
  };
  if (currentPage() === "generate" && ready) apply();
  else openFormThen(apply);
}

/** Choose a model of the store in the form: a pipeline as the model, a LoRA as a new row. */
export function useModel(model) {
  openFormThen(model.kind === "lora"
    ? () => addLoraRow(model.name)
    : () => chooseModel(model.name));
}

export function useAsInput(name) {
  setInputImage(`/images/${name}`, imageUrl(name));
  location.hash = "#/generate";
  toast("Image set as the img2img input.");
}

function openFormThen(action) {
  pending = action; // after the Generate page has filled its lists and defaults
  location.hash = "#/generate";
}

function setBusy(busy) {
  $("gen-submit").disabled = busy;
  setText($("gen-submit"), busy ? "Generating…" : "Generate");
  $("gen-cancel").hidden = !busy;
}

function showGenProgress(job) {
  $("gen-progress").hidden = false;
  const bar = $("gen-progress-bar");
  if (!job) {
    setProgress(bar, 0, { indeterminate: true });
    setText($("gen-progress-text"), "Sending…");
    return;
  }
  if (job.state === "queued") {
    setProgress(bar, 0, { indeterminate: true });
    setText($("gen-progress-text"), "Waiting in the queue…");
  } else if (job.state === "running") {
    setProgress(bar, job.progress);
    setText($("gen-progress-text"), job.step
      ? `Step ${job.step} of ${job.total_steps} (${Math.round(job.progress * 100)}%)`
      : "Loading the model…");
  } else {
    setProgress(bar, job.state === "succeeded" ? 1 : job.progress, {
      done: job.state === "succeeded", failed: job.state !== "succeeded",
    });
    const took = job.finished && job.created ? ` in ${fmtSeconds(job.finished - job.created)}` : "";
    setText($("gen-progress-text"), {
      succeeded: `Done${took}.`, cancelled: "Cancelled.", failed: "Failed.",
    }[job.state]);
  }
}

/** The newest live preview of the job (`/v1/jobs/{id}`'s `preview`, a PNG in base64), or none. */
function showPreview(preview) {
  const img = $("gen-preview");
  if (preview && preview.b64_json) {
    img.src = `data:image/png;base64,${preview.b64_json}`;
    img.title = `After step ${preview.step} of ${preview.total_steps}`;
    img.hidden = false;
  } else if (!preview) {
    img.hidden = true;
    img.removeAttribute("src");
  }
}

async function onGenerate(event) {
  event.preventDefault();
  const error = $("gen-error");
  setText(error, "");
  const body = readForm();
  const problem = checkForm(body);
  if (problem) {
    setText(error, problem);
    return;
  }
  setBusy(true);
  showGenProgress(null);
  try {
    let job = await api("/v1/jobs", { method: "POST", body });
    runningJob = job.id;
    while (!FINISHED.has(job.state)) {
      showGenProgress(job);
      showPreview(job.preview);
      await sleep(300);
      job = await api(`/v1/jobs/${encodeURIComponent(job.id)}`);
    }
    showGenProgress(job);
    showPreview(null); // the finished images take its place
    if (job.state === "succeeded") renderResult(job);
    else if (job.state === "failed") setText(error, job.error || "The generation failed.");
  } catch (err) {
    setText(error, err.message);
    $("gen-progress").hidden = true;
  } finally {
    runningJob = null;
    setBusy(false);
  }
}

async function onCancelGeneration() {
  if (!runningJob) return;
  try {
    await api(`/v1/jobs/${encodeURIComponent(runningJob)}`, { method: "DELETE" });
  } catch (err) {
    toast(err.message, true);
  }
}

function renderResult(job) {
  const p = job.parameters || {};
  const figures = job.images.map((name, index) => el("figure", {},
    el("a", { href: imageUrl(name), target: "_blank", rel: "noopener" },
      el("img", { src: imageUrl(name), alt: `Generated image ${index + 1}`, class: "result-image" })),
    el("figcaption", { class: "actions" },
      el("span", { class: "muted", text: `seed ${p.seed + index}` }),
      el("button", { type: "button", class: "small", text: "Use as input", onclick: () => useAsInput(name) }))));
  const loras = (p.loras || []).map(([name, scale]) => `${name} ${scale}`).join(", ");
  const params = fillKv(el("dl", { class: "kv", id: "gen-params" }), [
    ["Prompt", p.prompt, "text"],
    ["Negative prompt", p.negative_prompt, "text"],
    ["Model", job.model],
    ["Size", `${p.width}x${p.height}`],
    ["Steps", String(p.steps)],
    ["Guidance", String(p.guidance_scale)],
    ["Scheduler", p.scheduler],
    ["Seed", job.images.length > 1 ? `${p.seed} … ${p.seed + job.images.length - 1}` : String(p.seed)],
    ["LoRAs", loras],
    ["Strength", p.init_image ? String(p.strength) : ""],
    ["Edit", p.mask_image ? "inpainted: only the masked area redrawn" : ""],
    ["Time", job.started && job.finished ? fmtSeconds(job.finished - job.started) : ""],
  ]);
  $("gen-result").replaceChildren(
    el("div", { class: "result-images" }, figures),
    params,
    el("div", { class: "actions" },
      el("button", { type: "button", id: "gen-reuse", text: "Reuse these settings", onclick: () => reuse(jobSettings(job)) })));
}
