// Two tabs of one person, and the connection to a server that goes away and comes back.

import assert from 'node:assert/strict';
import {
  answers,
  ask,
  askAndWait,
  connection,
  lastAnswer,
  recordConnection,
  messagesLog,
  signInAsDev,
  threadLink,
  waitForThread,
  waitFor,
  waitForAnswer,
  waitForMessage,
  waitForText,
  waitSignedIn,
  waitVisible,
  webTest,
  yourMessages,
} from './harness.mjs';

const flat = (/** @type {string} */ text) => text.replace(/\s+/g, ' ').trim();

const SLOW_ANSWER =
  'One: route short calls to a cheaper model. Two: cache repeated prompts. Three: batch the ' +
  'nightly job. Four: trim long prompts. Five: fix failing calls. Six: done.';

webTest(
  'a run asked in one tab shows live in the other',
  { llm: { answer: SLOW_ANSWER, chunkDelayMs: 80 } },
  async ({ page, context }) => {
    await signInAsDev(page);
    const other = await context.newPage();
    await other.goto('/');
    // One browser profile: the other tab is signed in already.
    await waitSignedIn(other);

    const first = 'How can we cut our LLM costs?';
    await askAndWait(page, first);
    // The thread shows in the other tab's "Threads" without a reload.
    await waitForThread(other, first, `the thread "${first}" in the other tab's "Threads"`);
    await threadLink(other, first).click();
    await waitForMessage(other, first, 0);
    await waitForAnswer(other);

    // A second question in the same thread, asked in the first tab: the other tab sees the
    // message and the answer as it streams.
    const second = 'And which model should the search feature use?';
    await ask(page, second);
    await waitForMessage(other, second, 1);
    await waitFor(
      'the other tab to show the second answer while it streams',
      async () => {
        if ((await answers(other).count()) < 2) return false;
        const answer = answers(other).nth(1);
        return (await answer.getAttribute('aria-busy')) === 'true' && (await answer.innerText()).includes('One:');
      },
      { timeout: 30_000, seen: () => messagesLog(other).innerText() },
    );
    const here = flat(await waitForAnswer(page, { count: 2 }));
    const there = flat(await waitForAnswer(other, { count: 2 }));
    assert.equal(there, here, 'both tabs show the same answer');
    assert.ok(there.includes(flat(SLOW_ANSWER)), `the other tab shows the whole answer: ${there}`);
    assert.equal(await yourMessages(other).count(), 2, 'the other tab shows each message once');
    assert.equal(await answers(other).count(), 2, 'the other tab shows each answer once');
  },
);

webTest('"Connection": connected, reconnecting while the server is down, connected again', {}, async ({ page, server }) => {
  await signInAsDev(page);
  await waitForText(connection(page), /^Connected$/, 'the "Connection" status');
  await askAndWait(page, 'How can we cut our LLM costs?');

  const shown = await recordConnection(page);
  await server.kill();
  // "Reconnecting…" first (then, after failed tries, "Cannot connect: <why>").
  await waitFor('the "Connection" status to read "Reconnecting…" once the server is gone', async () => (await shown()).some((t) => t.startsWith('Reconnecting…')), {
    seen: async () => JSON.stringify(await shown()),
  });

  const again = await server.restart();
  assert.equal(again.port, server.port, 'the server came back on the same port');
  await waitForText(connection(page), /^Connected$/, 'the "Connection" status once the server is back', { timeout: 45_000 });
  const states = await shown();
  for (const text of states) {
    assert.match(text, /^(Connected|Reconnecting….*|Cannot connect: .+)$/, `each status is one of the three of web/README.md: ${JSON.stringify(states)}`);
  }

  // The conversation is still there, and a new question works.
  await waitForMessage(page, 'How can we cut our LLM costs?', 0);
  const question = 'What does a gpt-4o call cost?';
  await ask(page, question);
  const text = await waitForAnswer(page, { count: 2 });
  assert.ok(text.length > 20, `an answer after the reconnect: ${text}`);
  assert.equal(await answers(page).count(), 2, 'two answers: none doubled by the reconnect');
  assert.ok((await lastAnswer(page).innerText()).length > 0);
});
