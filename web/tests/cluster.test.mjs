// The app on a cluster: two nodes on one PostgreSQL and Redis behind a load balancer without
// sticky sessions (harness `nodes`), one person with a tab on each node.

import assert from 'node:assert/strict';
import {
  answers,
  api,
  ask,
  checkStreamed,
  connection,
  flat,
  LONG_ANSWER,
  messagesLog,
  messagesOf,
  recordAnswers,
  recordConnection,
  signInAsDev,
  stopButton,
  threadLink,
  threadsOf,
  tokenOf,
  waitFor,
  waitForAnswer,
  waitForMessage,
  waitForText,
  waitForThread,
  waitGone,
  waitSignedIn,
  waitVisible,
  webTest,
} from './harness.mjs';

/**
 * Opens the app in `page` signed in as the dev user (by the button when `signIn`, else by the
 * sign-in its browser profile has already), its WebSocket sent to `node` by the balancer;
 * returns the page and that socket.
 * @param {import('playwright-core').Page} page
 * @param {import('./harness.mjs').Balancer} balancer
 * @param {import('./harness.mjs').Server} node
 * @param {boolean} signIn
 */
async function tabOnANode(page, balancer, node, signIn) {
  const before = new Set(balancer.openSockets());
  balancer.pin(node);
  if (signIn) {
    await signInAsDev(page);
  } else {
    await page.goto('/');
    await waitSignedIn(page);
  }
  const socket = await waitFor('the tab\'s WebSocket through the balancer', () => {
    const added = balancer.openSockets().filter((c) => !before.has(c));
    return added.length === 1 ? added[0] : false;
  });
  // Reconnects go to the nodes in turn again.
  balancer.pin(undefined);
  assert.equal(socket.node, node, 'the tab\'s socket is on the node it was sent to');
  return { page, socket };
}

/**
 * Waits until `page` shows answer `count` part-way through streaming (busy, with `word`).
 * @param {import('playwright-core').Page} page
 * @param {string} word
 * @param {string} what
 * @param {number} [count]
 */
async function waitStreaming(page, word, what, count = 1) {
  return waitFor(
    what,
    async () => {
      if ((await answers(page).count()) < count) return false;
      const answer = answers(page).nth(count - 1);
      const text = flat(await answer.innerText());
      return (await answer.getAttribute('aria-busy')) === 'true' && text.includes(word) ? text : false;
    },
    { timeout: 30_000, seen: () => messagesLog(page).innerText() },
  );
}

webTest(
  'two tabs on two nodes: a run asked on one node streams live in the tab on the other, and "Stop" there stops it where it runs',
  { nodes: 2, llm: { answer: LONG_ANSWER, chunkDelayMs: 100 }, timeout: 180_000 },
  async ({ page, context, balancer, nodes, server }) => {
    assert.ok(balancer);
    const one = await tabOnANode(page, balancer, nodes[0], true);
    const two = await tabOnANode(await context.newPage(), balancer, nodes[1], false);
    assert.notEqual(one.socket.node, two.socket.node, 'the balancer put the two tabs\' sockets on two nodes');
    const shownOne = await recordAnswers(one.page);
    const shownTwo = await recordAnswers(two.page);

    // A question asked in the first tab runs on its node; the tab on the other node shows the
    // thread without a reload, and its answer.
    const first = 'How can we cut our LLM costs?';
    await ask(one.page, first);
    await waitForThread(two.page, first, `the thread "${first}" in the tab on the other node`);
    await threadLink(two.page, first).click();
    await waitForMessage(two.page, first, 0);
    const firstThere = flat(await waitForAnswer(two.page, { timeout: 40_000 }));
    assert.equal(firstThere, flat(await waitForAnswer(one.page, { timeout: 40_000 })), 'both tabs show the same first answer');

    // The next question, asked in the first tab again: the tab on the other node shows it and
    // its answer while it streams (every event through Redis, or the log).
    const next = 'What does a gpt-4o call cost?';
    await ask(one.page, next);
    await waitForMessage(two.page, next, 1);
    await waitStreaming(two.page, 'Bravo', 'the tab on the other node to show the answer while it streams', 2);
    const there = flat(await waitForAnswer(two.page, { count: 2, timeout: 40_000 }));
    const here = flat(await waitForAnswer(one.page, { count: 2, timeout: 40_000 }));
    assert.equal(there, here, 'both tabs show the same answer');
    assert.ok(there.includes(flat(LONG_ANSWER)), `the tab on the other node shows the whole answer: ${there}`);
    checkStreamed((await shownTwo()).answers[1], LONG_ANSWER, 'the answer in the tab on the other node');
    checkStreamed((await shownOne()).answers[1], LONG_ANSWER, 'the answer in the tab that asked');

    // A second question, asked in the second tab (on the other node); "Stop" in the first tab
    // (whose socket is on the node that does not run it) ends it.
    const second = 'And which model should the search feature use?';
    await ask(two.page, second);
    await waitForMessage(one.page, second, 2);
    await waitStreaming(one.page, 'Alpha', 'the first tab to show the third answer while it streams', 3);
    await waitVisible(stopButton(one.page), 'the "Stop" button in the first tab');
    await stopButton(one.page).click();
    const stoppedHere = await waitForAnswer(one.page, { count: 3 });
    const stoppedThere = await waitForAnswer(two.page, { count: 3 });
    for (const [text, tab] of [[stoppedHere, 'the first tab'], [stoppedThere, 'the second tab']]) {
      assert.match(text, /Stopped: the run was cancelled after \d+(\.\d+)? (s|ms)\./, `${tab} ends the answer with the sentence of its end: ${JSON.stringify(text)}`);
      assert.ok(!flat(text).includes('Foxtrot six: that is the plan.'), `${tab}: the run was stopped before the end of its answer: ${text}`);
    }
    await waitGone(stopButton(one.page), 'the "Stop" button in the first tab');
    await waitGone(stopButton(two.page), 'the "Stop" button in the second tab');

    // The store agrees, whichever node is asked: two answers, then the run that was stopped
    // (a cancelled run stores no answer); and neither tab had to reconnect.
    const token = await tokenOf(server);
    for (const node of nodes) {
      const [thread] = await threadsOf(node, token);
      const messages = await messagesOf(node, token, thread.id);
      assert.deepEqual(messages.map((m) => m.role), ['user', 'assistant', 'user', 'assistant', 'user'], `${node.url} has the thread's messages`);
      const run = await api(node, 'GET', `/api/runs/${messages[4].run_id}`, { token });
      assert.equal(run.status, 'cancelled', `${node.url} says the stopped run was cancelled`);
    }
    assert.ok(one.socket.open && two.socket.open, 'each tab kept its first socket');
    assert.equal(await answers(one.page).count(), 3, 'the first tab shows three answers');
    assert.equal(await answers(two.page).count(), 3, 'the second tab shows three answers');
  },
);

webTest(
  'a node killed mid-run: the tab on the other node is told the run was interrupted, and the killed node\'s tab reconnects to the living node and shows the same',
  { nodes: 2, llm: { answer: LONG_ANSWER, chunkDelayMs: 150 }, timeout: 150_000 },
  async ({ page, context, balancer, nodes }) => {
    assert.ok(balancer);
    const one = await tabOnANode(page, balancer, nodes[0], true);
    const two = await tabOnANode(await context.newPage(), balancer, nodes[1], false);
    assert.notEqual(one.socket.node, two.socket.node, 'the balancer put the two tabs\' sockets on two nodes');

    const question = 'How can we cut our LLM costs?';
    await ask(one.page, question);
    await waitForThread(two.page, question, `the thread "${question}" in the tab on the other node`);
    await threadLink(two.page, question).click();
    await waitForMessage(two.page, question, 0);
    await waitStreaming(two.page, 'Alpha', 'the tab on the other node to show the answer while it streams');

    // kill -9 of the node that runs it. Its tab loses its socket; the other node closes the
    // run once that node's lease has run out (5 s), within 10 s more.
    const shown = await recordConnection(one.page);
    await one.socket.node.kill();
    const living = two.socket.node;
    const there = await waitForAnswer(two.page, { timeout: 40_000 });
    assert.match(there, /interrupted/i, `the tab on the living node is told the run was interrupted: ${JSON.stringify(there)}`);
    const killed = one.socket.node.args[one.socket.node.args.indexOf('--node-id') + 1];
    assert.ok(flat(there).includes(`the node that ran it (${killed}) stopped answering`), `the sentence names the node that went away: ${JSON.stringify(there)}`);
    assert.ok(!flat(there).includes('Foxtrot six: that is the plan.'), `the run ended before its answer did: ${there}`);

    // The killed node's tab: reconnecting, then connected again, through the balancer, to the
    // living node; it shows the same end.
    await waitFor('the first tab to read "Reconnecting…" once its node is gone', async () => (await shown()).some((t) => t.startsWith('Reconnecting…')), {
      seen: async () => JSON.stringify(await shown()),
    });
    await waitForText(connection(one.page), /^Connected$/, 'the "Connection" status of the first tab', { timeout: 45_000 });
    const [again] = balancer.openSockets().filter((c) => c !== two.socket);
    assert.ok(again, 'the first tab has a new socket');
    assert.equal(again.node, living, 'the first tab\'s new socket is on the living node');
    const here = await waitForAnswer(one.page, { timeout: 40_000 });
    assert.equal(flat(here), flat(there), 'both tabs show the same interrupted answer');
    assert.equal(await answers(one.page).count(), 1, 'the first tab shows one answer');

    // And the living node answers a new question from either tab.
    await ask(one.page, 'What does a gpt-4o call cost?');
    const next = flat(await waitForAnswer(two.page, { count: 2, timeout: 40_000 }));
    assert.ok(next.includes(flat(LONG_ANSWER)), `the next question is answered whole: ${next}`);
    assert.equal(await answers(two.page).count(), 2, 'the second tab shows two answers');
  },
);
