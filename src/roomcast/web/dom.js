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

/** Controls kept whole or replaced whole, never patched inside: a listener belongs to what
 * its control shows. */
const WHOLE = new Set(["A", "BUTTON", "FORM", "INPUT", "SELECT", "TEXTAREA"]);

/**
 * Make the children of `old` match those of `fresh`, keeping every node that is already
 * equal. A streaming answer is shown again at every append: the Stop button under the
 * pointer, an open picker and a text selection must survive that.
 */
export function patchChildren(old, fresh) {
  const wanted = [...fresh.childNodes];
  wanted.forEach((node, index) => {
    const have = old.childNodes[index];
    if (!have) old.append(node);
    else if (have.isEqualNode(node)) return;
    else if (have.nodeType === Node.TEXT_NODE && node.nodeType === Node.TEXT_NODE) have.nodeValue = node.nodeValue;
    else if (have.nodeType === Node.ELEMENT_NODE && have.nodeName === node.nodeName && !WHOLE.has(have.nodeName)) {
      for (const { name } of [...have.attributes]) if (!node.hasAttribute(name)) have.removeAttribute(name);
      for (const { name, value } of node.attributes) {
        if (have.getAttribute(name) === value) continue;
        if (name === "style") have.style.cssText = node.style.cssText; // the CSP refuses style attributes
        else have.setAttribute(name, value);
      }
      patchChildren(have, node);
    } else have.replaceWith(node);
  });
  while (old.childNodes.length > wanted.length) old.lastChild.remove();
}
