// A run in progress: stopped with "Stop", and a reload in the middle of it.

import assert from 'node:assert/strict';
import {
  answers,
  api,
  ask,
  checkStreamed,
  flat,
  lastAnswer,
  LONG_ANSWER,
  messagesOf,
  recordAnswers,
  signInAsDev,
  stopButton,
  threadsOf,
  timeline,
  tokenOf,
  waitFor,
  waitForAnswer,
  waitGone,
  waitSignedIn,
  waitVisible,
  webTest,
} from './harness.mjs';

/**
 * The newest thread's stored messages, and the run of its newest user message.
 * @param {import('./harness.mjs').Server} server
 */
async function newestRun(server) {
  const token = await tokenOf(server);
  const [thread] = await threadsOf(server, token);
  assert.ok(thread, 'the server has the thread');
  const messages = await messagesOf(server, token, thread.id);
  const runId = [...messages].reverse().find((m) => m.role === 'user')?.run_id;
  return { token, thread, messages, runId };
}

webTest('"Stop" cancels the run; the answer says so and "Stop" goes away', { server: { args: ['--model-latency-ms', '3000'] } }, async ({ page, server }) => {
  await signInAsDev(page);
  await ask(page, 'How can we cut our LLM costs?');
  await waitVisible(stopButton(page), 'the "Stop" button while the run is active');
  await stopButton(page).click();
  const text = await waitForAnswer(page);
  assert.match(text, /Stopped: the run was cancelled after \d+(\.\d+)? (s|ms)\./, `the answer ends with the sentence of its end: ${JSON.stringify(text)}`);
  await waitGone(stopButton(page), 'the "Stop" button');

  const { token, runId } = await newestRun(server);
  assert.ok(runId, 'the message has its run');
  const run = await api(server, 'GET', `/api/runs/${runId}`, { token });
  assert.equal(run.status, 'cancelled', 'the server cancelled the run');
});

webTest(
  'a reload in the middle of a streamed answer shows the whole answer once',
  { llm: { answer: LONG_ANSWER, chunkDelayMs: 80 } },
  async ({ page, server, llm }) => {
    // Every text the answer shows, before and after the reload.
    const shown = await recordAnswers(page);
    await signInAsDev(page);
    await ask(page, 'How can we cut our LLM costs?');
    const before = await waitFor(
      'the answer to be partly streamed (some words, still busy)',
      async () => {
        const answer = lastAnswer(page);
        if ((await answers(page).count()) === 0) return false;
        const text = flat(await answer.innerText());
        return (await answer.getAttribute('aria-busy')) === 'true' && text.includes('Bravo') ? text : false;
      },
      { timeout: 30_000, seen: async () => (await answers(page).count()) ? lastAnswer(page).innerText() : '<no answer yet>' },
    );
    assert.ok(!before.includes('Foxtrot'), 'the reload comes before the end of the answer');

    await page.reload();
    await waitSignedIn(page);
    const after = flat(await waitForAnswer(page, { timeout: 40_000 }));

    const { messages } = await newestRun(server);
    const stored = [...messages].reverse().find((m) => m.role === 'assistant');
    assert.ok(stored, `the server stored the answer: ${JSON.stringify(messages)}`);
    assert.equal(flat(stored.text), flat(LONG_ANSWER), 'the server stored what the model wrote');
    assert.ok(after.includes(flat(stored.text)), `the page shows the stored answer:\n  page:   ${after}\n  stored: ${flat(stored.text)}`);
    for (const word of ['Alpha', 'Bravo', 'Charlie', 'Foxtrot']) {
      assert.equal(after.split(word).length - 1, 1, `"${word}" shows exactly once (no doubled text): ${after}`);
    }
    assert.equal(await answers(page).count(), 1, 'one answer after the reload');

    // While it streamed, before and after the reload, the answer only ever grew by the words of
    // the stored one: none lost, doubled or out of order on the way.
    const { answers: texts, documents } = await shown();
    checkStreamed(texts[0], stored.text, 'the answer (over the reload)');
    const whole = flat(stored.text);
    const afterReload = (documents.at(-1)?.[0] ?? []).filter((t) => t !== '' && t.length < whole.length);
    assert.ok(
      afterReload.length >= 1,
      `the answer was still streaming after the reload (parts shown after it: ${JSON.stringify(afterReload)})`,
    );
    // The fake model was asked: a classification (whole JSON) and the answer (streamed).
    const asked = llm?.requests ?? [];
    assert.ok(asked.some((r) => r.body?.response_format?.type === 'json_object' && !r.body?.stream), 'triage asked for its classification');
    assert.ok(asked.some((r) => r.body?.stream === true), 'reporting streamed the answer');
    assert.doesNotMatch(await timeline(page).innerText(), /no category I know/, 'the fake model\'s classification was understood');
  },
);

webTest(
  'after a reload in the middle of a run, "Stop" still shows and stops it',
  { server: { args: ['--model-latency-ms', '4000'] } },
  async ({ page, server }) => {
    await signInAsDev(page);
    await ask(page, 'How can we cut our LLM costs?');
    await waitVisible(stopButton(page), 'the "Stop" button while the run is active');
    await page.reload();
    await waitSignedIn(page);
    await waitVisible(stopButton(page), 'the "Stop" button after the reload (the run is still active)');
    await stopButton(page).click();
    const text = await waitForAnswer(page);
    assert.match(text, /Stopped: the run was cancelled after \d+(\.\d+)? (s|ms)\./, `the answer says it was cancelled: ${JSON.stringify(text)}`);
    await waitGone(stopButton(page), 'the "Stop" button');
    const { token, runId } = await newestRun(server);
    const run = await api(server, 'GET', `/api/runs/${runId}`, { token });
    assert.equal(run.status, 'cancelled');
  },
);
