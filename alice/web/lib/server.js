/* What several pages need to know about the server: its settings and limits, its pipelines,
 * everything in its model store. Exported as live bindings: importers see the latest load. */
import { api } from "./api.js";

export let serverSettings = null;
export let pipelines = []; // [{name, type, loaded}]
export let stored = []; // the whole store, LoRAs too

export async function loadSettings(force = false) {
  if (!serverSettings || force) serverSettings = await api("/v1/settings");
  return serverSettings;
}

export async function loadModels() {
  const listing = await api("/v1/models");
  pipelines = (listing.data || []).map((model) => ({
    name: String(model.id).replace(/^sd\//, ""), type: model.type || "", loaded: Boolean(model.loaded),
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

/** [value, label] pairs for a <select> (see dom.fillSelect). */
export const modelOptions = () => pipelines.map((m) => [m.name, m.type ? `${m.name} (${m.type})` : m.name]);
export const schedulerOptions = () => ((serverSettings && serverSettings.schedulers) || []).map((name) => [name, name]);
export const loraNames = () => stored.filter((m) => m.kind === "lora").map((m) => m.name);
