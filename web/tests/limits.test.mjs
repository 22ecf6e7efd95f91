// A message over the server's frame limit (64 KiB by default; crates/server/src/config.rs) but
// under its text limit (16 000 characters): refused in the page, once, without the connection
// going round in circles.

import assert from 'node:assert/strict';
import {
  askAndWait,
  connection,
  messageBox,
  metric,
  recordConnection,
  sendButton,
  signInAsDev,
  threadsOf,
  messagesOf,
  tokenOf,
  waitFor,
  waitForText,
  webTest,
  yourMessages,
} from './harness.mjs';

/** 11 000 characters of U+0001: JSON writes each as `\u0001` (6 bytes), so the frame is over 64 KiB. */
const OVERSIZED = '\u0001'.repeat(11_000);

/** A text without its control characters, to show in a failure. */
const readable = (/** @type {string} */ text) => text.replace(/[\u0000-\u0008\u000b-\u001f]+/g, (run) => `<${run.length} control characters>`);

webTest('a message over the frame limit is refused in the page, naming its size, and the connection stays', {}, async ({ page, server }) => {
  // Every WebSocket the page opens, counted from the start.
  let sockets = 0;
  page.on('websocket', () => {
    sockets += 1;
  });
  await signInAsDev(page);
  const states = await recordConnection(page);
  assert.equal(await metric(server, 'switchboard_connections'), 1, 'the page holds one connection');
  assert.ok(JSON.stringify({ text: OVERSIZED }).length > 64 * 1024, 'the message makes a frame over 64 KiB');

  await messageBox(page).fill(OVERSIZED);
  await sendButton(page).click();
  // The page says it is not sent, and names the size (the message's or the limit).
  const said = await waitFor(
    'the page to say the message was not sent, naming the size',
    async () => {
      const alerts = await page.getByRole('alert').allInnerTexts();
      const notSent = (await yourMessages(page).allInnerTexts()).map((t) => t.slice(t.indexOf('Not sent')));
      return [...alerts, ...notSent]
        .map((t) => t.trim())
        .find((t) => /\d/.test(t) && /bytes|KiB|kB|KB|characters|too (large|long)|limit/i.test(t));
    },
    {
      seen: async () =>
        `alerts: ${JSON.stringify(await page.getByRole('alert').allInnerTexts())}; "You" articles: ${JSON.stringify((await yourMessages(page).allInnerTexts()).map(readable))}`,
    },
  );
  assert.ok(/not sent|too (large|long)|limit|at most/i.test(said), `the sentence says it was refused: ${said}`);

  await waitForText(connection(page), /^Connected$/, 'the "Connection" status after the refusal');
  assert.equal(await metric(server, 'switchboard_connections'), 1, `one connection after the refusal (statuses: ${JSON.stringify(await states())})`);
  const first = {
    sockets,
    connections: await metric(server, 'switchboard_connections'),
    tooLarge: await metric(server, 'switchboard_errors_total', { code: 'message_too_large' }),
  };

  // The page goes on working: a question and its answer. Meanwhile it opens no more sockets and
  // sends the big message no more.
  const answer = await askAndWait(page, 'How can we cut our LLM costs?');
  assert.ok(answer.length > 20, `an answer after the refusal: ${answer}`);
  await waitForText(connection(page), /^Connected$/, 'the "Connection" status after the answer');
  const second = {
    sockets,
    connections: await metric(server, 'switchboard_connections'),
    tooLarge: await metric(server, 'switchboard_errors_total', { code: 'message_too_large' }),
  };
  assert.deepEqual(second, { ...first, connections: 1 }, `the page does not keep reconnecting or resending (before the question, then after its answer; statuses: ${JSON.stringify(await states())})`);

  // The server has only the question: the big message never became a message.
  const token = await tokenOf(server);
  const threads = await threadsOf(server, token);
  const stored = (await Promise.all(threads.map((t) => messagesOf(server, token, t.id)))).flat();
  assert.ok(!stored.some((m) => m.text.includes('\u0001')), 'the big message is not stored');
});
