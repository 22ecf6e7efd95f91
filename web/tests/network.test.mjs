// The device's network goes away and comes back (not a reload, not a server restart): a run that
// streams on meanwhile, a message sent while offline, "Stop" pressed while cut off.

import assert from 'node:assert/strict';
import {
  answers,
  api,
  ask,
  checkStreamed,
  connection,
  flat,
  lastAnswer,
  LONG_ANSWER,
  messagesLog,
  messagesOf,
  recordAnswers,
  recordConnection,
  signInAsDev,
  stopButton,
  threadsOf,
  tokenOf,
  waitFor,
  waitForAnswer,
  waitForText,
  waitGone,
  waitVisible,
  webTest,
  yourMessages,
} from './harness.mjs';
import { pieces } from './fake-llm.mjs';

const QUESTION = 'How can we cut our LLM costs?';

/**
 * Cuts the browser profile off the network and waits until the "Connection" status has left
 * "Connected"; returns the first status it showed after.
 * @param {import('playwright-core').BrowserContext} context
 * @param {() => Promise<string[]>} shown the statuses shown so far (`recordConnection`)
 */
async function goOffline(context, shown) {
  const before = (await shown()).length;
  await context.setOffline(true);
  const next = await waitFor(
    'the "Connection" status to leave "Connected" once the device is offline',
    async () => (await shown()).slice(before).find((text) => text !== 'Connected'),
    { seen: async () => JSON.stringify(await shown()) },
  );
  return String(next);
}

/**
 * The newest thread as the server has it, and its messages.
 * @param {import('./harness.mjs').Server} server
 */
async function storedThread(server) {
  const token = await tokenOf(server);
  const threads = await threadsOf(server, token);
  assert.ok(threads.length > 0, 'the server has the thread');
  const messages = await messagesOf(server, token, threads[0].id);
  return { token, threads, messages };
}

webTest(
  'the network drops in the middle of a streamed answer: "Reconnecting…", then the rest of it, once',
  { llm: { answer: LONG_ANSWER, chunkDelayMs: 80 } },
  async ({ page, context, server, llm }) => {
    const shownAnswers = await recordAnswers(page);
    await signInAsDev(page);
    const states = await recordConnection(page);
    await ask(page, QUESTION);
    await waitFor(
      'part of the answer to show while it streams',
      async () => {
        if ((await answers(page).count()) === 0) return false;
        const answer = lastAnswer(page);
        return (await answer.getAttribute('aria-busy')) === 'true' && (await answer.innerText()).includes('Bravo');
      },
      { timeout: 30_000, seen: () => messagesLog(page).innerText() },
    );

    const status = await goOffline(context, states);
    assert.match(status, /^Reconnecting…/, `the "Connection" status says it is reconnecting: ${JSON.stringify(await states())}`);
    // The model writes on while the page is cut off: those words reach the page only later.
    const at = /** @type {import('./fake-llm.mjs').FakeLlm} */ (llm).sent();
    await waitFor('the model to write five more words while the device is offline', () => (llm?.sent() ?? 0) >= at + 5, {
      seen: () => `${llm?.sent()} pieces sent`,
    });
    assert.ok((llm?.sent() ?? 0) < pieces(LONG_ANSWER, 1).length, 'the answer is still streaming when the network comes back');
    const shownOffline = (await shownAnswers()).answers[0]?.length ?? 0;

    await context.setOffline(false);
    await waitForText(connection(page), /^Connected$/, 'the "Connection" status once the device is back online', { timeout: 30_000 });
    const text = flat(await waitForAnswer(page, { timeout: 40_000 }));

    const { messages } = await storedThread(server);
    const stored = messages.filter((m) => m.role === 'assistant');
    assert.equal(stored.length, 1, `the server stored one answer: ${JSON.stringify(messages)}`);
    assert.equal(flat(stored[0].text), flat(LONG_ANSWER), 'the server stored what the model wrote');
    assert.ok(text.includes(flat(stored[0].text)), `the page shows the stored answer:\n  page:   ${text}\n  stored: ${flat(stored[0].text)}`);
    assert.equal(await answers(page).count(), 1, 'one answer');
    assert.equal(await yourMessages(page).count(), 1, 'one message');

    // Over the whole run, before, during and after the cut, the answer only ever grew by the
    // words of the stored one.
    const all = (await shownAnswers()).answers[0];
    checkStreamed(all, stored[0].text, 'the answer (over the network cut)');
    const whole = flat(stored[0].text);
    const afterwards = (all ?? []).slice(shownOffline).filter((t) => t !== '' && t !== whole);
    assert.ok(afterwards.length >= 1, `the answer went on streaming after the network came back: ${JSON.stringify(all)}`);
  },
);

webTest('a message sent while offline waits in the page, then starts one run once the device is back online', {}, async ({ page, context, server }) => {
  await signInAsDev(page);
  const states = await recordConnection(page);
  await goOffline(context, states);

  const text = 'Which of our features costs the most?';
  await ask(page, text);
  // The page keeps it: the "You" article shows, no answer yet, nothing reached the server.
  assert.equal(await answers(page).count(), 0, 'no answer while offline');
  const token = await tokenOf(server);
  assert.deepEqual(await threadsOf(server, token), [], 'the server has nothing of the message while the device is offline');

  await context.setOffline(false);
  await waitForText(connection(page), /^Connected$/, 'the "Connection" status once the device is back online', { timeout: 30_000 });
  const answer = await waitForAnswer(page, { timeout: 30_000 });
  assert.ok(answer.length > 20, `the answer shows: ${answer}`);

  const threads = await threadsOf(server, token);
  assert.equal(threads.length, 1, `one thread: ${JSON.stringify(threads)}`);
  const messages = await messagesOf(server, token, threads[0].id);
  const mine = messages.filter((m) => m.role === 'user');
  const theirs = messages.filter((m) => m.role === 'assistant');
  assert.equal(mine.length, 1, `one user message: ${JSON.stringify(messages)}`);
  assert.equal(mine[0].text, text, 'the stored message is the one typed');
  assert.ok(mine[0].run_id, 'the message started a run');
  assert.equal(theirs.length, 1, `one answer: ${JSON.stringify(messages)}`);
  assert.equal(theirs[0].run_id, mine[0].run_id, 'the answer is of that run');
  assert.equal(await yourMessages(page).count(), 1, 'the page shows the message once');
  assert.equal(await answers(page).count(), 1, 'the page shows one answer');
});

webTest(
  '"Stop" pressed while the connection is down stops the run; the answer says so and "Stop" goes away',
  { server: { args: ['--model-latency-ms', '5000'] } },
  async ({ page, context, server }) => {
    await signInAsDev(page);
    const states = await recordConnection(page);
    await ask(page, QUESTION);
    await waitVisible(stopButton(page), 'the "Stop" button while the run is active');
    await goOffline(context, states);

    // "Stop" while cut off. A cancel the page sends over REST meanwhile is let finish (fail)
    // before the network comes back, so that the stop is the one pressed offline.
    let started = 0;
    let settled = 0;
    const isCancel = (/** @type {import('playwright-core').Request} */ request) => /\/api\/runs\/[^/]+\/cancel$/.test(new URL(request.url()).pathname);
    page.on('request', (request) => {
      if (isCancel(request)) started += 1;
    });
    const done = (/** @type {import('playwright-core').Request} */ request) => {
      if (isCancel(request)) settled += 1;
    };
    page.on('requestfailed', done);
    page.on('requestfinished', done);
    await stopButton(page).click();
    await page.evaluate(() => undefined);
    await waitFor('a cancel request sent while offline to settle', () => settled >= started, { seen: () => `${started} sent, ${settled} settled` });

    await context.setOffline(false);
    await waitForText(connection(page), /^Connected$/, 'the "Connection" status once the device is back online', { timeout: 30_000 });
    const text = await waitForAnswer(page, { timeout: 40_000 });
    assert.match(text, /Stopped: the run was cancelled after \d+(\.\d+)? (s|ms)\./, `the answer says it was cancelled: ${JSON.stringify(text)}`);
    await waitGone(stopButton(page), 'the "Stop" button');

    const { token, messages } = await storedThread(server);
    const runId = messages.find((m) => m.role === 'user')?.run_id;
    assert.ok(runId, 'the message has its run');
    const run = await api(server, 'GET', `/api/runs/${runId}`, { token });
    assert.equal(run.status, 'cancelled', 'the server cancelled the run');
  },
);
