// A store that stalls: the server's PostgreSQL, behind a fault proxy that holds its bytes. An
// answer whose run ends meanwhile stops showing as under way and says why, in every tab; a
// message sent meanwhile is refused with the server's sentence and kept to be sent again; a tab
// reloaded meanwhile says what it cannot read; once the store answers, everything completes,
// each thing shown once. Needs SWITCHBOARD_TEST_POSTGRES_URL (scripts/test exports it).

import assert from 'node:assert/strict';
import {
  answers,
  ask,
  checkStreamed,
  connection,
  flat,
  lastAnswer,
  LONG_ANSWER,
  messagesLog,
  messagesOf,
  queryDatabase,
  recordAnswers,
  signInAsDev,
  stopButton,
  threadLink,
  threadsNav,
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
  yourMessages,
} from './harness.mjs';

const QUESTION = 'How can we cut our LLM costs?';
const SECOND = 'And which model should the search feature use?';

/** The answer to the message sent again. */
const SHORT_ANSWER = 'Use gpt-4o-mini for search: it is fast and cheap enough.';

/** The sentence of a message refused while PostgreSQL stalls (`--database-timeout-ms 500`). */
const REFUSAL = 'PostgreSQL did not answer within 0.5 s, so the message may not have been accepted; send it again in a moment.';

/** The notice of an answer whose run has ended while the store has not stored its end. */
const NOTICE = /^The run finished after \d+(\.\d+)? s, but PostgreSQL has not answered for \d+(\.\d+)? s: its last events are kept and will be shown as soon as PostgreSQL answers\.$/;

/** @param {import('playwright-core').Page} page */
const delayedNotice = (page) => messagesLog(page).getByRole('status', { name: 'Answer delayed', exact: true });

/**
 * Waits until the answer of the first run shows partly (still busy), up to `word`.
 * @param {import('playwright-core').Page} page
 * @param {string} word
 * @param {string} where
 */
async function waitStreaming(page, word, where) {
  await waitFor(
    `${where}: the answer to show up to "${word}" while it streams`,
    async () => {
      if ((await answers(page).count()) === 0) return false;
      const answer = answers(page).first();
      return (await answer.getAttribute('aria-busy')) === 'true' && (await answer.innerText()).includes(word);
    },
    { timeout: 30_000, seen: () => messagesLog(page).innerText() },
  );
}

/**
 * Waits until the first answer is complete: not busy, no "Answer delayed" status, the whole text.
 * @param {import('playwright-core').Page} page
 * @param {string} where
 */
async function waitCompleted(page, where) {
  return waitFor(
    `${where}: the first answer to complete once PostgreSQL answers`,
    async () => {
      if ((await answers(page).count()) === 0) return false;
      const answer = answers(page).first();
      if ((await answer.getAttribute('aria-busy')) === 'true' || (await delayedNotice(page).count()) > 0) return false;
      const text = flat(await answer.innerText());
      return text.includes(flat(LONG_ANSWER)) ? text : false;
    },
    { timeout: 60_000, seen: async () => `${await messagesLog(page).innerText().catch(() => '<no "Messages" log>')}\n  connection: ${await connection(page).innerText().catch(() => '?')}` },
  );
}

webTest(
  'while PostgreSQL stalls, an ended run says so in every tab, a message is refused and kept, and all completes once it answers',
  { postgres: true, llm: { answer: LONG_ANSWER, chunkDelayMs: 200 }, timeout: 170_000 },
  async ({ page, context, server, postgres, llm, screenshot }) => {
    assert.ok(postgres && llm, 'the test has its PostgreSQL and its model');
    const { proxy } = postgres;
    const shownHere = await recordAnswers(page);
    await signInAsDev(page);
    const other = await context.newPage();
    const shownThere = await recordAnswers(other);
    await other.goto('/');
    await waitSignedIn(other);

    // The question, followed live in both tabs.
    await ask(page, QUESTION);
    await waitForThread(other, QUESTION, `the thread "${QUESTION}" in the other tab`);
    await threadLink(other, QUESTION).click();
    await waitForMessage(other, QUESTION, 0);
    await waitStreaming(page, 'Bravo', 'this tab');
    await waitStreaming(other, 'Bravo', 'the other tab');
    await waitVisible(stopButton(page), 'the "Stop" button while the run streams');

    // PostgreSQL stops answering; the model writes on, and the run ends meanwhile.
    await proxy.set('stall');
    const sentence = await waitForText(delayedNotice(page), NOTICE, 'the "Answer delayed" status of the answer', { timeout: 40_000 });
    assert.equal(await lastAnswer(page).getByRole('status', { name: 'Answer delayed', exact: true }).count(), 1, 'the notice is in the answer, once');
    await waitGone(stopButton(page), 'the "Stop" button once the run has ended');
    assert.notEqual(await lastAnswer(page).getAttribute('aria-busy'), 'true', 'the answer is no longer busy');
    const partial = flat(await lastAnswer(page).innerText());
    assert.doesNotMatch(partial, /Working…|Foxtrot/, `the answer shows what was stored before the stall, not under way: ${partial}`);
    assert.doesNotMatch(await threadsNav(page).innerText(), /running…/, 'the thread is no longer shown as running');
    // For a person to look at: the answer with its notice.
    await screenshot('store-delayed-answer');
    const there = await waitForText(delayedNotice(other), NOTICE, 'the other tab\'s "Answer delayed" status', { timeout: 20_000 });
    assert.equal(there, sentence, 'both tabs show the same notice');
    await waitGone(stopButton(other), 'the other tab\'s "Stop" button');

    // A message sent now is refused with the server's sentence, and kept to be sent again.
    await ask(page, SECOND);
    await waitForText(page.getByRole('alert'), REFUSAL, 'the alert of the refused message', { timeout: 30_000 });
    assert.equal(await page.getByRole('alert').first().innerText(), `Not sent: ${REFUSAL}`, 'the alert holds the server\'s sentence');
    const held = yourMessages(page).nth(1);
    assert.match(flat(await held.innerText()), new RegExp(`Not sent: ${REFUSAL.replace(/[.;]/g, '\\$&')}`), 'the refused message says why');
    const again = held.getByRole('button', { name: 'Send again', exact: true });
    await waitVisible(again, 'the "Send again" button of the refused message');
    await screenshot('store-unavailable-message');

    // The other tab is reloaded while the store still does not answer: it says what it
    // cannot read, and shows nothing it does not know.
    await other.reload();
    await waitForText(messagesLog(other), /could not be loaded: PostgreSQL did not answer/, 'the reloaded tab\'s "Messages" log', { timeout: 30_000 });
    await waitForText(connection(other), /^(Reconnecting…|Cannot connect)/, 'the reloaded tab\'s "Connection" status (the server cannot read its events)');
    assert.equal(await answers(other).count(), 0, 'the reloaded tab shows no answer it could not read');

    // PostgreSQL answers again: the answer completes in both tabs, as the server stored it.
    await proxy.set('none');
    const here = await waitCompleted(page, 'this tab');
    const token = await tokenOf(server);
    const [thread] = await threadsOf(server, token);
    const messages = await messagesOf(server, token, thread.id);
    const stored = messages.filter((m) => m.role === 'assistant');
    assert.equal(stored.length, 1, `the server stored one answer: ${JSON.stringify(messages)}`);
    assert.equal(flat(stored[0].text), flat(LONG_ANSWER), 'the server stored what the model wrote');
    assert.ok(here.includes(flat(stored[0].text)), `this tab shows the stored answer:\n  page:   ${here}\n  stored: ${flat(stored[0].text)}`);
    for (const word of ['Alpha', 'Bravo', 'Foxtrot']) assert.equal(here.split(word).length - 1, 1, `"${word}" shows once: ${here}`);
    const thereText = await waitCompleted(other, 'the reloaded tab');
    assert.ok(thereText.includes(flat(stored[0].text)), `the reloaded tab shows the stored answer: ${thereText}`);
    assert.equal(await answers(page).count(), 1, 'this tab shows one answer');
    assert.equal(await answers(other).count(), 1, 'the reloaded tab shows one answer');
    assert.equal(await delayedNotice(page).count(), 0, 'the notice is gone');
    // Over the stall, each tab's answer only ever grew by the words of the stored one. Told at
    // the end, with what the store holds, so that the rest is checked too.
    /** @type {string[]} */
    const shownWrong = [];
    for (const [shown, what] of /** @type {const} */ ([
      [shownHere, 'this tab\'s answer (over the stall)'],
      [shownThere, 'the other tab\'s answer (over the stall and the reload)'],
    ])) {
      try {
        checkStreamed((await shown()).answers[0], stored[0].text, what);
      } catch (error) {
        shownWrong.push(error instanceof Error ? error.message : String(error));
      }
    }
    await waitForText(connection(other), /^Connected$/, 'the reloaded tab\'s "Connection" status once PostgreSQL answers');

    // The page did not send the refused message again by itself (the server may hold it all the
    // same: a write cut off by its deadline can land once the stall ends, and then its run
    // starts); "Send again" sends it, and the server holds it once either way.
    const users = messages.filter((m) => m.role === 'user').map((m) => m.text);
    assert.ok(
      JSON.stringify(users) === JSON.stringify([QUESTION]) || JSON.stringify(users) === JSON.stringify([QUESTION, SECOND]),
      `the server holds each message at most once: ${JSON.stringify(users)}`,
    );
    await waitVisible(again, 'the "Send again" button, still there after the store came back');
    llm.setAnswer(SHORT_ANSWER);
    await again.click();
    const second = flat(await waitForAnswer(page, { count: 2, timeout: 40_000 }));
    assert.ok(second.includes(SHORT_ANSWER), `an answer to the message sent again: ${second}`);
    await waitGone(again, 'the "Send again" button');
    assert.equal(await yourMessages(page).count(), 2, 'the message sent again shows once');
    assert.deepEqual((await page.getByRole('alert').allInnerTexts()).map((t) => t.trim()).filter(Boolean), [], 'no alert is left');
    const after = await messagesOf(server, token, thread.id);
    assert.deepEqual(
      after.filter((m) => m.role === 'user').map((m) => m.text),
      [QUESTION, SECOND],
      'the server has each message once',
    );
    await waitForMessage(other, SECOND, 1);
    await waitForAnswer(other, { count: 2, timeout: 40_000 });

    // The store holds each event once: a write that timed out in the stall and was tried again
    // must not be there twice (a page that reads the events back would show its text twice).
    const rows = await queryDatabase(postgres.adminUrl, postgres.database, 'SELECT seq, json FROM events ORDER BY seq');
    const twice = storedTwice(rows);
    assert.deepEqual(
      twice,
      [],
      `the store holds events more than once (${twice.join('; ')}): an append that timed out while PostgreSQL stalled ` +
        'was stored after all once the stall ended, and its retry stored it again under a new seq' +
        (shownWrong.length ? `; and so:\n${shownWrong.join('\n')}` : ''),
    );
    assert.deepEqual(shownWrong, [], shownWrong.join('\n'));
  },
);

/**
 * The events the store holds more than once (the same JSON under several seqs), as
 * `seqs 29, 30, 31: partial_result "that "`.
 * @param {string[][]} rows `[seq, json]`
 */
function storedTwice(rows) {
  /** @type {Map<string, string[]>} */
  const seqs = new Map();
  for (const [seq, json] of rows) {
    const key = json.replace(/^\{"seq":\d+,/, '{');
    seqs.set(key, [...(seqs.get(key) ?? []), seq]);
  }
  return [...seqs]
    .filter(([, list]) => list.length > 1)
    .map(([json, list]) => {
      const event = JSON.parse(json);
      const delta = event.payload?.delta === undefined ? '' : ` ${JSON.stringify(event.payload.delta)}`;
      return `seqs ${list.join(', ')}: ${event.type}${delta}`;
    });
}
