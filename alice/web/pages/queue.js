/* Queue: the running and waiting jobs (cancel), and the finished ones (reuse their settings). */
import { api, imageUrl } from "../lib/api.js";
import { $, el, progressBar, reconcile, setProgress, setText } from "../lib/dom.js";
import { fmtAgo, fmtSeconds } from "../lib/format.js";
import { FINISHED, jobSettings } from "../lib/jobs.js";
import { confirmBox, toast } from "../lib/overlays.js";
import { currentPage } from "../lib/router.js";
import { reuse } from "./generate.js";

export const queue = {
  title: "Queue",
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
    if (currentPage() === "queue") await queue.refresh();
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
    `seed ${p.seed}`, `via ${job.source}`, job.owner && `by ${job.owner}`, fmtAgo(job.created)].filter(Boolean).join(" · "));
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
