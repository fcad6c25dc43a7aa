/* The Generate form's starting values: the server's defaults, overlaid with the user's own
 * (kept in this browser by the Settings page). */
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

export function effectiveDefaults() {
  const server = (serverSettings && serverSettings.defaults) || {
    width: null, height: null, steps: 25, guidance_scale: 7.5, num_images: 1, strength: 0.75,
    scheduler: "dpm++_2m_karras", model: "",
  };
  return { negative_prompt: "", ...server, ...userDefaults() };
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
