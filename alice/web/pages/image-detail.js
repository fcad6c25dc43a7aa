/* One stored image in a dialog with its parameters, and deleting an image (with a question). */
import { api, imageUrl } from "../lib/api.js";
import { el, fillKv } from "../lib/dom.js";
import { fmtBytes, fmtDate } from "../lib/format.js";
import { confirmBox, overlay, toast } from "../lib/overlays.js";
import { reuse, useAsInput } from "./generate.js";

/** Resolves true when the image was deleted (or tried to be), false when the user said no. */
export async function deleteImage(item, after) {
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

/** `item` is a `/v1/gallery` entry; `afterDelete` runs once it is deleted from the dialog. */
export function openImageDetail(item, afterDelete) {
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
