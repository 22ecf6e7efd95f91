// Two tabs of one person, and the connection to a server that goes away and comes back.

import assert from 'node:assert/strict';
import {
  answers,
  ask,
  askAndWait,
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
  threadLink,
  threadsOf,
  tokenOf,
  waitFor,
  waitForAnswer,
  waitForMessage,
  waitForText,
  waitForThread,
  waitSignedIn,
  waitVisible,
  webTest,
  yourMessages,
} from './harness.mjs';

const SLOW_ANSWER =
  'One: route short calls to a cheaper model. Two: cache repeated prompts. Three: batch the ' +
  'nightly job. Four: trim long prompts. Five: fix failing calls. Six: done.';

webTest(
  'a run asked in one tab shows live in the other',
  { llm: { answer: SLOW_ANSWER, chunkDelayMs: 80 } },
  async ({ page, context }) => {
    const shownHere = await recordAnswers(page);
    await signInAsDev(page);
    const other = await context.newPage();
    const shownThere = await recordAnswers(other);
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
    // While it streamed, each tab's second answer only ever grew by the words of the answer.
    checkStreamed((await shownThere()).answers[1], SLOW_ANSWER, 'the other tab\'s second answer');
    checkStreamed((await shownHere()).answers[1], SLOW_ANSWER, 'the first tab\'s second answer');
  },
);

webTest(
  'a second device that opens the thread while its run streams marks the answer as joined, then shows it whole',
  { llm: { answer: LONG_ANSWER, chunkDelayMs: 100 } },
  async ({ page, server, newContext }) => {
    await signInAsDev(page);
    const question = 'How can we cut our LLM costs?';
    await ask(page, question);
    await waitFor(
      'the first device to show the answer while it streams',
      async () => {
        if ((await answers(page).count()) === 0) return false;
        const answer = lastAnswer(page);
        return (await answer.getAttribute('aria-busy')) === 'true' && (await answer.innerText()).includes('Alpha');
      },
      { timeout: 30_000, seen: () => messagesLog(page).innerText() },
    );

    // Another device (its own browser profile, nothing in its storage) signs in as the same
    // person and opens the thread while the run is under way.
    const device = await (await newContext()).newPage();
    await signInAsDev(device);
    await waitForThread(device, question, `the thread "${question}" in the second device's "Threads"`);
    await threadLink(device, question).click();
    await waitForMessage(device, question, 0);
    const marked = await waitFor(
      'the second device\'s answer to be marked as joined while the run is under way',
      async () => {
        if ((await answers(device).count()) === 0) return false;
        const answer = lastAnswer(device);
        const text = await answer.innerText();
        return (await answer.getAttribute('aria-busy')) === 'true' && /joined/i.test(text) ? text : false;
      },
      { seen: () => messagesLog(device).innerText() },
    );
    assert.ok(!flat(marked).includes('Foxtrot six: that is the plan.'), `the run was still under way when the device joined: ${marked}`);

    const there = flat(await waitForAnswer(device, { timeout: 40_000 }));
    const here = flat(await waitForAnswer(page, { timeout: 40_000 }));
    const token = await tokenOf(server);
    const [thread] = await threadsOf(server, token);
    const stored = (await messagesOf(server, token, thread.id)).filter((m) => m.role === 'assistant');
    assert.equal(stored.length, 1, 'the server stored one answer');
    assert.equal(flat(stored[0].text), flat(LONG_ANSWER), 'the server stored what the model wrote');
    assert.ok(there.includes(flat(stored[0].text)), `the second device ends on the stored answer:\n  shown:  ${there}\n  stored: ${flat(stored[0].text)}`);
    assert.doesNotMatch(there, /joined/i, 'the "joined" note goes away once the run ended');
    for (const word of ['Alpha', 'Charlie', 'Foxtrot']) {
      assert.equal(there.split(word).length - 1, 1, `"${word}" shows exactly once on the second device (no doubled text): ${there}`);
    }
    assert.ok(here.includes(flat(stored[0].text)), `the first device shows the stored answer: ${here}`);
    assert.equal(await answers(device).count(), 1, 'the second device shows one answer');
    assert.equal(await yourMessages(device).count(), 1, 'the second device shows the message once');
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
