/* Building and updating the page's nodes. Text from a user or the server only ever goes in
 * with textContent (or as a text node), never parsed as HTML. */

export const $ = (id) => document.getElementById(id);

/** createElement with properties; children are nodes or strings (strings become text nodes). */
export function el(tag, props, ...children) {
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

export function appendAll(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function setText(node, value) {
  const textValue = value === undefined || value === null ? "" : String(value);
  if (node.textContent !== textValue) node.textContent = textValue;
}

/** A definition list from [label, value] pairs; values are text (or nodes), empty ones left out. */
export function fillKv(dl, pairs) {
  dl.replaceChildren();
  for (const [label, value, cls] of pairs) {
    if (value === undefined || value === null || value === "") continue;
    dl.append(el("dt", { text: label }), appendAll(el("dd", { class: cls }), [value]));
  }
  return dl;
}

/** Options from [value, label] pairs, keeping the choice when it is still offered. */
export function fillSelect(select, options, selected) {
  const previous = selected !== undefined ? selected : select.value;
  select.replaceChildren(...options.map(([value, label]) => el("option", { value, text: label })));
  if (options.some(([value]) => value === previous)) select.value = previous;
}

/** Keep one node per item (by key), updated in place, in the items' order: no flicker,
 * and a button being clicked is never swapped for a new one under the pointer. */
export function reconcile(container, items, keyOf, create, update, empty) {
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

export function progressBar() {
  const fill = el("div", { class: "fill" });
  const bar = el("div", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" }, fill);
  return bar;
}

export function setProgress(bar, fraction, { indeterminate = false, done = false, failed = false } = {}) {
  const percent = Math.max(0, Math.min(100, Math.round((fraction || 0) * 100)));
  bar.classList.toggle("indeterminate", indeterminate);
  bar.classList.toggle("done", done);
  bar.classList.toggle("failed", failed);
  bar.firstElementChild.style.width = `${percent}%`;
  if (indeterminate) bar.removeAttribute("aria-valuenow");
  else bar.setAttribute("aria-valuenow", String(percent));
}
