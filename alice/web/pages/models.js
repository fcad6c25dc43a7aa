/* Models: what is in the model store (use, load, unload, delete) and the downloads under way. */
import { api, managerError } from "../lib/api.js";
import { $, el, progressBar, reconcile, setProgress, setText } from "../lib/dom.js";
import { fmtBytes, fmtDate } from "../lib/format.js";
import { confirmBox, toast } from "../lib/overlays.js";
import { currentPage } from "../lib/router.js";
import { adminOnlyNote, isUserKey, loadSettings, loadStore } from "../lib/server.js";
import { useModel } from "./generate.js";
import { wireSearch } from "./model-search.js";

const ACTIVE_DOWNLOAD = new Set(["queued", "downloading", "importing"]);

export const models = {
  title: "Models",
  every: 1500,
  storeKey: "",
  downloadStates: new Map(),
  wire() {
    wireSearch(async () => { if (currentPage() === "models") await this.refresh(); });
  },
  async enter() {
    this.storeKey = "";
  },
  async refresh() {
    await loadSettings();
    const user = isUserKey();
    for (const card of document.querySelectorAll("#page-models .admin-only")) card.hidden = user;
    const note = $("models-role");
    note.hidden = !user;
    if (user) {  // what this key cannot do is not offered: it would only be refused (403)
      setText(note, adminOnlyNote("Downloads, loading, unloading and deleting models"));
      await showStore();
      return;
    }
    const [, downloads] = await Promise.all([
      showStore(),
      api("/v1/models/download/status").catch((error) => ({ error })),
    ]);
    const msg = $("downloads-msg");
    if (downloads.error) {
      setText(msg, managerError(downloads.error));
      reconcile($("downloads-list"), [], () => "", () => null, () => null);
      return;
    }
    const tasks = downloads.data || [];
    setText(msg, tasks.length ? "" : "No downloads yet: search below, or give a URL.");
    let finishedOne = false;
    for (const task of tasks) {
      const before = this.downloadStates.get(task.id);
      if (before && before !== task.status && task.status === "completed") finishedOne = true;
      this.downloadStates.set(task.id, task.status);
    }
    reconcile($("downloads-list"), tasks, (t) => t.id, downloadItem, updateDownloadItem);
    if (finishedOne) {
      toast("Download complete: the model is in the store.");
      this.storeKey = "";
      await showStore();
    }
  },
};

let storeLoads = 0;

/** Load the store and show it, unless a later load began meanwhile: an answer that left before
 * a click's action finished must not put the old state back after the click's own reload. */
async function showStore() {
  const load = ++storeLoads;
  const store = await loadStore();
  if (load === storeLoads) renderStore(store);
}

function renderStore(store) {
  const key = JSON.stringify(store.map((m) => [m.name, m.kind, m.loaded, m.default, m.size_bytes]));
  if (key === models.storeKey) return;
  models.storeKey = key;
  reconcile($("models-list"), store, (m) => m.name, () => el("div", { class: "item model-item" }), (node, model) => {
    // A base holds a family's text encoders and VAE for transformer files: nothing to draw with alone.
    const kind = { lora: "LoRA", base: "Base" }[model.kind] || "Checkpoint";
    const drawable = model.kind !== "base";
    node.dataset.name = model.name;
    node.replaceChildren(
      el("div", { class: "main" },
        el("div", { class: "title" }, model.name, " ",
          el("span", { class: "badge accent", text: kind }), " ",
          model.type ? el("span", { class: "badge family", text: model.type, title: "Model family" }) : null, " ",
          model.loaded ? el("span", { class: "badge ok", text: "loaded" }) : null, " ",
          model.default ? el("span", { class: "badge warn", text: "default" }) : null),
        el("div", { class: "meta", text: [
          model.size_bytes !== undefined ? fmtBytes(model.size_bytes) : "",
          model.created ? `added ${fmtDate(model.created)}` : "",
          model.source ? `from ${model.source}` : "",
        ].filter(Boolean).join(" · ") })),
      el("div", { class: "side" },
        drawable ? el("button", { type: "button", class: "small", text: "Use",
          onclick: () => useModel(model) }) : null,
        ...(isUserKey() ? [] : managing(model))));
  }, "The model store is empty.");
}

/** The Load/Unload and Delete buttons of a model (an admin's only, where roles are on). */
function managing(model) {
  const drawable = model.kind !== "base";
  return [
    model.kind === "lora" || !drawable ? null : el("button", { type: "button", class: "small",
      text: model.loaded ? "Unload" : "Load",
      title: model.loaded ? "Free its memory; it loads again when next used" : "Load it into memory now",
      onclick: () => loadOrUnload(model) }),
    el("button", { type: "button", class: "small danger", text: "Delete", disabled: Boolean(model.default),
      title: model.default ? "The default model (ALICE_DEFAULT_MODEL) cannot be deleted" : "Remove from the store",
      onclick: () => deleteModel(model) }),
  ];
}

async function loadOrUnload(model) {
  const action = model.loaded ? "unload" : "load";
  try {
    await api(`/v1/models/${encodeURIComponent(model.name)}/${action}`, { method: "POST" });
    toast(`${model.name} ${action}ed.`);
  } catch (err) {
    toast(managerError(err), true);
  }
  models.storeKey = "";
  await showStore();
}

async function deleteModel(model) {
  if (!(await confirmBox(`Delete ${model.name}?`, "Delete",
    "It is removed from the model store; requests that name it fail from now on."))) return;
  try {
    await api(`/v1/models/${encodeURIComponent(model.name)}`, { method: "DELETE" });
    toast(`${model.name} deleted.`);
  } catch (err) {
    toast(managerError(err), true);
  }
  models.storeKey = "";
  await showStore();
}

function downloadItem() {
  const refs = {
    name: el("span", { class: "title" }),
    source: el("span", { class: "badge" }),
    status: el("span", { class: "badge" }),
    meta: el("div", { class: "meta" }),
    error: el("div", { class: "error" }),
    bar: progressBar(),
    cancel: el("button", { type: "button", class: "small danger", text: "Cancel" }),
  };
  const node = el("div", { class: "item download-item" },
    el("div", { class: "main" }, el("div", {}, refs.name, " ", refs.source, " ", refs.status), refs.meta, refs.error),
    el("div", { class: "side" }, refs.cancel),
    refs.bar);
  refs.cancel.addEventListener("click", async () => {
    try {
      await api(`/v1/models/download/${encodeURIComponent(node.dataset.key)}`, { method: "DELETE" });
      toast("Download cancelled.");
    } catch (err) {
      toast(managerError(err), true);
    }
  });
  node.refs = refs;
  return node;
}

function updateDownloadItem(node, task) {
  const { refs } = node;
  setText(refs.name, task.name);
  setText(refs.source, task.source);
  setText(refs.status, task.status);
  refs.status.className = `badge ${task.status === "completed" ? "ok" : task.status === "failed" ? "bad" : ACTIVE_DOWNLOAD.has(task.status) ? "accent" : ""}`;
  const parts = [];
  if (task.totalSize) parts.push(`${fmtBytes(task.downloadedSize)} of ${fmtBytes(task.totalSize)}`);
  else if (task.downloadedSize) parts.push(fmtBytes(task.downloadedSize));
  if (task.status === "downloading" && task.speed) parts.push(`${fmtBytes(task.speed)}/s`);
  if (task.status === "completed" && task.model) parts.push(`stored as ${task.model}`);
  setText(refs.meta, parts.join(" · "));
  setText(refs.error, task.error || "");
  refs.cancel.hidden = !ACTIVE_DOWNLOAD.has(task.status);
  setProgress(refs.bar, task.progress, {
    indeterminate: task.status === "queued" || (task.status === "downloading" && !task.totalSize),
    done: task.status === "completed",
    failed: task.status === "failed" || task.status === "cancelled",
  });
}
