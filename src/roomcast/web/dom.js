// One helper to build DOM elements: text goes in as text, never as HTML.

/** `el("a", {href, text, onclick}, ...children)`. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") node.style.cssText = value; // the page's CSP refuses style attributes, not the CSSOM
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined && child !== false) node.append(child);
  return node;
}

/** A name for a control that survives a re-render: its id, data-focus, aria-label or text. */
function focusKey(node) {
  if (node.id) return `#${node.id}`;
  return node.dataset.focus || node.getAttribute("aria-label") || node.textContent;
}

/**
 * Run `render()`, which rebuilds the inside of `container`, and give the focus back to the
 * control that had it (found again by id, label or text), so keyboard users keep their place.
 */
export function keepFocus(container, render) {
  const active = document.activeElement;
  const inside = active && active !== document.body && container.contains(active);
  const key = inside ? focusKey(active) : null;
  const tag = inside ? active.tagName : null;
  render();
  if (!inside || container.contains(active)) return;
  for (const candidate of container.querySelectorAll(tag)) {
    if (focusKey(candidate) === key) {
      candidate.focus();
      return;
    }
  }
}
