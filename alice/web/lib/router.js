/* Which page shows (from the URL's #/name), and its polling: a page object may have
 * `enter()` (run on showing it), `refresh()` (run then, and every `every` ms while shown). */
import { $, el, setText } from "./dom.js";

let pages = {};
let current = null;
let pollTimer = null;
let routeSeq = 0;

/** The name of the page on show. */
export const currentPage = () => current;

/** Show the pages (name: page object, each with a #page-<name> section) and follow the URL. */
export function startRouter(registry) {
  pages = registry;
  window.addEventListener("hashchange", route);
  route();
}

/** An error box under the page's heading, or none when `error` is null. */
export function pageError(name, error) {
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
  const name = match && pages[match[1]] ? match[1] : "dashboard";
  const seq = ++routeSeq;
  clearTimeout(pollTimer);
  current = name;
  for (const [page] of Object.entries(pages)) $(`page-${page}`).hidden = page !== name;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const page = pages[name];
  document.title = `${page.title} · ALICE`;
  try {
    if (page.enter) await page.enter();
    pageError(name, null);
  } catch (error) {
    pageError(name, error);
  }
  poll(seq);
}

async function poll(seq) {
  const page = pages[current];
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
