// Chatting: a question and its answer, the run timeline, the message box's keys, threads.

import assert from 'node:assert/strict';
import {
  answers,
  ask,
  askAndWait,
  messageBox,
  messagesLog,
  signInAsDev,
  threadLink,
  waitForThread,
  threadsNav,
  threadsOf,
  timeline,
  tokenOf,
  waitFor,
  waitForAnswer,
  waitForMessage,
  waitForText,
  waitGone,
  waitVisible,
  webTest,
  yourMessages,
} from './harness.mjs';

const QUESTION = 'How can we cut our LLM costs?';

webTest('a question shows as "You", its answer as "Switchboard", with the run timeline', {}, async ({ page }) => {
  await signInAsDev(page);
  await ask(page, QUESTION);
  await waitForText(yourMessages(page).last(), QUESTION, 'the "You" article');
  const answer = await waitForAnswer(page);
  // No workload data yet: the offline model's answer says what to send (crates/agents).
  assert.ok(answer.length > 40, `the answer has text: ${JSON.stringify(answer)}`);
  assert.ok(!/\[object Object\]|undefined|NaN/.test(answer), `the answer shows no placeholder: ${JSON.stringify(answer)}`);

  const run = timeline(page);
  await waitVisible(run, 'the "Run timeline" region');
  const text = await waitForText(run, /supervisor[\s\S]*triage[\s\S]*reporting/, 'the run timeline (supervisor, then triage, then reporting)');
  assert.match(text, /extract_entities/, 'the timeline shows the extract_entities tool call');
  assert.match(text, /workload_overview/, 'the timeline shows the workload_overview tool call');

  // The tool call's line shows its duration (searched from the innermost element naming the tool
  // up to the first ancestor with a duration, which must not span the other tool call too).
  const tool = await run.evaluate((region) => {
    const all = Array.from(region.querySelectorAll('*')).filter((el) => el.textContent?.includes('extract_entities'));
    const innermost = all.filter((el) => !Array.from(el.children).some((c) => c.textContent?.includes('extract_entities')));
    for (const start of innermost) {
      for (let el = /** @type {Element | null} */ (start); el && el !== region; el = el.parentElement) {
        const t = el.textContent ?? '';
        if (/\d+(\.\d+)?\s?(ms|s)\b/.test(t)) return { text: t.trim().slice(0, 300), spansOthers: t.includes('workload_overview') };
      }
    }
    return null;
  });
  assert.ok(tool, 'the extract_entities call shows a duration');
  assert.ok(!tool.spansOthers, `the duration belongs to the extract_entities call itself, not the whole timeline: ${tool.text}`);
  assert.match(tool.text, /text/, `the extract_entities call shows its parameters ({"text": …}): ${tool.text}`);

  const time = run.getByRole('img', { name: /^Where the time went:/ });
  await waitVisible(time, 'the "Where the time went: …" image');
  const timeName = await time.first().evaluate((el) => el.getAttribute('aria-label') ?? el.getAttribute('alt') ?? el.textContent ?? '');
  assert.match(timeName, /\d+\s?ms/, `"Where the time went" holds figures in ms: ${timeName}`);

  const calls = run.getByRole('table', { name: 'Model calls', exact: true });
  await waitVisible(calls, 'the "Model calls" table');
  const rows = calls.getByRole('row');
  // A header and one row per model call (triage and reporting ask the model).
  assert.ok((await rows.count()) >= 3, `"Model calls" has a header and the two calls: ${await calls.innerText()}`);
  const table = await calls.innerText();
  assert.match(table, /triage/, 'a model call by triage');
  assert.match(table, /reporting/, 'a model call by reporting');
  assert.match(table, /offline/, 'the model is named (offline)');

  // The timeline can be hidden and shown again.
  const hide = page.getByRole('button', { name: 'Hide timeline', exact: true });
  await waitVisible(hide, 'the "Hide timeline" button');
  assert.equal(await hide.getAttribute('aria-expanded'), 'true');
  await hide.click();
  const show = page.getByRole('button', { name: 'Show timeline', exact: true });
  await waitVisible(show, 'the "Show timeline" button');
  assert.equal(await show.getAttribute('aria-expanded'), 'false');
  await show.click();
  await waitVisible(page.getByRole('button', { name: 'Hide timeline', exact: true }), 'the "Hide timeline" button again');
});

webTest('Enter sends, Shift+Enter makes a new line', {}, async ({ page }) => {
  await signInAsDev(page);
  const box = messageBox(page);
  await box.click();
  await box.pressSequentially('first line');
  await box.press('Shift+Enter');
  await box.pressSequentially('second line');
  assert.equal(await box.inputValue(), 'first line\nsecond line', 'Shift+Enter put a line break in the box');
  assert.equal(await yourMessages(page).count(), 0, 'Shift+Enter sent nothing');

  await box.press('Enter');
  await waitForMessage(page, 'first line', 0);
  const sent = await yourMessages(page).last().innerText();
  assert.match(sent, /first line\s*\n\s*second line/, `the message keeps its line break: ${JSON.stringify(sent)}`);
  await waitFor('the message box to be emptied', async () => (await box.inputValue()) === '', {
    seen: () => box.inputValue(),
  });
  await waitForAnswer(page);
});

webTest('threads: the asked one shows, "New chat" starts another, delete asks first', {}, async ({ page, server }) => {
  await signInAsDev(page);
  await askAndWait(page, QUESTION);
  const first = threadLink(page, QUESTION);
  await waitForThread(page, QUESTION, `the thread "${QUESTION}" in "Threads"`);
  assert.equal(await first.getAttribute('aria-current'), 'page', 'the open thread is the current page');

  await threadsNav(page).getByRole('button', { name: 'New chat', exact: true }).click();
  await waitFor('the "Messages" log to be empty after "New chat"', async () => (await yourMessages(page).count()) === 0, {
    seen: () => messagesLog(page).innerText(),
  });
  const second = 'What does a gpt-4o call cost?';
  await askAndWait(page, second);
  await waitForThread(page, second, `the thread "${second}" in "Threads"`);
  assert.equal(await yourMessages(page).count(), 1, 'the new chat holds only its own message');
  assert.equal(await threadLink(page, second).getAttribute('aria-current'), 'page', 'the new thread is current');
  assert.notEqual(await first.getAttribute('aria-current'), 'page', 'the first thread is no longer current');

  // Newest first.
  const names = await threadsNav(page).getByRole('link').allInnerTexts();
  const at = (/** @type {string} */ title) => names.findIndex((n) => n.includes(title));
  assert.ok(at(second) >= 0 && at(second) < at(QUESTION), `newest first: ${JSON.stringify(names)}`);

  // Opening the first thread shows its messages again.
  await first.click();
  await waitForMessage(page, QUESTION, 0);
  await waitForAnswer(page);
  assert.equal(await answers(page).count(), 1);

  // Delete asks in a dialog; Cancel keeps the thread.
  const remove = threadsNav(page).getByRole('button', { name: `Delete thread ${QUESTION}`, exact: true });
  await remove.click();
  const dialog = page.getByRole('dialog', { name: 'Delete this thread?', exact: true });
  await waitVisible(dialog, 'the "Delete this thread?" dialog');
  await dialog.getByRole('button', { name: 'Cancel', exact: true }).click();
  await waitGone(dialog, 'the dialog');
  await waitForThread(page, QUESTION, 'the thread kept after Cancel');

  await remove.click();
  await waitVisible(dialog, 'the "Delete this thread?" dialog, again');
  await dialog.getByRole('button', { name: 'Delete', exact: true }).click();
  await waitGone(dialog, 'the dialog');
  await waitGone(first, `the deleted thread "${QUESTION}"`);
  await waitForThread(page, second, 'the other thread, kept');

  const token = await tokenOf(server);
  const left = (await threadsOf(server, token)).map((t) => t.title);
  assert.deepEqual(left, [second], 'the server has only the other thread left');

  // A reload shows the same list.
  await page.reload();
  await waitForThread(page, second, 'the other thread after a reload');
  assert.equal(await threadLink(page, QUESTION).count(), 0, 'the deleted thread stays deleted');
});

webTest('a hand-typed link to a thread that does not exist says so; a message sent there starts a new chat', {}, async ({ page, server }) => {
  await signInAsDev(page);
  await page.goto('/#thread=abc');
  await waitForText(messagesLog(page), /does not exist/, 'the "Messages" log for the thread "abc"');

  const question = 'What does a gpt-4o call cost?';
  const answer = await askAndWait(page, question);
  assert.ok(answer.length > 20, `the answer arrives: ${answer}`);
  await waitForThread(page, question, `the new thread "${question}" in "Threads"`);
  assert.equal(await threadLink(page, question).getAttribute('aria-current'), 'page', 'the new thread is the open one');

  const token = await tokenOf(server);
  const threads = await threadsOf(server, token);
  assert.deepEqual(threads.map((t) => t.title), [question], 'the server has the new thread only');
  assert.equal(new URL(page.url()).hash, `#thread=${threads[0].id}`, 'the address names the new thread, not "abc"');
  assert.equal(await yourMessages(page).count(), 1, 'the new chat holds its message once');
});
