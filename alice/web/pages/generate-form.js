/* The Generate form's fields: filled from settings, read into a `/v1/jobs` body, checked;
 * its LoRA rows and its img2img input image. The form follows the chosen model's family
 * (`/v1/models`' facts): its schedulers, defaults, sizes, and what it takes at all. */
import { api } from "../lib/api.js";
import { $, el, fillSelect, setText } from "../lib/dom.js";
import { loraNames, modelFacts, pipelines, serverSettings } from "../lib/server.js";
import { maskDataUri, setMaskPicture, wireMaskBrush } from "./mask-brush.js";

const MAX_INPUT_BYTES = 20 * 1024 * 1024;

// Steps, guidance and scheduler show the model's defaults until the user sets them; only a value
// the user set is sent, so the server, which knows each family's, stays the one source of defaults.
const FOLLOWING = ["gen-steps", "gen-guidance", "gen-scheduler"];

let inputImage = null; // a data URI, or "/images/<name>"

const isSet = (id) => $(id).dataset.set === "1";
function markSet(id, set) {
  if (set) $(id).dataset.set = "1";
  else delete $(id).dataset.set;
}

export function wireForm() {
  $("gen-model").addEventListener("change", followModel);
  for (const id of FOLLOWING) {
    // Emptied, a field follows the model again.
    $(id).addEventListener("input", () => markSet(id, $(id).value.trim() !== ""));
  }
  $("gen-seed-random").addEventListener("click", () => { $("gen-seed").value = ""; });
  $("gen-lora-add").addEventListener("click", () => addLoraRow());
  $("gen-image").addEventListener("change", onImageFile);
  $("gen-image-clear").addEventListener("click", () => setInputImage(null));
  $("gen-strength").addEventListener("input", updateStrength);
  updateStrength();
  wireMaskBrush();
  $("gen-form").addEventListener("dragover", (event) => event.preventDefault());
  $("gen-form").addEventListener("drop", onDroppedPng);
}

/** A PNG dropped on the form: its A1111 `parameters` text read by the server (the one reader,
 * alice/protocol/a1111_reading.py) fills the form; what it cannot honour is shown under it. */
async function onDroppedPng(event) {
  const file = event.dataTransfer && event.dataTransfer.files[0];
  if (!file) return;
  event.preventDefault();
  const notes = $("gen-dropped-notes");
  notes.hidden = false;
  if (file.size > MAX_INPUT_BYTES) {
    setText(notes, `${file.name} is over ${MAX_INPUT_BYTES / (1024 * 1024)} MB.`);
    return;
  }
  const image = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
  try {
    const read = await api("/v1/images/read-parameters", { method: "POST", body: { image } });
    applyToForm(read.settings);
    setText(notes, read.not_honoured.length
      ? `Filled from ${file.name}; not honoured: ${read.not_honoured.join("; ")}`
      : `Filled from ${file.name}.`);
  } catch (error) {
    setText(notes, `${file.name}: ${error.message}`);
  }
}

/** How the chosen model draws: its facts, or for one the server has no facts for (a model not
 * in the store, an older server) the server's defaults with every setting applying, as before. */
function chosenFacts() {
  const facts = modelFacts($("gen-model").value);
  if (facts) return facts;
  const defaults = (serverSettings && serverSettings.defaults) || {};
  const limits = (serverSettings && serverSettings.limits) || {};
  return {
    family: "", native_size: null, default_steps: defaults.steps, default_guidance_scale: defaults.guidance_scale,
    default_scheduler: defaults.scheduler, schedulers: (serverSettings && serverSettings.schedulers) || [],
    guidance: "cfg", negative_prompt: true, clip_skip: true, image_to_image: true, hires_fix: true, loras: true,
    size_multiple: limits.side_multiple || 8,
  };
}

const familyModels = (facts) => (facts.family ? `${facts.family} models` : "This model");

/** Make the form fit the chosen model: its scheduler list (the user's choice kept where it
 * applies, else the model's default), its defaults in the fields the user has not set, its size
 * grid, and the fields of settings its family does not take disabled, each with why. */
export function followModel() {
  const facts = chosenFacts();
  const scheduler = $("gen-scheduler");
  const keep = isSet("gen-scheduler") && facts.schedulers.includes(scheduler.value);
  fillSelect(scheduler, facts.schedulers.map((name) => [name, name]), keep ? scheduler.value : facts.default_scheduler);
  markSet("gen-scheduler", keep);
  for (const [id, value] of [["gen-steps", facts.default_steps], ["gen-guidance", facts.default_guidance_scale]]) {
    const input = $(id);
    input.placeholder = value === undefined || value === null ? "" : String(value);
    if (!isSet(id)) input.value = input.placeholder;
  }
  for (const id of ["gen-width", "gen-height"]) {
    $(id).step = String(facts.size_multiple);
    $(id).placeholder = facts.native_size ? String(facts.native_size) : "model's"; // empty: the native size
  }
  const models = familyModels(facts);
  $("gen-negative").disabled = !facts.negative_prompt;
  hint("gen-negative-hint", facts.negative_prompt ? "" : `${models} take no negative prompt.`);
  hint("gen-guidance-hint", facts.guidance === "none" ? `${models} ignore guidance.` : "");
  $("gen-clip-skip-row").hidden = !facts.clip_skip;
  // An older server's facts say nothing of the hires fix: offer it, and let the server answer.
  $("gen-hires-set").disabled = facts.hires_fix === false;
  hint("gen-hires-hint", facts.hires_fix === false ? `${models} take no hires fix: it is not sent.` : "");
  $("gen-image-set").disabled = !facts.image_to_image;
  hint("gen-image-hint", facts.image_to_image ? "" : `${models} draw no img2img: the input image is not sent.`);
  refreshLoraChoices();
}

function hint(id, text) {
  setText($(id), text);
  $(id).hidden = !text;
}

/** Choose a model in the form, and fit the form to it. */
export function chooseModel(name) {
  $("gen-model").value = name;
  followModel();
}

export function refreshLoraChoices() {
  const names = loraNames();
  const { loras } = chosenFacts();
  $("gen-lora-set").disabled = !loras;
  $("gen-lora-add").disabled = names.length === 0;
  setText($("gen-lora-hint"), !loras ? `${familyModels(chosenFacts())} take no LoRAs: the rows are not sent.`
    : names.length ? "" : "No LoRAs in the model store yet: download one on the Models page.");
  for (const select of $("gen-loras").querySelectorAll("select")) {
    fillSelect(select, names.map((name) => [name, name]));
  }
}

export function addLoraRow(name, scale = 0.8) {
  const names = loraNames();
  if (name && !names.includes(name)) names.push(name);
  const select = el("select", { "aria-label": "LoRA" });
  fillSelect(select, names.map((n) => [n, n]), name || names[0]);
  const row = el("div", { class: "lora-row" },
    select,
    el("input", { type: "number", step: "0.05", min: "-5", max: "5", value: String(scale), "aria-label": "LoRA scale" }),
    el("button", { type: "button", class: "small", text: "Remove", onclick: () => row.remove() }));
  $("gen-loras").append(row);
}

export function setInputImage(value, previewUrl) {
  inputImage = value;
  $("gen-image-preview").hidden = !value;
  $("gen-strength-row").hidden = !value;
  setMaskPicture(value ? previewUrl || value : null);
  if (value) $("gen-image-thumb").src = previewUrl || value;
  else {
    $("gen-image-thumb").removeAttribute("src");
    $("gen-image").value = "";
  }
}

function updateStrength() {
  setText($("gen-strength-value"), Number($("gen-strength").value).toFixed(2));
}

function onImageFile() {
  const file = $("gen-image").files[0];
  if (!file) return;
  if (file.size > MAX_INPUT_BYTES) {
    setText($("gen-error"), "The input image is over 20 MB.");
    setInputImage(null);
    return;
  }
  const reader = new FileReader();
  reader.onload = () => setInputImage(String(reader.result));
  reader.onerror = () => setText($("gen-error"), "Could not read that file.");
  reader.readAsDataURL(file);
}

/** Fill the Generate form from settings (a job's parameters, a gallery image, defaults). */
export function applyToForm(values, { keepPrompt = false } = {}) {
  const set = (id, value) => { if (value !== undefined && value !== null) $(id).value = String(value); };
  if (values.model) {
    if (!pipelines.some((m) => m.name === values.model)) {
      $("gen-model").append(el("option", { value: values.model, text: `${values.model} (not in the store)` }));
    }
    $("gen-model").value = values.model;
  }
  if (!keepPrompt) {
    set("gen-prompt", values.prompt || "");
    set("gen-seed", values.seed);
  }
  set("gen-negative", values.negative_prompt);
  // No size = the model's native size, chosen by the server: leave the field empty.
  $("gen-width").value = values.width ? String(values.width) : "";
  $("gen-height").value = values.height ? String(values.height) : "";
  $("gen-clip-skip").value = values.clip_skip ? String(values.clip_skip) : "";
  $("gen-hires-scale").value = values.hires_scale ? String(values.hires_scale) : "";
  $("gen-hires-steps").value = values.hires_steps ? String(values.hires_steps) : "";
  $("gen-hires-width").value = values.hires_width ? String(values.hires_width) : "";
  $("gen-hires-height").value = values.hires_height ? String(values.hires_height) : "";
  set("gen-hires-strength", values.hires_strength);
  set("gen-hires-upscaler", values.hires_upscaler);
  set("gen-format", values.output_format || "png");
  $("gen-compression").value = values.output_compression ? String(values.output_compression) : "";
  // Steps and guidance given are the user's; the others follow the model chosen.
  for (const [id, name] of [["gen-steps", "steps"], ["gen-guidance", "guidance_scale"]]) {
    const given = values[name] !== undefined && values[name] !== null;
    if (given) $(id).value = String(values[name]);
    markSet(id, given);
  }
  markSet("gen-scheduler", false);
  followModel();
  set("gen-count", values.num_images);
  set("gen-strength", values.strength);
  if (values.scheduler && Array.from($("gen-scheduler").options).some((o) => o.value === values.scheduler)) {
    $("gen-scheduler").value = values.scheduler;
    markSet("gen-scheduler", true);
  }
  if (Array.isArray(values.loras)) {
    $("gen-loras").replaceChildren();
    for (const lora of values.loras) addLoraRow(lora.name, lora.scale);
  }
  updateStrength();
}

/** The form as a `/v1/jobs` request body. */
export function readForm() {
  const number = (id) => Number($(id).value);
  const optional = (id) => ($(id).value.trim() === "" ? undefined : Number($(id).value));
  // Undefined is left out of the JSON: the server applies the model's default.
  const own = (id, value) => (isSet(id) ? value : undefined);
  const facts = chosenFacts();
  const body = {
    prompt: $("gen-prompt").value,
    negative_prompt: facts.negative_prompt ? $("gen-negative").value : undefined,
    model: $("gen-model").value || undefined,
    width: optional("gen-width"),
    height: optional("gen-height"),
    steps: own("gen-steps", optional("gen-steps")),
    guidance_scale: own("gen-guidance", optional("gen-guidance")),
    scheduler: own("gen-scheduler", $("gen-scheduler").value || undefined),
    clip_skip: facts.clip_skip ? optional("gen-clip-skip") : undefined,
    num_images: number("gen-count") || 1,
    previews: previewsWanted(),
    output_format: $("gen-format").value,
  };
  // PNG ignores the quality: sent only where it applies.
  if (body.output_format !== "png") body.output_compression = optional("gen-compression");
  const seed = $("gen-seed").value.trim();
  if (seed !== "") body.seed = Number(seed);
  const loras = Array.from($("gen-loras").children).map((row) => ({
    name: row.querySelector("select").value, scale: Number(row.querySelector("input").value),
  })).filter((lora) => lora.name);
  if (loras.length && facts.loras) body.loras = loras;
  // A hires size sets the scale itself (the server derives it): the scale is sent only without one.
  const hiresSize = { hires_width: optional("gen-hires-width"), hires_height: optional("gen-hires-height") };
  const sized = hiresSize.hires_width !== undefined || hiresSize.hires_height !== undefined;
  const hiresScale = facts.hires_fix === false ? undefined : sized ? null : optional("gen-hires-scale");
  if (hiresScale !== undefined) {
    Object.assign(body, sized ? hiresSize : { hires_scale: hiresScale }, { hires_steps: optional("gen-hires-steps"),
      hires_strength: optional("gen-hires-strength"), hires_upscaler: $("gen-hires-upscaler").value });
  }
  if (inputImage && facts.image_to_image) {
    body.input_image = inputImage;
    body.strength = number("gen-strength");
    const mask = maskDataUri();
    if (mask) body.mask = mask;
    const border = optional("gen-outpaint");
    if (border) body.outpaint = { left: border, top: border, right: border, bottom: border };
  }
  return body;
}

// Live previews of the image forming, shown while the job runs: as many as the server allows,
// up to one every few steps of a default drawing (an older server without them: none asked).
const PREVIEWS = 6;
function previewsWanted() {
  const limit = serverSettings && serverSettings.setting_limits && serverSettings.setting_limits.previews;
  return limit && limit.maximum ? Math.min(PREVIEWS, limit.maximum) : undefined;
}

/** What is wrong with the body before the server sees it, or "". */
export function checkForm(body) {
  if (!body.prompt.trim()) return "Write a prompt first.";
  const limits = (serverSettings && serverSettings.limits) || {};
  const multiple = chosenFacts().size_multiple;
  for (const side of ["width", "height"]) {
    if (body[side] === undefined) continue; // the model's native size
    if (!Number.isInteger(body[side]) || body[side] < 64 || body[side] % multiple) {
      return `${side[0].toUpperCase() + side.slice(1)} must be a multiple of ${multiple}, at least 64.`;
    }
  }
  if (limits.max_pixels && body.width && body.height && body.width * body.height > limits.max_pixels) {
    return `${body.width}x${body.height} is more pixels than this server allows (${limits.max_pixels}).`;
  }
  return "";
}
