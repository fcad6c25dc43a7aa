/* The Generate form's starting values: the server's defaults, overlaid with the user's own
 * (kept in this browser by the Settings page). The server's come from /v1/settings, loaded
 * before a form is filled (loadSettings): the page keeps no copy of them to drift. */
import { serverSettings } from "./server.js";

const DEFAULTS_STORAGE = "alice.defaults";

export function userDefaults() {
  try {
    const value = JSON.parse(localStorage.getItem(DEFAULTS_STORAGE) || "{}");
    return value && typeof value === "object" ? value : {};
  } catch {
    return {};
  }
}

// Each model's family has its own steps, guidance and scheduler (/v1/models); the server's
// defaults for these (/v1/settings) are Stable Diffusion's, so a form leaves them to the model.
const FAMILY_SETTINGS = ["steps", "guidance_scale", "scheduler"];

/** The form's starting values: the server's defaults but the family ones, then the user's own
 * (those the user left empty, null, are not theirs: the model's stay). */
export function effectiveDefaults() {
  const server = { ...((serverSettings && serverSettings.defaults) || {}) };
  for (const name of FAMILY_SETTINGS) delete server[name];
  const own = Object.entries(userDefaults()).filter(([, value]) => value !== null && value !== "");
  return { ...server, ...Object.fromEntries(own) };
}

/** Throws where the browser lets the page store nothing. */
export function saveUserDefaults(values) {
  localStorage.setItem(DEFAULTS_STORAGE, JSON.stringify(values));
}

export function forgetUserDefaults() {
  try {
    localStorage.removeItem(DEFAULTS_STORAGE);
  } catch {
    /* nothing stored */
  }
}
