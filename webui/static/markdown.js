// A small, safe Markdown subset for model answers: fenced code blocks, inline code, bold,
// headings and paragraphs. It never parses HTML: every piece of the answer becomes a text node
// (textContent), so markup in an answer is shown as the characters it is, never run.

const FENCE = /^```([^\n`]*)\n?/m;
const INLINE = /(`[^`\n]+`|\*\*[^*\n]+\*\*)/;

function inline(parent, text) {
  for (const part of text.split(INLINE)) {
    if (!part) continue;
    if (part.length > 2 && part.startsWith("`") && part.endsWith("`")) {
      const code = document.createElement("code");
      code.textContent = part.slice(1, -1);
      parent.append(code);
    } else if (part.length > 4 && part.startsWith("**") && part.endsWith("**")) {
      const strong = document.createElement("strong");
      strong.textContent = part.slice(2, -2);
      parent.append(strong);
    } else {
      parent.append(document.createTextNode(part));
    }
  }
}

function paragraphs(parent, text) {
  for (const block of text.split(/\n{2,}/)) {
    const trimmed = block.replace(/^\n+|\n+$/g, "");
    if (!trimmed) continue;
    const heading = /^(#{1,6})\s+(.*)$/.exec(trimmed);
    const p = document.createElement("p");
    if (heading && !trimmed.includes("\n")) {
      const strong = document.createElement("strong");
      inline(strong, heading[2]);
      p.append(strong);
    } else {
      inline(p, trimmed);
    }
    parent.append(p);
  }
}

// Replace the children of `container` with `text` rendered; an unclosed fence (an answer still
// streaming) renders as a code block up to the end.
export function renderMarkdown(container, text) {
  const fragment = document.createDocumentFragment();
  let rest = text;
  while (rest) {
    const open = FENCE.exec(rest);
    if (!open) {
      paragraphs(fragment, rest);
      break;
    }
    paragraphs(fragment, rest.slice(0, open.index));
    const body = rest.slice(open.index + open[0].length);
    const close = body.search(/^```[ \t]*$/m);
    const pre = document.createElement("pre");
    const code = document.createElement("code");
    const language = open[1].trim();
    if (language) pre.dataset.language = language;
    code.textContent = (close < 0 ? body : body.slice(0, close)).replace(/\n$/, "");
    pre.append(code);
    fragment.append(pre);
    if (close < 0) break;
    rest = body.slice(close).replace(/^```[ \t]*\n?/, "");
  }
  container.replaceChildren(fragment);
}
