// A small, safe Markdown renderer: it builds DOM nodes and sets only text and a few
// attributes, never innerHTML, so no message can inject HTML or script.
//
// Supported: paragraphs, line breaks, # headings, - and 1. lists, > quotes, ``` code
// blocks, `code`, **bold**, *italic* / _italic_, ~~strike~~, [links](https://...) and bare
// https:// URLs (http, https and mailto only; they open in a new tab, without a referrer).

const SAFE_URL = /^(https?:\/\/|mailto:)/i;

/** Render `text` as Markdown into a new DocumentFragment. */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const lines = String(text ?? "").replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*```\s*([\w+-]*)\s*$/);
    if (fence) {
      const code = [];
      i += 1;
      while (i < lines.length && !/^\s*```\s*$/.test(lines[i])) code.push(lines[i++]);
      i += 1; // the closing fence (or the end, while an answer is still streaming)
      const pre = el("pre");
      const codeEl = el("code");
      if (fence[1]) codeEl.dataset.lang = fence[1];
      codeEl.textContent = code.join("\n");
      pre.append(codeEl);
      fragment.append(pre);
      continue;
    }
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      const h = el(`h${Math.min(6, heading[1].length + 2)}`);
      inline(h, heading[2]);
      fragment.append(h);
      i += 1;
      continue;
    }
    if (/^\s*([-*+]|\d+[.)])\s+/.test(line)) {
      const ordered = /^\s*\d+[.)]\s+/.test(line);
      const list = el(ordered ? "ol" : "ul");
      while (i < lines.length && /^\s*([-*+]|\d+[.)])\s+/.test(lines[i])) {
        const item = el("li");
        inline(item, lines[i].replace(/^\s*([-*+]|\d+[.)])\s+/, ""));
        list.append(item);
        i += 1;
      }
      fragment.append(list);
      continue;
    }
    if (/^\s*>/.test(line)) {
      const quote = el("blockquote");
      const quoted = [];
      while (i < lines.length && /^\s*>/.test(lines[i])) quoted.push(lines[i++].replace(/^\s*>\s?/, ""));
      quote.append(renderMarkdown(quoted.join("\n")));
      fragment.append(quote);
      continue;
    }
    const paragraph = el("p");
    const body = [];
    while (i < lines.length && lines[i].trim() && !/^\s*(```|#{1,6}\s|>|[-*+]\s|\d+[.)]\s)/.test(lines[i])) body.push(lines[i++]);
    if (!body.length) body.push(lines[i++]);
    body.forEach((part, n) => {
      if (n) paragraph.append(el("br"));
      inline(paragraph, part);
    });
    fragment.append(paragraph);
  }
  return fragment;
}

function el(tag) {
  return document.createElement(tag);
}

const INLINE = [
  { re: /`([^`]+)`/, make: (m) => withText("code", m[1]) },
  { re: /\*\*([^*]+)\*\*/, make: (m) => nested("strong", m[1]) },
  { re: /~~([^~]+)~~/, make: (m) => nested("s", m[1]) },
  { re: /(?<![\w*])\*([^*\s][^*]*?)\*(?!\w)/, make: (m) => nested("em", m[1]) },
  { re: /(?<!\w)_([^_\s][^_]*?)_(?!\w)/, make: (m) => nested("em", m[1]) },
  { re: /\[([^\]]+)\]\(([^)\s]+)\)/, make: (m) => link(m[1], m[2]) },
  { re: /\bhttps?:\/\/[^\s<>()]+[^\s<>().,;:!?'"]/, make: (m) => link(m[0], m[0]) },
];

/** Append `text` to `parent`, with inline Markdown turned into elements. */
function inline(parent, text) {
  let rest = text;
  while (rest) {
    let best = null;
    for (const rule of INLINE) {
      const m = rest.match(rule.re);
      if (m && (best === null || m.index < best.m.index)) best = { m, rule };
    }
    if (!best) {
      parent.append(document.createTextNode(rest));
      return;
    }
    if (best.m.index) parent.append(document.createTextNode(rest.slice(0, best.m.index)));
    parent.append(best.rule.make(best.m));
    rest = rest.slice(best.m.index + best.m[0].length);
  }
}

function withText(tag, text) {
  const node = el(tag);
  node.textContent = text;
  return node;
}

function nested(tag, text) {
  const node = el(tag);
  inline(node, text);
  return node;
}

function link(label, href) {
  if (!SAFE_URL.test(href)) return document.createTextNode(label);
  const a = el("a");
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  a.textContent = label;
  return a;
}
