/* Settings: the user's own form defaults, the API key in this browser, the server's
 * configuration (secrets masked) and its request limits. */
import { effectiveDefaults, forgetUserDefaults, saveUserDefaults, userDefaults } from "../lib/defaults.js";
import { $, el, fillKv, fillSelect, setText } from "../lib/dom.js";
import { getKey, isKeyRequired, setKey, showKeyDialog } from "../lib/key.js";
import { toast } from "../lib/overlays.js";
import {
  adminOnlyNote, applyLimits, isUserKey, loadModels, loadSettings, modelOptions, schedulerOptions,
} from "../lib/server.js";
import { defaultsChanged } from "./generate.js";

// The defaults form's inputs that hold a setting with limits, by the setting's name.
const DEFAULTS_FORM = {
  "def-width": "width", "def-height": "height", "def-count": "num_images", "def-steps": "steps",
  "def-guidance": "guidance_scale", "def-negative": "negative_prompt",
};

export const settings = {
  title: "Settings",
  wire() {
    $("defaults-form").addEventListener("submit", onSaveDefaults);
    $("def-reset").addEventListener("click", onResetDefaults);
    $("key-change").addEventListener("click", async () => {
      if (await showKeyDialog(false, { cancellable: true })) toast("Key saved.");
      renderKeyState();
    });
    $("key-forget").addEventListener("click", () => {
      setKey(null);
      renderKeyState();
      toast("The key was removed from this browser.");
    });
  },
  async enter() {
    const [info] = await Promise.all([loadSettings(true), loadModels()]);
    applyLimits(DEFAULTS_FORM);
    const defaults = effectiveDefaults();
    fillSelect($("def-model"), modelOptions(), defaults.model);
    // Steps, guidance and scheduler: each model's own unless set here (one value for every family).
    fillSelect($("def-scheduler"), [["", "the model's"], ...schedulerOptions()], defaults.scheduler || "");
    $("def-width").value = defaults.width || "";
    $("def-height").value = defaults.height || "";
    $("def-count").value = defaults.num_images;
    $("def-steps").value = defaults.steps ?? "";
    $("def-guidance").value = defaults.guidance_scale ?? "";
    $("def-negative").value = defaults.negative_prompt || "";
    setText($("def-msg"), Object.keys(userDefaults()).length ? "Your own defaults are in use." : "The server's defaults are in use.");
    renderKeyState();
    renderServerSettings(info);
    renderLimits(info);
  },
};

function renderServerSettings(info) {
  const note = $("settings-role");
  note.hidden = !isUserKey();
  if (isUserKey()) {  // the server withholds its configuration from a user key
    setText(note, adminOnlyNote("The server's configuration and model management"));
    $("settings-list").replaceChildren();
    return;
  }
  const descriptions = info.descriptions || {};
  $("settings-list").replaceChildren(...Object.entries(info.settings).map(([name, value]) => el("div", { class: "setting", dataset: { name } },
    el("div", {}, el("div", { class: "name", text: name }),
      el("div", { class: "env", text: descriptions[name] ? descriptions[name].env : "" })),
    el("div", {}, el("div", { class: "value", text: settingValue(name, value) }),
      el("div", { class: "desc", text: descriptions[name] ? descriptions[name].description : "" })))));
}

function renderLimits(info) {
  const limits = info.limits || {};
  const range = (name) => {
    const limit = (info.setting_limits || {})[name] || {};
    return `${limit.minimum ?? limit.exclusiveMinimum}–${limit.maximum}`;
  };
  fillKv($("limits-list"), [
    ["Largest image", `${limits.max_pixels} pixels (sides ${limits.min_side}–${limits.max_side}, multiples of ${limits.side_multiple})`],
    ["Images per request", String(limits.max_images_per_request)],
    ["Steps", range("steps")],
    ["Guidance", range("guidance_scale")],
    ["Prompt length", `${limits.max_prompt_chars} characters`],
    ["LoRAs per request", String(limits.max_loras)],
    ["Schedulers", (info.schedulers || []).join(", ")],
    ["Version", info.version],
  ]);
}

function settingValue(name, value) {
  if (name === "api_keys") return value.length ? `${value.join(", ")} (${value.length} key${value.length === 1 ? "" : "s"})` : "none: the server is open";
  if (value === null || value === undefined || value === "") return "—";
  if (Array.isArray(value)) return value.join(", ");
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function renderKeyState() {
  const key = getKey();
  setText($("key-state"), key
    ? "A key is stored in this browser and sent with every request."
    : isKeyRequired() ? "No key stored; the server will ask for one." : "No key stored: this server has not asked for one.");
  $("key-forget").disabled = !key;
}

const optionalNumber = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));

function onSaveDefaults(event) {
  event.preventDefault();
  const values = {
    model: $("def-model").value,
    width: Number($("def-width").value) || null,
    height: Number($("def-height").value) || null,
    num_images: Number($("def-count").value),
    steps: optionalNumber("def-steps"),
    guidance_scale: optionalNumber("def-guidance"),
    scheduler: $("def-scheduler").value || null,
    negative_prompt: $("def-negative").value,
  };
  try {
    saveUserDefaults(values);
  } catch {
    setText($("def-msg"), "This browser does not let the page store anything.");
    return;
  }
  defaultsChanged(); // the Generate form picks them up when next shown
  setText($("def-msg"), "Saved. The Generate form starts from these.");
  toast("Defaults saved.");
}

async function onResetDefaults() {
  forgetUserDefaults();
  defaultsChanged();
  await settings.enter();
  toast("Back to the server's defaults.");
}
