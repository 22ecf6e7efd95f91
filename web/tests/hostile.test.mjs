// Hostile text runs nothing: a user's message, a thread's title and a model's answer full of
// HTML and script are shown as text; no element of theirs gets into the page, no link of theirs
// is live.

import assert from 'node:assert/strict';
import {
  api,
  askAndWait,
  lastAnswer,
  messagesLog,
  signInAsDev,
  threadLink,
  waitForThread,
  threadsNav,
  tokenOf,
  waitForAnswer,
  waitForMessage,
  waitVisible,
  webTest,
  yourMessages,
} from './harness.mjs';

const MESSAGE = '<img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script> <b>bold?</b> [x](javascript:window.__pwned=3)';
const TITLE = '<img src=x onerror=window.__pwned=4>';

/** The model's answer: Markdown with every kind of trap in it. */
const ANSWER = [
  '# Report <script>window.__pwned=5</script>',
  '',
  'Some **bold** text and `<code>` <img src=x onerror="window.__pwned=6"> inline.',
  '',
  '<div onmouseover="window.__pwned=7">raw html block</div>',
  '',
  '[click me](javascript:window.__pwned=8) and [also me](JaVaScRiPt:window.__pwned=9) and [data](data:text/html,<script>window.__pwned=10</script>)',
  '',
  '[spaced]( javascript:window.__pwned=11 ) and <a href="javascript:window.__pwned=12">raw link</a>',
  '',
  '![pic](x" onerror="window.__pwned=13)',
  '',
  '<iframe src="javascript:window.__pwned=14"></iframe><svg onload="window.__pwned=15"></svg>',
  '',
  '- item <style>body{display:none}</style>',
  '- [a fine link](https://example.com/docs)',
  '',
  '```html',
  '<script>window.__pwned=16</script>',
  '```',
].join('\n');

/**
 * What of the hostile text got into the page as elements or live links.
 * @param {import('playwright-core').Page} page
 */
async function dangers(page) {
  return page.evaluate(() => {
    const found = [];
    if (/** @type {any} */ (window).__pwned !== undefined) found.push(`window.__pwned = ${/** @type {any} */ (window).__pwned}`);
    for (const el of Array.from(document.querySelectorAll('*'))) {
      for (const attr of Array.from(el.attributes)) {
        if (/^on/i.test(attr.name)) found.push(`<${el.tagName.toLowerCase()} ${attr.name}="${attr.value}">`);
        if (/^\s*(javascript|data|vbscript):/i.test(attr.value) && /^(href|src|xlink:href|action|formaction|srcdoc)$/i.test(attr.name)) {
          // The app's own images may be data: URLs (the CSP allows img-src data:); only text's count.
          if (!(attr.name === 'src' && el.tagName === 'IMG' && /^data:image\//i.test(attr.value))) {
            found.push(`<${el.tagName.toLowerCase()} ${attr.name}="${attr.value}">`);
          }
        }
      }
    }
    for (const script of Array.from(document.querySelectorAll('script'))) {
      if ((script.textContent ?? '').includes('__pwned')) found.push('a <script> from the text');
    }
    for (const tag of ['iframe', 'object', 'embed', 'style:not([data-app])', 'link[rel=import]']) {
      for (const el of Array.from(document.querySelectorAll(`body ${tag}`))) found.push(`<${el.tagName.toLowerCase()}> in the body`);
    }
    for (const img of Array.from(document.querySelectorAll('img'))) {
      const src = img.getAttribute('src') ?? '';
      if (src === 'x') found.push(`<img src="${src}"> from the text`);
    }
    return found;
  });
}

webTest(
  'hostile text in a message, a thread title and a model answer is shown as text and runs nothing',
  { llm: { answer: ANSWER, chunkDelayMs: 0, wordsPerChunk: 3 } },
  async ({ page, server }) => {
    await signInAsDev(page);

    // A thread named with HTML, made through the API (the app names threads after their first
    // message); the app lists it at its next load.
    const token = await tokenOf(server);
    await api(server, 'POST', '/api/threads', { token, body: { title: TITLE } });
    await page.reload();
    await waitForThread(page, TITLE, `the thread named ${TITLE} in "Threads", as text`);

    // A new chat: the message and the model's answer.
    await threadsNav(page).getByRole('button', { name: 'New chat', exact: true }).click();
    await askAndWait(page, MESSAGE);
    const mine = await yourMessages(page).last().innerText();
    assert.ok(mine.includes(MESSAGE), `the message is shown as the text typed:\n  shown: ${mine}\n  typed: ${MESSAGE}`);
    const answer = await lastAnswer(page).innerText();
    assert.match(answer, /click me/, `the answer's link text shows: ${answer}`);
    assert.match(answer, /raw html block/, `the raw HTML shows as text: ${answer}`);
    assert.match(answer, /<script>window\.__pwned=16<\/script>/, `the code block shows its HTML as text: ${answer}`);
    assert.match(answer, /<div onmouseover=/, `the raw HTML block shows as text, not as an element: ${answer}`);

    // The one fine link is a link; the javascript: ones are not live links.
    const links = lastAnswer(page).getByRole('link');
    const hrefs = [];
    for (let i = 0; i < (await links.count()); i++) hrefs.push(await links.nth(i).getAttribute('href'));
    assert.ok(hrefs.includes('https://example.com/docs'), `the https link is a link: ${JSON.stringify(hrefs)}`);
    for (const href of hrefs) {
      assert.match(String(href), /^(https?:|mailto:|#|\/)/i, `only safe links are live: ${JSON.stringify(hrefs)}`);
    }
    const clickMe = lastAnswer(page).getByText('click me', { exact: true });
    if ((await clickMe.count()) > 0) {
      await clickMe.first().click();
      assert.equal(await page.evaluate(() => /** @type {any} */ (window).__pwned), undefined, 'clicking "click me" runs nothing');
    }
    // Hovering the raw block runs nothing either.
    await lastAnswer(page).getByText(/raw html block/).first().hover();

    assert.deepEqual(await dangers(page), [], 'nothing of the hostile text is an element or a live link');
    assert.equal(await threadsNav(page).locator('img').count(), 0, 'the title made no image in "Threads"');

    // The same thread again, from the server's history (another way into the page).
    await page.reload();
    await signInAsDev(page);
    await threadLink(page, /^<img src=x onerror="window.__pwned=1">/).first().click();
    await waitForMessage(page, MESSAGE, 0);
    await waitForAnswer(page);
    assert.match(await lastAnswer(page).innerText(), /click me/);
    assert.deepEqual(await dangers(page), [], 'nothing of the hostile text is an element or a live link, from the history');
    assert.ok((await messagesLog(page).innerText()).includes(MESSAGE), 'the message is shown as text, from the history');
  },
);
