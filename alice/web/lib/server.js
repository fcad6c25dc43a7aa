/* What several pages need to know about the server: its settings and limits, its pipelines,
 * everything in its model store. Exported as live bindings: importers see the latest load. */
import { api } from "./api.js";
import { $ } from "./dom.js";

export let serverSettings = null;
export let pipelines = []; // [{name, type, loaded, facts}]: facts, how its family draws (or null)
export let stored = []; // the whole store, LoRAs too

export async function loadSettings(force = false) {
  if (!serverSettings || force) serverSettings = await api("/v1/settings");
  return serverSettings;
}

export async function loadModels() {
  const listing = await api("/v1/models");
  pipelines = (listing.data || []).map((model) => ({
    name: String(model.id).replace(/^sd\//, ""), type: model.type || "", loaded: Boolean(model.loaded),
    // Its family's defaults, schedulers and what applies (Family.facts); none from an older server.
    facts: Array.isArray(model.schedulers) ? model : null,
  }));
  return pipelines;
}

export async function loadStore() {
  try {
    stored = (await api("/v1/store/models")).data || [];
  } catch (error) {
    if (error.status !== 404) throw error;
    stored = (await loadModels()).map((model) => ({ ...model, kind: "pipeline", id: `sd/${model.name}` }));
  }
  return stored;
}

/** Whether this key is a user key on a server with roles (ALICE_ADMIN_KEYS): it sees its own jobs
 * and images, and cannot manage models or read the server's configuration. */
export const isUserKey = () => Boolean(serverSettings && serverSettings.caller && serverSettings.caller.role === "user");

/** Why a user key does not see `what`, naming its role (the server answers such a request 403). */
export const adminOnlyNote = (what) =>
  `${what} need an admin key (ALICE_ADMIN_KEYS); this key ("${serverSettings.caller.name}") has the role "user".`;

/** [value, label] pairs for a <select> (see dom.fillSelect). */
export const modelOptions = () => pipelines.map((m) => [m.name, m.type ? `${m.name} (${m.type})` : m.name]);
export const schedulerOptions = () => ((serverSettings && serverSettings.schedulers) || []).map((name) => [name, name]);
/** How the named model draws (`/v1/models`' facts), or null for one not in the store. */
export const modelFacts = (name) => (pipelines.find((m) => m.name === name) || {}).facts || null;
export const loraNames = () => stored.filter((m) => m.kind === "lora").map((m) => m.name);

/** Set each input's bounds from its setting's limits as the server's schema states them
 * (`setting_limits` of /v1/settings): index.html writes none, so they cannot drift from the
 * server's. `inputs` maps an input's id to its setting's name. An exclusive minimum (strength
 * over 0) becomes the first step above it; a multiple (sizes) becomes the step. */
export function applyLimits(inputs) {
  const limits = (serverSettings && serverSettings.setting_limits) || {};
  // The schema allows 16 images; this server's operator may allow fewer (ALICE_MAX_IMAGES_PER_REQUEST).
  const perRequest = serverSettings && serverSettings.limits && serverSettings.limits.max_images_per_request;
  for (const [id, name] of Object.entries(inputs)) {
    const input = $(id);
    const limit = limits[name] || {};
    if ("multipleOf" in limit) input.step = limit.multipleOf;
    if ("minimum" in limit) input.min = limit.minimum;
    else if ("exclusiveMinimum" in limit) input.min = limit.exclusiveMinimum + Number(input.step || 1);
    let max = limit.maximum;
    if (name === "num_images" && perRequest) max = Math.min(max ?? perRequest, perRequest);
    if (max !== undefined) input.max = max;
    if ("maxLength" in limit) input.maxLength = limit.maxLength;
  }
}
