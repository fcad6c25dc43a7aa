/* The header's status pill and the Queue link's count, from `/health` every 5 s. */
import { fetchHealth } from "./api.js";
import { $, setText } from "./dom.js";

export function startHealthPill() {
  refreshHealth();
  setInterval(refreshHealth, 5000);
}

async function refreshHealth() {
  const pill = $("server-status");
  try {
    const health = await fetchHealth();
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
