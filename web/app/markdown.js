// Markdown to DOM nodes, safely: every piece of text becomes a text node, so whatever a user, a
// thread title or a language model writes (`<script>`, `<img onerror>`, raw HTML) is shown as
// the characters it is. Links are live only for http, https and mailto addresses.
//
// It covers what the agents write: headings, paragraphs, lists, tables, code, quotes, rules,
// and inline code, bold, italics and links.

import { h } from './dom.js';

/**
 * The Markdown as a fragment of elements.
 * @param {string} source
 * @returns {DocumentFragment}
 */
export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  const lines = source.replace(/\r\n?/g, '\n').split('\n');
  let index = 0;
  /** @type {string[]} */
  let paragraph = [];
  const flush = () => {
    if (paragraph.length > 0) fragment.append(h('p', {}, inline(paragraph.join(' '))));
    paragraph = [];
  };
  while (index < lines.length) {
    const line = lines[index];
    const fence = line.match(/^\s*(```|~~~)\s*([\w+-]*)\s*$/);
    if (fence) {
      flush();
      const body = [];
      index += 1;
      while (index < lines.length && !lines[index].trim().startsWith(fence[1])) {
        body.push(lines[index]);
        index += 1;
      }
      index += 1;
      const code = h('code', {}, body.join('\n'));
      if (fence[2]) code.dataset.language = fence[2];
      fragment.append(h('pre', {}, code));
      continue;
    }
    if (line.trim() === '') {
      flush();
      index += 1;
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*?)\s*#*\s*$/);
    if (heading) {
      flush();
      // An answer's `#` is a section of the answer, not of the page: h3 and below.
      const level = Math.min(6, heading[1].length + 2);
      const tag = /** @type {'h3' | 'h4' | 'h5' | 'h6'} */ (`h${level}`);
      fragment.append(h(tag, {}, inline(heading[2])));
      index += 1;
      continue;
    }
    if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
      flush();
      fragment.append(h('hr'));
      index += 1;
      continue;
    }
    if (isTableRow(line) && index + 1 < lines.length && isTableDivider(lines[index + 1])) {
      flush();
      const head = cells(line);
      const align = cells(lines[index + 1]).map((cell) =>
        cell.endsWith(':') ? (cell.startsWith(':') ? 'center' : 'right') : 'left',
      );
      index += 2;
      const rows = [];
      while (index < lines.length && isTableRow(lines[index])) {
        rows.push(cells(lines[index]));
        index += 1;
      }
      const cell = (/** @type {'th' | 'td'} */ tag, /** @type {string} */ text, /** @type {number} */ column) =>
        h(tag, { class: `align-${align[column] ?? 'left'}` }, inline(text));
      fragment.append(
        h(
          'div',
          { class: 'table-scroll' },
          h(
            'table',
            {},
            h('thead', {}, h('tr', {}, head.map((text, column) => cell('th', text, column)))),
            h('tbody', {}, rows.map((row) => h('tr', {}, head.map((_, column) => cell('td', row[column] ?? '', column))))),
          ),
        ),
      );
      continue;
    }
    const item = listItem(line);
    if (item) {
      flush();
      const ordered = item.ordered;
      const list = ordered ? h('ol', {}) : h('ul', {});
      if (ordered && item.number !== 1) list.setAttribute('start', String(item.number));
      while (index < lines.length) {
        const next = listItem(lines[index]);
        if (!next || next.ordered !== ordered) break;
        const text = [next.text];
        index += 1;
        // Lines indented under an item continue it.
        while (index < lines.length && /^\s{2,}\S/.test(lines[index]) && !listItem(lines[index])) {
          text.push(lines[index].trim());
          index += 1;
        }
        list.append(h('li', {}, inline(text.join(' '))));
      }
      fragment.append(list);
      continue;
    }
    if (/^\s*>/.test(line)) {
      flush();
      const quoted = [];
      while (index < lines.length && /^\s*>/.test(lines[index])) {
        quoted.push(lines[index].replace(/^\s*>\s?/, ''));
        index += 1;
      }
      fragment.append(h('blockquote', {}, renderMarkdown(quoted.join('\n'))));
      continue;
    }
    paragraph.push(line.trim());
    index += 1;
  }
  flush();
  return fragment;
}

/** @param {string} line */
function isTableRow(line) {
  return /^\s*\|.*\|\s*$/.test(line);
}

/** @param {string} line */
function isTableDivider(line) {
  return /^\s*\|(\s*:?-{1,}:?\s*\|)+\s*$/.test(line);
}

/** @param {string} line */
function cells(line) {
  const inner = line.trim().replace(/^\|/, '').replace(/\|$/, '');
  return inner.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, '|'));
}

/**
 * @param {string} line
 * @returns {{ ordered: boolean, number: number, text: string } | null}
 */
function listItem(line) {
  const bullet = line.match(/^\s{0,3}[-*+]\s+(.*)$/);
  if (bullet) return { ordered: false, number: 0, text: bullet[1] };
  const numbered = line.match(/^\s{0,3}(\d{1,9})[.)]\s+(.*)$/);
  if (numbered) return { ordered: true, number: Number(numbered[1]), text: numbered[2] };
  return null;
}

/**
 * The inline spans; the earliest match wins. Each span's length is bounded, so that text full of
 * unclosed `[`, `*` or backticks costs time in proportion to its length, not to its square.
 */
const SPANS = [
  { kind: 'code', pattern: /`([^`\n]{1,1000})`/g },
  { kind: 'link', pattern: /\[([^\]\n]{1,500})\]\(\s*([^)\s]{1,2000})(?:\s+"[^"\n]{0,200}")?\s*\)/g },
  { kind: 'strong', pattern: /\*\*(?=\S)([^\n]{0,1000}?\S)\*\*|__(?=\S)([^\n]{0,1000}?\S)__/g },
  { kind: 'em', pattern: /\*(?=[^\s*])([^*\n]{0,1000}?[^\s*])\*|(?<![\w])_(?=[^\s_])([^_\n]{0,1000}?[^\s_])_(?![\w])/g },
];

/**
 * Inline Markdown as nodes.
 * @param {string} text
 * @returns {Node[]}
 */
export function inline(text) {
  /** @type {Node[]} */
  const out = [];
  let position = 0;
  // Each span's next match at or after `position`: looked for again only once the text before
  // it is used up (the leftmost match from an earlier position is also the leftmost from here).
  /** @type {(RegExpExecArray | null | undefined)[]} */
  const next = SPANS.map(() => undefined);
  while (position < text.length) {
    /** @type {{ kind: string, match: RegExpExecArray } | null} */
    let first = null;
    SPANS.forEach((span, index) => {
      let match = next[index];
      if (match === undefined || (match !== null && match.index < position)) {
        span.pattern.lastIndex = position;
        match = span.pattern.exec(text);
        next[index] = match;
      }
      if (match && (first === null || match.index < first.match.index)) first = { kind: span.kind, match };
    });
    if (first === null) {
      out.push(document.createTextNode(text.slice(position)));
      break;
    }
    const { kind, match } = /** @type {{ kind: string, match: RegExpExecArray }} */ (first);
    const start = match.index;
    if (start > position) out.push(document.createTextNode(text.slice(position, start)));
    const inner = match[1] ?? match[2] ?? '';
    if (kind === 'code') {
      out.push(h('code', {}, inner));
    } else if (kind === 'link') {
      out.push(link(inner, match[2]));
    } else if (kind === 'strong') {
      out.push(h('strong', {}, inline(inner)));
    } else {
      out.push(h('em', {}, inline(inner)));
    }
    position = start + match[0].length;
  }
  return out;
}

/**
 * A link, live only for a safe address; anything else (`javascript:`, `data:`, …) is shown as
 * its text and its address, not as a link.
 * @param {string} text
 * @param {string} address
 */
function link(text, address) {
  const url = safeUrl(address);
  if (url === null) return h('span', { class: 'unsafe-link' }, inline(text), ` (${address})`);
  return h('a', { href: url, target: '_blank', rel: 'noopener noreferrer nofollow' }, inline(text));
}

/**
 * The address when it is http, https or mailto; else null.
 * @param {string} address
 * @returns {string | null}
 */
export function safeUrl(address) {
  try {
    const url = new URL(address, window.location.origin);
    return ['http:', 'https:', 'mailto:'].includes(url.protocol) ? url.href : null;
  } catch {
    return null;
  }
}
