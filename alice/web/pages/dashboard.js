/* Dashboard: the server, its GPU memory, loaded models, queue, job counts and recent images. */
import { api, fetchHealth, imageUrl } from "../lib/api.js";
import { $, el, fillKv, progressBar, setProgress, setText } from "../lib/dom.js";
import { fmtBytes, fmtSeconds } from "../lib/format.js";
import { openImageDetail } from "./image-detail.js";

export const dashboard = {
  title: "Dashboard",
  every: 1500,
  recentKey: "",
  recentAt: 0,
  imagesTotal: -1,
  async refresh() {
    const [health, metrics] = await Promise.all([fetchHealth(), api("/v1/metrics")]);
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
    renderGpu(metrics);
    renderLoaded(metrics.loaded_models || []);
    renderQueue(metrics.queue || {});

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

function renderGpu(metrics) {
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
}

function renderLoaded(loaded) {
  $("dash-models").replaceChildren(...(loaded.length
    ? loaded.map((name) => el("li", {}, el("span", { class: "badge ok", text: "loaded" }), " ", name))
    : [el("li", { class: "muted", text: "None loaded yet." })]));
}

let queueRefs = null;

function renderQueue(queue) {
  if (!queueRefs) {
    queueRefs = {
      waiting: el("p", {}),
      running: el("div", {}),
      prompt: el("p", { class: "prompt" }),
      bar: progressBar(),
      step: el("p", { class: "muted" }),
      idle: el("p", { class: "muted", text: "Nothing running." }),
    };
    queueRefs.running.append(el("p", { class: "muted", text: "Running:" }), queueRefs.prompt,
      queueRefs.bar, queueRefs.step);
    $("dash-queue").append(queueRefs.waiting, queueRefs.running, queueRefs.idle,
      el("a", { href: "#/queue", text: "Open the queue" }));
  }
  const refs = queueRefs;
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
