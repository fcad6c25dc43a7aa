/* The Generate form's fields: filled from settings, read into a `/v1/jobs` body, checked;
 * its LoRA rows and its img2img input image. */
import { $, el, fillSelect, setText } from "../lib/dom.js";
import { loraNames, pipelines, serverSettings } from "../lib/server.js";

const MAX_INPUT_BYTES = 20 * 1024 * 1024;

let inputImage = null; // a data URI, or "/images/<name>"

export function wireForm() {
  $("gen-seed-random").addEventListener("click", () => { $("gen-seed").value = ""; });
  $("gen-lora-add").addEventListener("click", () => addLoraRow());
  $("gen-image").addEventListener("change", onImageFile);
  $("gen-image-clear").addEventListener("click", () => setInputImage(null));
  $("gen-strength").addEventListener("input", updateStrength);
  updateStrength();
}

export function refreshLoraChoices() {
  const names = loraNames();
  $("gen-lora-add").disabled = names.length === 0;
  setText($("gen-lora-hint"), names.length ? "" : "No LoRAs in the model store yet: download one on the Models page.");
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
  set("gen-steps", values.steps);
  set("gen-guidance", values.guidance_scale);
  set("gen-count", values.num_images);
  set("gen-strength", values.strength);
  if (values.scheduler && Array.from($("gen-scheduler").options).some((o) => o.value === values.scheduler)) {
    $("gen-scheduler").value = values.scheduler;
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
  const body = {
    prompt: $("gen-prompt").value,
    negative_prompt: $("gen-negative").value,
    model: $("gen-model").value || undefined,
    width: optional("gen-width"),
    height: optional("gen-height"),
    steps: number("gen-steps"),
    guidance_scale: number("gen-guidance"),
    scheduler: $("gen-scheduler").value || undefined,
    num_images: number("gen-count") || 1,
  };
  const seed = $("gen-seed").value.trim();
  if (seed !== "") body.seed = Number(seed);
  const loras = Array.from($("gen-loras").children).map((row) => ({
    name: row.querySelector("select").value, scale: Number(row.querySelector("input").value),
  })).filter((lora) => lora.name);
  if (loras.length) body.loras = loras;
  if (inputImage) {
    body.input_image = inputImage;
    body.strength = number("gen-strength");
  }
  return body;
}

/** What is wrong with the body before the server sees it, or "". */
export function checkForm(body) {
  if (!body.prompt.trim()) return "Write a prompt first.";
  const limits = (serverSettings && serverSettings.limits) || {};
  for (const side of ["width", "height"]) {
    if (body[side] === undefined) continue; // the model's native size
    if (!Number.isInteger(body[side]) || body[side] < 64 || body[side] % 8) {
      return `${side[0].toUpperCase() + side.slice(1)} must be a multiple of 8, at least 64.`;
    }
  }
  if (limits.max_pixels && body.width && body.height && body.width * body.height > limits.max_pixels) {
    return `${body.width}x${body.height} is more pixels than this server allows (${limits.max_pixels}).`;
  }
  return "";
}
