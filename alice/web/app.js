/* ALICE web page. Plain JavaScript, no build step, nothing from the internet.
 *
 * Every piece of text that came from a user or the server is put into the page with
 * textContent (or as a text node), never parsed as HTML. The API key lives in localStorage
 * and travels only in the Authorization header of fetch calls, never in a URL.
 */
"use strict";

(() => {
  const KEY_STORAGE = "alice.apiKey";
  const DEFAULTS_STORAGE = "alice.defaults";
  // The page is served at <prefix>/web/; the API is at <prefix>/. Relative URLs keep
  // working behind a reverse proxy that mounts ALICE under a path.
  const BASE = new URL("../", document.baseURI);
  const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
  const ACTIVE_DOWNLOAD = new Set(["queued", "downloading", "importing"]);
  const MAX_INPUT_BYTES = 20 * 1024 * 1024;

  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // ---------------------------------------------------------------- DOM helpers
  /** createElement with properties; children are nodes or strings (strings become text nodes). */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = String(value);
      else if (name === "dataset") Object.assign(node.dataset, value);
      else if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
      else if (name === "value" || name === "checked" || name === "disabled" || name === "selected") node[name] = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    appendAll(node, children);
    return node;
  }

  function appendAll(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(node, value) {
    const textValue = value === undefined || value === null ? "" : String(value);
    if (node.textContent !== textValue) node.textContent = textValue;
  }

  /** A definition list from [label, value] pairs; values are text (or nodes), empty ones left out. */
  function fillKv(dl, pairs) {
    dl.replaceChildren();
    for (const [label, value, cls] of pairs) {
      if (value === undefined || value === null || value === "") continue;
      dl.append(el("dt", { text: label }), appendAll(el("dd", { class: cls }), [value]));
    }
    return dl;
  }

  /** Keep one node per item (by key), updated in place, in the items' order: no flicker,
   * and a button being clicked is never swapped for a new one under the pointer. */
  function reconcile(container, items, keyOf, create, update, empty) {
    const existing = new Map();
    for (const child of Array.from(container.children)) {
      if (child.dataset.key !== undefined) existing.set(child.dataset.key, child);
      else child.remove();
    }
    let index = 0;
    for (const item of items) {
      const key = String(keyOf(item));
      let node = existing.get(key);
      if (node) existing.delete(key);
      else {
        node = create(item);
        node.dataset.key = key;
      }
      update(node, item);
      if (container.children[index] !== node) container.insertBefore(node, container.children[index] || null);
      index += 1;
    }
    for (const node of existing.values()) node.remove();
    if (!items.length && empty) container.append(el("div", { class: "item empty", text: empty }));
  }

  function progressBar() {
    const fill = el("div", { class: "fill" });
    const bar = el("div", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" }, fill);
    return bar;
  }

  function setProgress(bar, fraction, { indeterminate = false, done = false, failed = false } = {}) {
    const percent = Math.max(0, Math.min(100, Math.round((fraction || 0) * 100)));
    bar.classList.toggle("indeterminate", indeterminate);
    bar.classList.toggle("done", done);
    bar.classList.toggle("failed", failed);
    bar.firstElementChild.style.width = `${percent}%`;
    if (indeterminate) bar.removeAttribute("aria-valuenow");
    else bar.setAttribute("aria-valuenow", String(percent));
  }

  // ---------------------------------------------------------------- formatting
  function fmtBytes(bytes) {
    if (bytes === null || bytes === undefined || Number.isNaN(bytes)) return "?";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let value = Number(bytes);
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${value.toFixed(value < 10 && unit ? 1 : 0)} ${units[unit]}`;
  }

  function fmtDate(seconds) {
    return seconds ? new Date(seconds * 1000).toLocaleString() : "";
  }

  function fmtAgo(seconds) {
    if (!seconds) return "";
    const diff = Math.max(0, Date.now() / 1000 - seconds);
    if (diff < 10) return "just now";
    if (diff < 60) return `${Math.round(diff)} s ago`;
    if (diff < 3600) return `${Math.round(diff / 60)} min ago`;
    if (diff < 86400) return `${Math.round(diff / 3600)} h ago`;
    return new Date(seconds * 1000).toLocaleDateString();
  }

  function fmtSeconds(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
    return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  }

  const imageUrl = (name) => new URL(`images/${encodeURIComponent(name)}`, BASE).href;

  // ---------------------------------------------------------------- the API key
  let memoryKey = null; // when localStorage is unavailable (some private modes)
  let keyRequired = false; // the server answered 401 at least once

  function getKey() {
    try {
      return localStorage.getItem(KEY_STORAGE) || memoryKey;
    } catch {
      return memoryKey;
    }
  }

  function setKey(key) {
    memoryKey = key;
    try {
      if (key) localStorage.setItem(KEY_STORAGE, key);
      else localStorage.removeItem(KEY_STORAGE);
    } catch {
      /* memory only */
    }
  }

  let keyDialog = null;

  /** One key prompt at a time; every call that got a 401 waits on it, then retries. */
  function askForKey(rejected) {
    if (!keyDialog) keyDialog = showKeyDialog(rejected).finally(() => { keyDialog = null; });
    return keyDialog;
  }

  function showKeyDialog(rejected, { cancellable = false } = {}) {
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

  // ---------------------------------------------------------------- calling the server
  class ApiError extends Error {
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
  async function api(path, { method = "GET", body, signal } = {}) {
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
        keyRequired = true;
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

  /** The model manager's routes may not exist on an older server: say so plainly. */
  function managerError(error) {
    if (error.status === 404 && /^not found$/i.test(error.message)) {
      return "This server has no model manager yet (HTTP 404 for this route).";
    }
    return error.status ? `${error.message} (HTTP ${error.status})` : error.message;
  }

  // ---------------------------------------------------------------- overlays, toasts
  function overlay(className) {
    const box = el("div", { class: `modal-box ${className || ""}`, role: "dialog", "aria-modal": "true" });
    const root = el("div", { class: "modal" }, box);
    document.body.append(root);
    return { root, box, close: () => root.remove() };
  }

  function confirmBox(message, okLabel = "OK", detail = "") {
    return new Promise((resolve) => {
      const { root, box, close } = overlay("confirm-dialog");
      const done = (answer) => {
        document.removeEventListener("keydown", onKey);
        close();
        resolve(answer);
      };
      const onKey = (event) => { if (event.key === "Escape") done(false); };
      document.addEventListener("keydown", onKey);
      root.addEventListener("click", (event) => { if (event.target === root) done(false); });
      const ok = el("button", { type: "button", class: "primary", id: "confirm-ok", text: okLabel, onclick: () => done(true) });
      box.append(
        el("h2", { text: message }),
        detail ? el("p", { class: "muted", text: detail }) : null,
        el("div", { class: "actions" },
          el("button", { type: "button", id: "confirm-cancel", text: "Cancel", onclick: () => done(false) }), ok));
      ok.focus();
    });
  }

  function toast(message, bad = false) {
    const node = el("div", { class: `toast${bad ? " bad" : ""}`, text: message });
    $("toasts").append(node);
    setTimeout(() => node.remove(), bad ? 6000 : 3000);
  }

  // ---------------------------------------------------------------- shared server facts
  let serverSettings = null;
  let pipelines = []; // [{name, type}]
  let stored = []; // the whole store, LoRAs too

  async function loadSettings(force = false) {
    if (!serverSettings || force) serverSettings = await api("/v1/settings");
    return serverSettings;
  }

  async function loadModels() {
    const listing = await api("/v1/models");
    pipelines = (listing.data || []).map((model) => ({
      name: String(model.id).replace(/^sd\//, ""), type: model.type || "", loaded: Boolean(model.loaded),
    }));
    return pipelines;
  }

  async function loadStore() {
    try {
      stored = (await api("/v1/store/models")).data || [];
    } catch (error) {
      if (error.status !== 404) throw error;
      stored = (await loadModels()).map((model) => ({ ...model, kind: "pipeline", id: `sd/${model.name}` }));
    }
    return stored;
  }

  function userDefaults() {
    try {
      const value = JSON.parse(localStorage.getItem(DEFAULTS_STORAGE) || "{}");
      return value && typeof value === "object" ? value : {};
    } catch {
      return {};
    }
  }

  function effectiveDefaults() {
    const server = (serverSettings && serverSettings.defaults) || {
      width: null, height: null, steps: 25, guidance_scale: 7.5, num_images: 1, strength: 0.75,
      scheduler: "dpm++_2m_karras", model: "",
    };
    return { negative_prompt: "", ...server, ...userDefaults() };
  }

  function fillSelect(select, options, selected) {
    const previous = selected !== undefined ? selected : select.value;
    select.replaceChildren(...options.map(([value, label]) => el("option", { value, text: label })));
    if (options.some(([value]) => value === previous)) select.value = previous;
  }

  const modelOptions = () => pipelines.map((m) => [m.name, m.type ? `${m.name} (${m.type})` : m.name]);
  const schedulerOptions = () => ((serverSettings && serverSettings.schedulers) || []).map((name) => [name, name]);

  // ---------------------------------------------------------------- header: health
  async function refreshHealth() {
    const pill = $("server-status");
    try {
      const response = await fetch(new URL("health", BASE), { cache: "no-store" });
      const health = await response.json();
      const label = { ok: "ready", loading: "loading", error: "error" }[health.status] || String(health.status);
      setText(pill, `${label} · ${health.device || "?"}`);
      pill.className = `pill ${health.status === "ok" ? "ok" : health.status === "loading" ? "warn" : "bad"}`;
      pill.title = health.error ? String(health.error) : `ALICE ${health.version || ""}`;
      const queue = health.queue || {};
      const count = (queue.waiting || 0) + (queue.running || 0);
      const badge = $("nav-queue-count");
      setText(badge, count);
      badge.hidden = count === 0;
    } catch {
      setText(pill, "offline");
      pill.className = "pill bad";
    }
  }

  // ---------------------------------------------------------------- Dashboard
  const dashboard = {
    every: 1500,
    recentKey: "",
    recentAt: 0,
    imagesTotal: -1,
    async refresh() {
      const [health, metrics] = await Promise.all([
        fetch(new URL("health", BASE), { cache: "no-store" }).then((r) => r.json()),
        api("/v1/metrics"),
      ]);
      // The recent images only when new ones were made, or now and then (deletions, retention).
      let recent = null;
      if (metrics.images_total !== this.imagesTotal || Date.now() - this.recentAt > 15000 || !this.recentKey) {
        recent = await api("/v1/gallery?limit=12");
        this.imagesTotal = metrics.images_total;
        this.recentAt = Date.now();
      }
      const statusPill = el("span", {
        class: `pill ${health.status === "ok" ? "ok" : health.status === "loading" ? "warn" : "bad"}`,
        text: health.status,
      });
      fillKv($("dash-server"), [
        ["Status", statusPill],
        ["Problem", health.error],
        ["Version", health.version],
        ["Device", metrics.device || health.device],
        ["Precision", health.dtype],
        ["GPU", health.gpu_available ? "available" : "none (CPU)"],
        ["Default model", health.default_model],
        ["Up for", fmtSeconds(metrics.uptime_s)],
      ]);

      const gpu = $("dash-gpu");
      gpu.replaceChildren();
      if (metrics.gpu_memory) {
        const { free_bytes: free, total_bytes: total, allocated_bytes: allocated } = metrics.gpu_memory;
        const bar = progressBar();
        setProgress(bar, (total - free) / total);
        gpu.append(bar, el("p", { class: "muted",
          text: `${fmtBytes(total - free)} used of ${fmtBytes(total)} (${fmtBytes(allocated)} by ALICE's tensors)` }));
      } else {
        gpu.append(el("p", { class: "muted", text: `No GPU: ALICE runs on the ${metrics.device || "CPU"}.` }));
      }

      const models = $("dash-models");
      const loaded = metrics.loaded_models || [];
      models.replaceChildren(...(loaded.length
        ? loaded.map((name) => el("li", {}, el("span", { class: "badge ok", text: "loaded" }), " ", name))
        : [el("li", { class: "muted", text: "None loaded yet." })]));

      renderDashQueue(metrics.queue || {});

      const jobs = metrics.jobs || {};
      fillKv($("dash-jobs"), [
        ["Succeeded", String(jobs.succeeded || 0)],
        ["Failed", String(jobs.failed || 0)],
        ["Cancelled", String(jobs.cancelled || 0)],
        ["Images made", String(metrics.images_total || 0)],
        ["Average job", metrics.average_job_seconds ? fmtSeconds(metrics.average_job_seconds) : "—"],
      ]);

      const key = recent ? recent.data.map((item) => item.name).join() || "none" : this.recentKey;
      if (key !== this.recentKey) {
        this.recentKey = key;
        const box = $("dash-recent");
        box.replaceChildren(...recent.data.map((item) => el("a", {
          href: imageUrl(item.name), title: item.parameters ? item.parameters.prompt : "",
          onclick: (event) => { event.preventDefault(); openImageDetail(item, () => { this.recentKey = ""; }); },
        }, el("img", { src: imageUrl(item.name), alt: "Generated image" }))));
        if (!recent.data.length) box.append(el("p", { class: "muted", text: "No images yet: make one on the Generate page." }));
      }
    },
  };

  let dashQueueRefs = null;

  function renderDashQueue(queue) {
    const box = $("dash-queue");
    if (!dashQueueRefs) {
      dashQueueRefs = {
        waiting: el("p", {}),
        running: el("div", {}),
        prompt: el("p", { class: "prompt" }),
        bar: progressBar(),
        step: el("p", { class: "muted" }),
        idle: el("p", { class: "muted", text: "Nothing running." }),
      };
      dashQueueRefs.running.append(el("p", { class: "muted", text: "Running:" }), dashQueueRefs.prompt,
        dashQueueRefs.bar, dashQueueRefs.step);
      box.append(dashQueueRefs.waiting, dashQueueRefs.running, dashQueueRefs.idle,
        el("a", { href: "#/queue", text: "Open the queue" }));
    }
    const refs = dashQueueRefs;
    setText(refs.waiting, `${queue.waiting || 0} waiting`);
    const job = queue.running;
    refs.running.hidden = !job;
    refs.idle.hidden = Boolean(job);
    if (job) {
      setText(refs.prompt, job.parameters ? job.parameters.prompt : "");
      setProgress(refs.bar, job.progress);
      setText(refs.step, `${job.model} · step ${job.step} of ${job.total_steps || "?"} (${Math.round(job.progress * 100)}%)`);
    }
  }

  // ---------------------------------------------------------------- Generate
  const gen = {
    ready: false,
    inputImage: null, // a data URI, or "/images/<name>"
    job: null,
    lastJob: null,
    pending: null, // what to do once the form is filled (a model chosen on the Models page)
  };

  const generate = {
    async enter() {
      const [, , store] = await Promise.all([loadSettings(), loadModels(), loadStore()]);
      const defaults = effectiveDefaults();
      fillSelect($("gen-model"), modelOptions(), gen.ready ? undefined : defaults.model);
      fillSelect($("gen-scheduler"), schedulerOptions(), gen.ready ? undefined : defaults.scheduler);
      const limits = serverSettings.limits || {};
      for (const id of ["gen-width", "gen-height"]) $(id).max = limits.max_side || 2048;
      $("gen-count").max = limits.max_images_per_request || 4;
      $("gen-steps").max = limits.max_steps || 150;
      if (!gen.ready) {
        applyToForm(defaults, { keepPrompt: true });
        gen.ready = true;
      }
      refreshLoraChoices(store);
      if (gen.pending) {
        const action = gen.pending;
        gen.pending = null;
        action();
      }
    },
  };

  const loraNames = () => stored.filter((m) => m.kind === "lora").map((m) => m.name);

  function refreshLoraChoices() {
    const names = loraNames();
    $("gen-lora-add").disabled = names.length === 0;
    setText($("gen-lora-hint"), names.length ? "" : "No LoRAs in the model store yet: download one on the Models page.");
    for (const select of $("gen-loras").querySelectorAll("select")) {
      fillSelect(select, names.map((name) => [name, name]));
    }
  }

  function addLoraRow(name, scale = 0.8) {
    const names = loraNames();
    if (name && !names.includes(name)) names.push(name);
    const select = el("select", { "aria-label": "LoRA" });
    fillSelect(select, names.map((n) => [n, n]), name || names[0]);
    const row = el("div", { class: "lora-row" },
      select,
      el("input", { type: "number", step: "0.05", min: "-5", max: "5", value: String(scale), "aria-label": "LoRA scale" }),
      el("button", { type: "button", class: "small", text: "Remove", onclick: () => row.remove() }));
    $("gen-loras").append(row);
  }

  function setInputImage(value, previewUrl) {
    gen.inputImage = value;
    $("gen-image-preview").hidden = !value;
    $("gen-strength-row").hidden = !value;
    if (value) $("gen-image-thumb").src = previewUrl || value;
    else {
      $("gen-image-thumb").removeAttribute("src");
      $("gen-image").value = "";
    }
  }

  function updateStrength() {
    setText($("gen-strength-value"), Number($("gen-strength").value).toFixed(2));
  }

  /** Fill the Generate form from settings (a job's parameters, a gallery image, defaults). */
  function applyToForm(values, { keepPrompt = false } = {}) {
    const set = (id, value) => { if (value !== undefined && value !== null) $(id).value = String(value); };
    if (values.model) {
      if (!pipelines.some((m) => m.name === values.model)) {
        $("gen-model").append(el("option", { value: values.model, text: `${values.model} (not in the store)` }));
      }
      $("gen-model").value = values.model;
    }
    if (!keepPrompt) {
      set("gen-prompt", values.prompt || "");
      set("gen-seed", values.seed);
    }
    set("gen-negative", values.negative_prompt);
    // No size = the model's native size, chosen by the server: leave the field empty.
    $("gen-width").value = values.width ? String(values.width) : "";
    $("gen-height").value = values.height ? String(values.height) : "";
    set("gen-steps", values.steps);
    set("gen-guidance", values.guidance_scale);
    set("gen-count", values.num_images);
    set("gen-strength", values.strength);
    if (values.scheduler && Array.from($("gen-scheduler").options).some((o) => o.value === values.scheduler)) {
      $("gen-scheduler").value = values.scheduler;
    }
    if (Array.isArray(values.loras)) {
      $("gen-loras").replaceChildren();
      for (const lora of values.loras) addLoraRow(lora.name, lora.scale);
    }
    updateStrength();
  }

  function readForm() {
    const number = (id) => Number($(id).value);
    const optional = (id) => ($(id).value.trim() === "" ? undefined : Number($(id).value));
    const body = {
      prompt: $("gen-prompt").value,
      negative_prompt: $("gen-negative").value,
      model: $("gen-model").value || undefined,
      width: optional("gen-width"),
      height: optional("gen-height"),
      steps: number("gen-steps"),
      guidance_scale: number("gen-guidance"),
      scheduler: $("gen-scheduler").value || undefined,
      num_images: number("gen-count") || 1,
    };
    const seed = $("gen-seed").value.trim();
    if (seed !== "") body.seed = Number(seed);
    const loras = Array.from($("gen-loras").children).map((row) => ({
      name: row.querySelector("select").value, scale: Number(row.querySelector("input").value),
    })).filter((lora) => lora.name);
    if (loras.length) body.loras = loras;
    if (gen.inputImage) {
      body.input_image = gen.inputImage;
      body.strength = number("gen-strength");
    }
    return body;
  }

  function checkForm(body) {
    if (!body.prompt.trim()) return "Write a prompt first.";
    const limits = (serverSettings && serverSettings.limits) || {};
    for (const side of ["width", "height"]) {
      if (body[side] === undefined) continue; // the model's native size
      if (!Number.isInteger(body[side]) || body[side] < 64 || body[side] % 8) {
        return `${side[0].toUpperCase() + side.slice(1)} must be a multiple of 8, at least 64.`;
      }
    }
    if (limits.max_pixels && body.width && body.height && body.width * body.height > limits.max_pixels) {
      return `${body.width}x${body.height} is more pixels than this server allows (${limits.max_pixels}).`;
    }
    return "";
  }

  function setBusy(busy) {
    $("gen-submit").disabled = busy;
    setText($("gen-submit"), busy ? "Generating…" : "Generate");
    $("gen-cancel").hidden = !busy;
  }

  function showGenProgress(job) {
    $("gen-progress").hidden = false;
    const bar = $("gen-progress-bar");
    if (!job) {
      setProgress(bar, 0, { indeterminate: true });
      setText($("gen-progress-text"), "Sending…");
      return;
    }
    if (job.state === "queued") {
      setProgress(bar, 0, { indeterminate: true });
      setText($("gen-progress-text"), "Waiting in the queue…");
    } else if (job.state === "running") {
      setProgress(bar, job.progress);
      setText($("gen-progress-text"), job.step
        ? `Step ${job.step} of ${job.total_steps} (${Math.round(job.progress * 100)}%)`
        : "Loading the model…");
    } else {
      setProgress(bar, job.state === "succeeded" ? 1 : job.progress, {
        done: job.state === "succeeded", failed: job.state !== "succeeded",
      });
      const took = job.finished && job.created ? ` in ${fmtSeconds(job.finished - job.created)}` : "";
      setText($("gen-progress-text"), {
        succeeded: `Done${took}.`, cancelled: "Cancelled.", failed: "Failed.",
      }[job.state]);
    }
  }

  async function onGenerate(event) {
    event.preventDefault();
    const error = $("gen-error");
    setText(error, "");
    const body = readForm();
    const problem = checkForm(body);
    if (problem) {
      setText(error, problem);
      return;
    }
    setBusy(true);
    showGenProgress(null);
    try {
      let job = await api("/v1/jobs", { method: "POST", body });
      gen.job = job.id;
      while (!FINISHED.has(job.state)) {
        showGenProgress(job);
        await sleep(300);
        job = await api(`/v1/jobs/${encodeURIComponent(job.id)}`);
      }
      showGenProgress(job);
      if (job.state === "succeeded") renderResult(job);
      else if (job.state === "failed") setText(error, job.error || "The generation failed.");
    } catch (err) {
      setText(error, err.message);
      $("gen-progress").hidden = true;
    } finally {
      gen.job = null;
      setBusy(false);
    }
  }

  async function onCancelGeneration() {
    if (!gen.job) return;
    try {
      await api(`/v1/jobs/${encodeURIComponent(gen.job)}`, { method: "DELETE" });
    } catch (err) {
      toast(err.message, true);
    }
  }

  /** A job's parameters as a form fill; LoRAs named in the prompt stay only in the prompt. */
  function jobSettings(job) {
    const p = job.parameters || {};
    const tagged = new Set(Array.from(String(p.prompt || "").matchAll(/<lora:([^:>]+)/g), (m) => m[1]));
    const loras = (p.loras || []).map(([name, scale]) => ({ name, scale })).filter((l) => !tagged.has(l.name));
    return {
      model: job.model, prompt: p.prompt, negative_prompt: p.negative_prompt, width: p.width, height: p.height,
      steps: p.steps, guidance_scale: p.guidance_scale, scheduler: p.scheduler, seed: p.seed,
      num_images: p.num_images, strength: p.strength, loras,
    };
  }

  function reuse(settings) {
    const apply = () => {
      applyToForm(settings);
      window.scrollTo(0, 0);
      toast("Settings copied into the form.");
    };
    if (current === "generate" && gen.ready) apply();
    else {
      gen.pending = apply; // after the Generate page has filled its lists and defaults
      location.hash = "#/generate";
    }
  }

  function useAsInput(name) {
    setInputImage(`/images/${name}`, imageUrl(name));
    location.hash = "#/generate";
    toast("Image set as the img2img input.");
  }

  function renderResult(job) {
    gen.lastJob = job;
    const p = job.parameters || {};
    const figures = job.images.map((name, index) => el("figure", {},
      el("a", { href: imageUrl(name), target: "_blank", rel: "noopener" },
        el("img", { src: imageUrl(name), alt: `Generated image ${index + 1}`, class: "result-image" })),
      el("figcaption", { class: "actions" },
        el("span", { class: "muted", text: `seed ${p.seed + index}` }),
        el("button", { type: "button", class: "small", text: "Use as input", onclick: () => useAsInput(name) }))));
    const loras = (p.loras || []).map(([name, scale]) => `${name} ${scale}`).join(", ");
    const params = fillKv(el("dl", { class: "kv", id: "gen-params" }), [
      ["Prompt", p.prompt, "text"],
      ["Negative prompt", p.negative_prompt, "text"],
      ["Model", job.model],
      ["Size", `${p.width}x${p.height}`],
      ["Steps", String(p.steps)],
      ["Guidance", String(p.guidance_scale)],
      ["Scheduler", p.scheduler],
      ["Seed", job.images.length > 1 ? `${p.seed} … ${p.seed + job.images.length - 1}` : String(p.seed)],
      ["LoRAs", loras],
      ["Strength", p.init_image ? String(p.strength) : ""],
      ["Time", job.started && job.finished ? fmtSeconds(job.finished - job.started) : ""],
    ]);
    $("gen-result").replaceChildren(
      el("div", { class: "result-images" }, figures),
      params,
      el("div", { class: "actions" },
        el("button", { type: "button", id: "gen-reuse", text: "Reuse these settings", onclick: () => reuse(jobSettings(job)) })));
  }

  function onImageFile() {
    const file = $("gen-image").files[0];
    if (!file) return;
    if (file.size > MAX_INPUT_BYTES) {
      setText($("gen-error"), "The input image is over 20 MB.");
      setInputImage(null);
      return;
    }
    const reader = new FileReader();
    reader.onload = () => setInputImage(String(reader.result));
    reader.onerror = () => setText($("gen-error"), "Could not read that file.");
    reader.readAsDataURL(file);
  }

  // ---------------------------------------------------------------- Gallery
  const gallery = {
    every: 5000,
    offset: 0,
    key: "",
    async refresh() {
      const size = Number($("gal-size").value);
      let page = await api(`/v1/gallery?offset=${this.offset}&limit=${size}`);
      if (!page.data.length && this.offset > 0 && page.total > 0) {
        this.offset = Math.max(0, Math.floor((page.total - 1) / size) * size);
        page = await api(`/v1/gallery?offset=${this.offset}&limit=${size}`);
      }
      const pages = Math.max(1, Math.ceil(page.total / size));
      const current = Math.floor(this.offset / size) + 1;
      setText($("gal-count"), `${page.total} image${page.total === 1 ? "" : "s"}`);
      setText($("gal-page"), `Page ${current} of ${pages}`);
      $("gal-prev").disabled = this.offset === 0;
      $("gal-next").disabled = this.offset + size >= page.total;
      const key = page.data.map((item) => item.name).join();
      if (key === this.key) return;
      this.key = key;
      const grid = $("gal-grid");
      grid.replaceChildren(...page.data.map(galleryCard));
      if (!page.data.length) grid.append(el("p", { class: "muted", text: "No images yet." }));
    },
    reload() {
      this.key = "";
      return this.refresh();
    },
  };

  function settingsLine(item) {
    const s = (item.parameters && item.parameters.settings) || {};
    return [s.Size, s.Seed && `seed ${s.Seed}`, s.Steps && `${s.Steps} steps`, s.Model].filter(Boolean).join(" · ");
  }

  function galleryCard(item) {
    const prompt = item.parameters ? item.parameters.prompt : "(no parameters stored)";
    return el("article", { class: "gallery-card", dataset: { name: item.name } },
      el("button", { type: "button", class: "picture", "aria-label": "Show details",
        onclick: () => openImageDetail(item, () => gallery.reload()) },
      el("img", { src: imageUrl(item.name), alt: "Generated image", loading: "lazy" })),
      el("div", { class: "body" },
        el("p", { class: "prompt", text: prompt }),
        el("p", { class: "meta", text: settingsLine(item) }),
        el("p", { class: "meta", text: fmtAgo(item.created), title: fmtDate(item.created) }),
        el("div", { class: "actions" },
          item.generation ? el("button", { type: "button", class: "small", text: "Reuse",
            onclick: () => reuse(item.generation) }) : null,
          el("button", { type: "button", class: "small danger", text: "Delete",
            onclick: () => deleteImage(item, () => gallery.reload()) }))));
  }

  async function deleteImage(item, after) {
    if (!(await confirmBox("Delete this image?", "Delete", "Its URL stops working for everyone."))) return false;
    try {
      await api(`/v1/gallery/${encodeURIComponent(item.name)}`, { method: "DELETE" });
      toast("Image deleted.");
    } catch (err) {
      toast(err.message, true);
    }
    if (after) await after();
    return true;
  }

  function openImageDetail(item, afterDelete) {
    const { root, box, close } = overlay("wide image-dialog");
    const onKey = (event) => { if (event.key === "Escape") done(); };
    const done = () => {
      document.removeEventListener("keydown", onKey);
      close();
    };
    document.addEventListener("keydown", onKey);
    root.addEventListener("click", (event) => { if (event.target === root) done(); });
    const parsed = item.parameters;
    const pairs = parsed
      ? [["Prompt", parsed.prompt, "text"], ["Negative prompt", parsed.negative_prompt, "text"],
        ...Object.entries(parsed.settings).map(([key, value]) => [key, value])]
      : [["Parameters", "none stored in this PNG"]];
    pairs.push(["Created", fmtDate(item.created)], ["File", `${fmtBytes(item.size_bytes)} PNG`]);
    box.append(
      el("h2", { text: "Image" }),
      el("img", { class: "big-image", src: imageUrl(item.name), alt: "Generated image" }),
      fillKv(el("dl", { class: "kv", id: "detail-params" }), pairs),
      el("div", { class: "actions" },
        el("a", { href: imageUrl(item.name), target: "_blank", rel: "noopener", text: "Open full size" }),
        item.generation ? el("button", { type: "button", text: "Reuse these settings",
          onclick: () => { done(); reuse(item.generation); } }) : null,
        el("button", { type: "button", text: "Use as input", onclick: () => { done(); useAsInput(item.name); } }),
        el("button", { type: "button", class: "danger", text: "Delete",
          onclick: async () => { if (await deleteImage(item, afterDelete)) done(); } }),
        el("button", { type: "button", text: "Close", onclick: done })));
  }

  // ---------------------------------------------------------------- Models
  const models = {
    every: 1500,
    storeKey: "",
    downloadStates: new Map(),
    managerMissing: false,
    async enter() {
      this.storeKey = "";
    },
    async refresh() {
      const [store, downloads] = await Promise.all([
        loadStore(),
        api("/v1/models/download/status").catch((error) => ({ error })),
      ]);
      renderStore(store);
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
        renderStore(await loadStore());
      }
    },
  };

  function renderStore(store) {
    const key = JSON.stringify(store.map((m) => [m.name, m.kind, m.loaded, m.default, m.size_bytes]));
    if (key === models.storeKey) return;
    models.storeKey = key;
    reconcile($("models-list"), store, (m) => m.name, () => el("div", { class: "item model-item" }), (node, model) => {
      const kind = model.kind === "lora" ? "LoRA" : "Checkpoint";
      node.dataset.name = model.name;
      node.replaceChildren(
        el("div", { class: "main" },
          el("div", { class: "title" }, model.name, " ",
            el("span", { class: "badge accent", text: kind }), " ",
            model.type ? el("span", { class: "badge", text: model.type }) : null, " ",
            model.loaded ? el("span", { class: "badge ok", text: "loaded" }) : null, " ",
            model.default ? el("span", { class: "badge warn", text: "default" }) : null),
          el("div", { class: "meta", text: [
            model.size_bytes !== undefined ? fmtBytes(model.size_bytes) : "",
            model.created ? `added ${fmtDate(model.created)}` : "",
            model.source ? `from ${model.source}` : "",
          ].filter(Boolean).join(" · ") })),
        el("div", { class: "side" },
          el("button", { type: "button", class: "small", text: "Use",
            onclick: () => useModel(model) }),
          model.kind === "lora" ? null : el("button", { type: "button", class: "small",
            text: model.loaded ? "Unload" : "Load",
            title: model.loaded ? "Free its memory; it loads again when next used" : "Load it into memory now",
            onclick: () => loadOrUnload(model) }),
          el("button", { type: "button", class: "small danger", text: "Delete", disabled: Boolean(model.default),
            title: model.default ? "The default model (ALICE_DEFAULT_MODEL) cannot be deleted" : "Remove from the store",
            onclick: () => deleteModel(model) })));
    }, "The model store is empty.");
  }

  function useModel(model) {
    // The Generate page fills its lists on entering; choose the model after that.
    gen.pending = model.kind === "lora"
      ? () => addLoraRow(model.name)
      : () => { $("gen-model").value = model.name; };
    location.hash = "#/generate";
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
    renderStore(await loadStore());
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
    renderStore(await loadStore());
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
      if (current === "models") await models.refresh();
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

  // ---------------------------------------------------------------- Queue
  const queue = {
    every: 1000,
    async refresh() {
      const jobs = (await api("/v1/jobs")).data || [];
      const running = jobs.filter((job) => job.state === "running");
      const waiting = jobs.filter((job) => job.state === "queued").sort((a, b) => a.created - b.created);
      const active = [...running, ...waiting];
      waiting.forEach((job, index) => { job.position = index + 1; });
      const done = jobs.filter((job) => FINISHED.has(job.state)).slice(0, 30);
      reconcile($("queue-active"), active, (job) => job.id, jobItem, updateJobItem, "Nothing running or waiting.");
      reconcile($("queue-done"), done, (job) => job.id, jobItem, updateJobItem, "No finished jobs yet.");
    },
  };

  function jobItem() {
    const refs = {
      state: el("span", { class: "badge job-state" }),
      position: el("span", { class: "muted" }),
      prompt: el("div", { class: "prompt job-prompt" }),
      meta: el("div", { class: "meta" }),
      error: el("div", { class: "error" }),
      thumbs: el("div", { class: "thumb-row" }),
      bar: progressBar(),
      cancel: el("button", { type: "button", class: "small danger job-cancel", text: "Cancel" }),
      reuse: el("button", { type: "button", class: "small job-reuse", text: "Reuse" }),
    };
    const node = el("div", { class: "item job-item" },
      el("div", { class: "main" }, el("div", {}, refs.state, " ", refs.position), refs.prompt, refs.meta, refs.error, refs.thumbs),
      el("div", { class: "side" }, refs.reuse, refs.cancel),
      refs.bar);
    refs.reuse.addEventListener("click", () => { if (node.job) reuse(jobSettings(node.job)); });
    refs.cancel.addEventListener("click", async () => {
      const running = node.dataset.state === "running";
      const ok = await confirmBox(running ? "Cancel the running job?" : "Cancel this job?", "Cancel job",
        running ? "It stops at its next step; no image is kept." : "It is taken out of the queue.");
      if (!ok) return;
      try {
        await api(`/v1/jobs/${encodeURIComponent(node.dataset.key)}`, { method: "DELETE" });
        toast("Job cancelled.");
      } catch (err) {
        toast(err.message, true);
      }
      if (current === "queue") await queue.refresh();
    });
    node.refs = refs;
    return node;
  }

  function updateJobItem(node, job) {
    const { refs } = node;
    const p = job.parameters || {};
    node.dataset.state = job.state;
    node.dataset.jobId = job.id;
    setText(refs.state, job.state);
    refs.state.className = `badge job-state ${{ running: "accent", succeeded: "ok", failed: "bad", cancelled: "warn" }[job.state] || ""}`;
    setText(refs.position, job.state === "queued" ? `#${job.position} in line` : job.state === "running"
      ? `step ${job.step} of ${job.total_steps}` : job.finished && job.started ? `took ${fmtSeconds(job.finished - job.started)}` : "");
    setText(refs.prompt, p.prompt);
    setText(refs.meta, [job.model, p.width && `${p.width}x${p.height}`, p.steps && `${p.steps} steps`, p.scheduler,
      `seed ${p.seed}`, `via ${job.source}`, fmtAgo(job.created)].filter(Boolean).join(" · "));
    setText(refs.error, job.state === "failed" ? job.error : "");
    node.job = job;
    refs.cancel.hidden = FINISHED.has(job.state);
    refs.reuse.hidden = !FINISHED.has(job.state);
    refs.bar.hidden = job.state !== "running";
    if (job.state === "running") setProgress(refs.bar, job.progress);
    const names = (job.images || []).slice(0, 4);
    if (refs.thumbs.dataset.names !== names.join()) {
      refs.thumbs.dataset.names = names.join();
      refs.thumbs.replaceChildren(...names.map((name) => el("a", { href: imageUrl(name), target: "_blank", rel: "noopener" },
        el("img", { src: imageUrl(name), alt: "Image", loading: "lazy" }))));
    }
  }

  // ---------------------------------------------------------------- Settings
  const settingsPage = {
    async enter() {
      const [info] = await Promise.all([loadSettings(true), loadModels()]);
      const defaults = effectiveDefaults();
      fillSelect($("def-model"), modelOptions(), defaults.model);
      fillSelect($("def-scheduler"), schedulerOptions(), defaults.scheduler);
      $("def-width").value = defaults.width || "";
      $("def-height").value = defaults.height || "";
      $("def-count").value = defaults.num_images;
      $("def-steps").value = defaults.steps;
      $("def-guidance").value = defaults.guidance_scale;
      $("def-negative").value = defaults.negative_prompt || "";
      setText($("def-msg"), Object.keys(userDefaults()).length ? "Your own defaults are in use." : "The server's defaults are in use.");
      renderKeyState();

      const list = $("settings-list");
      const descriptions = info.descriptions || {};
      list.replaceChildren(...Object.entries(info.settings).map(([name, value]) => el("div", { class: "setting", dataset: { name } },
        el("div", {}, el("div", { class: "name", text: name }),
          el("div", { class: "env", text: descriptions[name] ? descriptions[name].env : "" })),
        el("div", {}, el("div", { class: "value", text: settingValue(name, value) }),
          el("div", { class: "desc", text: descriptions[name] ? descriptions[name].description : "" })))));

      const limits = info.limits || {};
      fillKv($("limits-list"), [
        ["Largest image", `${limits.max_pixels} pixels (sides ${limits.min_side}–${limits.max_side}, multiples of ${limits.side_multiple})`],
        ["Images per request", String(limits.max_images_per_request)],
        ["Steps", `1–${limits.max_steps}`],
        ["Guidance", `0–${limits.max_guidance_scale}`],
        ["Prompt length", `${limits.max_prompt_chars} characters`],
        ["LoRAs per request", String(limits.max_loras)],
        ["Schedulers", (info.schedulers || []).join(", ")],
        ["Version", info.version],
      ]);
    },
  };

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
      : keyRequired ? "No key stored; the server will ask for one." : "No key stored: this server has not asked for one.");
    $("key-forget").disabled = !key;
  }

  function onSaveDefaults(event) {
    event.preventDefault();
    const values = {
      model: $("def-model").value,
      width: Number($("def-width").value) || null,
      height: Number($("def-height").value) || null,
      num_images: Number($("def-count").value),
      steps: Number($("def-steps").value),
      guidance_scale: Number($("def-guidance").value),
      scheduler: $("def-scheduler").value,
      negative_prompt: $("def-negative").value,
    };
    try {
      localStorage.setItem(DEFAULTS_STORAGE, JSON.stringify(values));
    } catch {
      setText($("def-msg"), "This browser does not let the page store anything.");
      return;
    }
    gen.ready = false; // the Generate form picks them up when next shown
    setText($("def-msg"), "Saved. The Generate form starts from these.");
    toast("Defaults saved.");
  }

  async function onResetDefaults() {
    try {
      localStorage.removeItem(DEFAULTS_STORAGE);
    } catch {
      /* nothing stored */
    }
    gen.ready = false;
    await settingsPage.enter();
    toast("Back to the server's defaults.");
  }

  // ---------------------------------------------------------------- navigation
  const PAGES = { dashboard, generate, gallery, models, queue, settings: settingsPage };
  const TITLES = { dashboard: "Dashboard", generate: "Generate", gallery: "Gallery", models: "Models", queue: "Queue", settings: "Settings" };
  let current = null;
  let pollTimer = null;
  let routeSeq = 0;

  function pageError(name, error) {
    const section = $(`page-${name}`);
    let box = section.querySelector(":scope > .page-error");
    if (!error) {
      if (box) box.remove();
      return;
    }
    if (!box) {
      box = el("p", { class: "error page-error", role: "alert" });
      section.firstElementChild.after(box);
    }
    setText(box, error.message || String(error));
  }

  async function route() {
    const match = /^#\/?([a-z]+)/.exec(location.hash);
    const name = match && PAGES[match[1]] ? match[1] : "dashboard";
    const seq = ++routeSeq;
    clearTimeout(pollTimer);
    current = name;
    for (const [page] of Object.entries(PAGES)) $(`page-${page}`).hidden = page !== name;
    for (const link of document.querySelectorAll("#nav a")) {
      if (link.dataset.page === name) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    document.title = `${TITLES[name]} · ALICE`;
    const page = PAGES[name];
    try {
      if (page.enter) await page.enter();
      pageError(name, null);
    } catch (error) {
      pageError(name, error);
    }
    poll(seq);
  }

  async function poll(seq) {
    const page = PAGES[current];
    if (seq !== routeSeq) return;
    if (page.refresh) {
      try {
        await page.refresh();
        pageError(current, null);
      } catch (error) {
        if (seq === routeSeq) pageError(current, error);
      }
    }
    if (seq !== routeSeq || !page.every) return;
    pollTimer = setTimeout(() => poll(seq), document.hidden ? page.every * 5 : page.every);
  }

  // ---------------------------------------------------------------- wiring
  function wire() {
    $("gen-form").addEventListener("submit", onGenerate);
    $("gen-cancel").addEventListener("click", onCancelGeneration);
    $("gen-seed-random").addEventListener("click", () => { $("gen-seed").value = ""; });
    $("gen-lora-add").addEventListener("click", () => addLoraRow());
    $("gen-image").addEventListener("change", onImageFile);
    $("gen-image-clear").addEventListener("click", () => setInputImage(null));
    $("gen-strength").addEventListener("input", updateStrength);
    $("gen-prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("gen-form").requestSubmit();
    });

    $("gal-prev").addEventListener("click", () => {
      gallery.offset = Math.max(0, gallery.offset - Number($("gal-size").value));
      gallery.reload().catch((error) => pageError("gallery", error));
    });
    $("gal-next").addEventListener("click", () => {
      gallery.offset += Number($("gal-size").value);
      gallery.reload().catch((error) => pageError("gallery", error));
    });
    $("gal-size").addEventListener("change", () => {
      gallery.offset = 0;
      gallery.reload().catch((error) => pageError("gallery", error));
    });

    $("search-source").addEventListener("change", searchSourceChanged);
    $("search-form").addEventListener("submit", onSearch);
    $("url-form").addEventListener("submit", onUrlDownload);

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

    window.addEventListener("hashchange", route);
    searchSourceChanged();
    updateStrength();
    refreshHealth();
    setInterval(refreshHealth, 5000);
    route();
  }

  wire();
})();
