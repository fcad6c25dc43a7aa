/* The Models page's search (Hugging Face, CivitAI) and download-from-a-URL forms. */
import { api, managerError } from "../lib/api.js";
import { $, el, fillSelect, setText } from "../lib/dom.js";
import { toast } from "../lib/overlays.js";

let downloadStarted = async () => {};

/** `onDownload` runs after the server accepted a download (to show it in the list). */
export function wireSearch(onDownload) {
  downloadStarted = onDownload;
  $("search-source").addEventListener("change", searchSourceChanged);
  $("search-form").addEventListener("submit", onSearch);
  $("url-form").addEventListener("submit", onUrlDownload);
  searchSourceChanged();
}

function searchSourceChanged() {
  const civitai = $("search-source").value === "civitai";
  $("search-civitai-options").hidden = !civitai;
  $("search-hf-options").hidden = civitai;
}

async function onSearch(event) {
  event.preventDefault();
  const source = $("search-source").value;
  const query = $("search-query").value.trim();
  const body = source === "civitai"
    ? { query, types: $("search-type").value ? [$("search-type").value] : [], sort: $("search-civitai-sort").value,
      nsfw: $("search-nsfw").checked, limit: 20 }
    : { query, limit: 20, sort: $("search-hf-sort").value };
  const results = $("search-results");
  setText($("search-msg"), "Searching…");
  $("search-submit").disabled = true;
  try {
    const found = (await api(`/v1/models/search/${source}`, { method: "POST", body })).data || [];
    setText($("search-msg"), found.length ? `${found.length} found.` : "Nothing found.");
    results.replaceChildren(...found.map(source === "civitai" ? civitaiResult : huggingfaceResult));
  } catch (err) {
    setText($("search-msg"), managerError(err));
    results.replaceChildren();
  } finally {
    $("search-submit").disabled = false;
  }
}

async function startDownload(path, body, label) {
  try {
    const task = await api(`/v1/models/download/${path}`, { method: "POST", body });
    toast(`Downloading ${task && task.name ? task.name : label}.`);
    await downloadStarted();
  } catch (err) {
    toast(managerError(err), true);
  }
}

function huggingfaceResult(model) {
  const meta = [
    model.downloads !== undefined && model.downloads !== null ? `${model.downloads} downloads` : "",
    model.likes ? `${model.likes} likes` : "",
    model.lastModified ? `updated ${new Date(model.lastModified).toLocaleDateString()}` : "",
  ].filter(Boolean).join(" · ");
  return el("div", { class: "item search-item" },
    el("div", { class: "main" },
      el("div", { class: "title", text: model.id }),
      el("div", { class: "meta", text: meta }),
      el("div", { class: "tags" }, (model.tags || []).slice(0, 6).map((tag) => el("span", { class: "badge", text: tag })))),
    el("div", { class: "side" },
      el("button", { type: "button", class: "small primary", text: "Download",
        onclick: () => startDownload("huggingface", { modelId: model.id }, model.id) })));
}

function civitaiResult(model) {
  const versions = model.versions || [];
  const version = el("select", { "aria-label": "Version" });
  fillSelect(version, versions.map((v) => [String(v.id), [v.name, v.baseModel].filter(Boolean).join(" · ")]));
  const type = String(model.type || "");
  const kind = type.toUpperCase() === "LORA" ? "LORA" : type === "Checkpoint" ? "Checkpoint" : null;
  const stats = model.stats || {};
  const meta = [type, model.creator ? `by ${model.creator}` : "",
    stats.downloadCount !== undefined ? `${stats.downloadCount} downloads` : ""].filter(Boolean).join(" · ");
  return el("div", { class: "item search-item" },
    el("div", { class: "main" },
      el("div", { class: "title" }, String(model.name || model.id), " ",
        model.nsfw ? el("span", { class: "badge bad", text: "NSFW" }) : null),
      el("div", { class: "meta", text: meta })),
    el("div", { class: "side" },
      versions.length > 1 ? version : null,
      el("button", { type: "button", class: "small primary", text: "Download",
        disabled: !kind || !versions.length, title: kind ? "" : "Only checkpoints and LoRAs can be downloaded",
        onclick: () => startDownload("civitai", {
          modelId: model.id, versionId: Number(version.value) || undefined, modelType: kind,
        }, String(model.name || model.id)) })));
}

async function onUrlDownload(event) {
  event.preventDefault();
  const url = $("url-url").value.trim();
  if (!/^https?:\/\//i.test(url)) {
    setText($("url-msg"), "Give an http:// or https:// URL.");
    return;
  }
  const filename = $("url-filename").value.trim();
  setText($("url-msg"), "");
  await startDownload("url", { url, filename: filename || undefined, isLora: $("url-lora").checked }, url);
}
