/* Calling the server: JSON with the key, errors as ApiError with the server's message. */
import { askForKey, getKey, markKeyRequired } from "./key.js";

// The page is served at <prefix>/web/; the API is at <prefix>/. Relative URLs keep
// working behind a reverse proxy that mounts ALICE under a path.
export const BASE = new URL("../", document.baseURI);

export const imageUrl = (name) => new URL(`images/${encodeURIComponent(name)}`, BASE).href;

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function errorText(status, data) {
  if (data && typeof data === "object") {
    const error = data.error;
    if (error && typeof error === "object" && error.message) return String(error.message);
    if (typeof error === "string") return error;
    if (typeof data.detail === "string") return data.detail;
  }
  return `HTTP ${status}`;
}

/** JSON to and from the server, with the key; a 401 asks for the key and tries again. */
export async function api(path, { method = "GET", body, signal } = {}) {
  for (;;) {
    const key = getKey();
    const headers = { Accept: "application/json" };
    if (key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(new URL(path.replace(/^\//, ""), BASE), {
        method, headers, signal, cache: "no-store", credentials: "same-origin", referrerPolicy: "no-referrer",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      if (error && error.name === "AbortError") throw error;
      throw new ApiError(0, "The server did not answer. Is it running?");
    }
    if (response.status === 401) {
      markKeyRequired();
      if (key && key !== getKey()) continue; // someone entered a new key meanwhile
      await askForKey(Boolean(key));
      continue;
    }
    let data = null;
    if ((response.headers.get("content-type") || "").includes("json")) {
      try {
        data = await response.json();
      } catch {
        data = null;
      }
    }
    if (!response.ok) throw new ApiError(response.status, errorText(response.status, data), data);
    return data;
  }
}

/** `/health`: open, no key. */
export async function fetchHealth() {
  const response = await fetch(new URL("health", BASE), { cache: "no-store" });
  return response.json();
}

/** The model manager's routes may not exist on an older server: say so plainly. */
export function managerError(error) {
  if (error.status === 404 && /^not found$/i.test(error.message)) {
    return "This server has no model manager yet (HTTP 404 for this route).";
  }
  return error.status ? `${error.message} (HTTP ${error.status})` : error.message;
}
