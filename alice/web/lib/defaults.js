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

export function effectiveDefaults() {
  return { ...((serverSettings && serverSettings.defaults) || {}), ...userDefaults() };
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
