/* Gallery: the stored images, newest first, a page at a time. */
import { api, imageUrl } from "../lib/api.js";
import { $, el, setText } from "../lib/dom.js";
import { fmtAgo, fmtDate } from "../lib/format.js";
import { pageError } from "../lib/router.js";
import { reuse } from "./generate.js";
import { deleteImage, openImageDetail } from "./image-detail.js";

export const gallery = {
  title: "Gallery",
  every: 5000,
  offset: 0,
  key: "",
  wire() {
    const reload = () => this.reload().catch((error) => pageError("gallery", error));
    $("gal-prev").addEventListener("click", () => {
      this.offset = Math.max(0, this.offset - Number($("gal-size").value));
      reload();
    });
    $("gal-next").addEventListener("click", () => {
      this.offset += Number($("gal-size").value);
      reload();
    });
    $("gal-size").addEventListener("change", () => {
      this.offset = 0;
      reload();
    });
  },
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
