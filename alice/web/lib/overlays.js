/* Modal boxes, the confirm question and the short notes (toasts) at the corner. */
import { $, el } from "./dom.js";

export function overlay(className) {
  const box = el("div", { class: `modal-box ${className || ""}`, role: "dialog", "aria-modal": "true" });
  const root = el("div", { class: "modal" }, box);
  document.body.append(root);
  return { root, box, close: () => root.remove() };
}

/** Resolves true for OK, false for Cancel, Escape or a click beside the box. */
export function confirmBox(message, okLabel = "OK", detail = "") {
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

export function toast(message, bad = false) {
  const node = el("div", { class: `toast${bad ? " bad" : ""}`, text: message });
  $("toasts").append(node);
  setTimeout(() => node.remove(), bad ? 6000 : 3000);
}
