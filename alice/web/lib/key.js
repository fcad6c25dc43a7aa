/* The API key: kept in localStorage (in memory where that is unavailable) and asked for in a
 * dialog. It travels only in the Authorization header of fetch calls, never in a URL. */
import { el } from "./dom.js";
import { overlay } from "./overlays.js";

const KEY_STORAGE = "alice.apiKey";

let memoryKey = null; // when localStorage is unavailable (some private modes)
let keyRequired = false; // the server answered 401 at least once
let keyDialog = null;

export function getKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || memoryKey;
  } catch {
    return memoryKey;
  }
}

export function setKey(key) {
  memoryKey = key;
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    /* memory only */
  }
}

/** Whether the server has asked for a key (answered 401) since the page loaded. */
export const isKeyRequired = () => keyRequired;
export const markKeyRequired = () => { keyRequired = true; };

/** One key prompt at a time; every call that got a 401 waits on it, then retries. */
export function askForKey(rejected) {
  if (!keyDialog) keyDialog = showKeyDialog(rejected).finally(() => { keyDialog = null; });
  return keyDialog;
}

/** Resolves true once a key is saved, false when cancelled (only a cancellable dialog can be). */
export function showKeyDialog(rejected, { cancellable = false } = {}) {
  return new Promise((resolve) => {
    const { box, close } = overlay("key-dialog");
    const input = el("input", {
      type: "password", id: "key-input", autocomplete: "off", spellcheck: "false",
      autocapitalize: "off", placeholder: "API key",
    });
    const error = el("p", { class: "error", id: "key-error", role: "alert",
      text: rejected ? "That key was not accepted. Check it and try again." : "" });
    const form = el("form", { class: "form", id: "key-form", novalidate: true },
      el("h2", { text: "API key" }),
      el("p", { class: "muted", text: "This ALICE server needs an API key (one of ALICE_API_KEYS). "
        + "It is kept in this browser and sent with every request." }),
      el("label", {}, "Key", input),
      error,
      el("div", { class: "actions" },
        cancellable ? el("button", { type: "button", text: "Cancel", onclick: () => { close(); resolve(false); } }) : null,
        el("button", { type: "submit", class: "primary", id: "key-save", text: "Save key" })));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) {
        error.textContent = "Enter the key.";
        return;
      }
      if (!/^[\x21-\x7e]+$/.test(key)) {
        error.textContent = "A key is printable ASCII without spaces.";
        return;
      }
      setKey(key);
      close();
      resolve(true);
    });
    box.append(form);
    input.focus();
  });
}
