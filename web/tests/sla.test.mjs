// The SLA view (`#sla`): the live report of GET /api/sla and GET /health/ready, signed in or not.
// Runs sent through the app are counted and the store's tier listed; PostgreSQL made slow through
// the fault proxy is named as degraded, in words; a server that stops is said in a sentence, the
// figures shown marked as those of the last answer, and the view recovers when it is back; a 5xx
// or an answer that is not a report is said too; it polls every 2 s only while shown and the
// tab is visible (counted on a fake clock, not waited for). The PostgreSQL test needs
// SWITCHBOARD_TEST_POSTGRES_URL (scripts/test exports it).

import assert from 'node:assert/strict';
import {
  askAndWait,
  horizontalOverflow,
  messagesLog,
  openApp,
  signInAsDev,
  signInForm,
  signOutButton,
  waitFor,
  waitForText,
  waitGone,
  waitVisible,
  webTest,
} from './harness.mjs';

/** @param {import('playwright-core').Page} page */
const slaView = (page) => page.getByRole('main', { name: 'Is chat meeting its SLA?', exact: true });
/** @param {import('playwright-core').Page} page */
const slaStatus = (page) => slaView(page).getByRole('status', { name: 'SLA status', exact: true });
/** @param {import('playwright-core').Page} page */
const polling = (page) => slaView(page).getByRole('alert', { name: 'Polling', exact: true });
/** @param {import('playwright-core').Page} page */
const windowsTable = (page) => slaView(page).getByRole('table', { name: 'Windows', exact: true });
/** @param {import('playwright-core').Page} page */
const tiersTable = (page) => slaView(page).getByRole('table', { name: 'Tiers', exact: true });
/** @param {import('playwright-core').Page} page @param {string} name */
const tierRow = (page, name) => tiersTable(page).getByRole('row', { name: new RegExp(`^${name}\\b`) });
/** @param {import('playwright-core').Page} page */
const liveLine = (page) => slaView(page).getByText(/^(Live: as of|Not live: the figures below are from) /);

/** A time of day as the view shows it. */
const CLOCK = '\\d\\d:\\d\\d:\\d\\d';

/**
 * The cells of the "Windows" table's row named `name` (e.g. "Runs"): one per window.
 * @param {import('playwright-core').Page} page
 * @param {string} name
 */
async function windowsRow(page, name) {
  const row = windowsTable(page).getByRole('row', { name: new RegExp(`^${name}\\b`) }).first();
  return (await row.getByRole('cell').allInnerTexts()).map((text) => text.trim());
}

/**
 * Waits until the view shows a live report (not the first "Asking the server…", not a failure).
 * @param {import('playwright-core').Page} page
 */
async function waitLive(page) {
  await waitVisible(slaView(page), 'the SLA view ("Is chat meeting its SLA?")');
  await waitForText(slaStatus(page), /^Chat (meets|is violating) its SLA/, 'the "SLA status"');
  await waitForText(liveLine(page), new RegExp(`^Live: as of ${CLOCK}, asked every 2 s\\.$`), 'the line saying the figures are live');
}

/**
 * What a screen reader needs of the view: every chart an `img` named by its title and figures,
 * every table named with headers, every control and link with a name, and no colour alone
 * saying a state (a degraded tier says "Degraded" in its row).
 * @param {import('playwright-core').Page} page
 */
async function checkAccessibleNames(page) {
  const problems = await slaView(page).evaluate((view) => {
    const found = [];
    for (const img of Array.from(view.querySelectorAll('svg'))) {
      if (img.closest('[aria-hidden="true"]') && img.getAttribute('role') !== 'img') continue;
      const name = img.getAttribute('aria-label') ?? '';
      if (img.getAttribute('role') !== 'img' || !/^[^:]+: .*\d/.test(name)) found.push(`an svg without role img and a name with its figures: ${name || '(none)'}`);
    }
    for (const table of Array.from(view.querySelectorAll('table'))) {
      if (!table.getAttribute('aria-label')) found.push('a table without a name');
      if (table.querySelectorAll('th[scope="col"]').length === 0) found.push(`table ${table.getAttribute('aria-label')} has no column headers`);
    }
    for (const input of Array.from(view.querySelectorAll('input'))) {
      if (!input.labels || input.labels.length === 0 || !input.labels[0].textContent?.trim()) found.push(`an input (${input.type} ${input.value}) without a label`);
    }
    for (const control of Array.from(view.querySelectorAll('a, button'))) {
      if (!(control.getAttribute('aria-label') ?? control.textContent ?? '').trim()) found.push(`a ${control.tagName.toLowerCase()} without a name`);
    }
    const fieldset = view.querySelector('fieldset');
    if (fieldset && !fieldset.querySelector('legend')?.textContent?.trim()) found.push('the window picker has no legend');
    return found;
  });
  assert.deepEqual(problems, [], 'every chart, table, input and link of the SLA view has an accessible name');
  // The charts, by their names.
  await waitVisible(slaView(page).getByRole('img', { name: /^Response time \(message accepted → final event\): last minute p50 / }), 'the response-time chart');
  await waitVisible(slaView(page).getByRole('img', { name: /^First event \(message accepted → first event\): last minute p50 / }), 'the first-event chart');
  await waitVisible(
    slaView(page).getByRole('img', { name: new RegExp(`^Response p95 and tier p99 over time: \\d+ samples? from ${CLOCK} to ${CLOCK}; latest response p95 `) }),
    'the chart over time',
  );
  await waitVisible(slaView(page).getByRole('group', { name: 'Window', exact: true }), 'the "Window" picker');
}

/** Uncaught exceptions of the pages (a refused connection's console line is not one). @param {string[]} problems */
const uncaught = (problems) => problems.filter((problem) => problem.startsWith('uncaught'));

webTest(
  'signed in, the SLA view (from the banner) counts the runs sent and lists the store, and leads back to the thread',
  {},
  async ({ page, problems, screenshot }) => {
    await signInAsDev(page);
    await askAndWait(page, 'How can we cut our LLM costs?');
    await askAndWait(page, 'And where is our latency worst?');
    const thread = new URL(page.url()).hash;
    assert.match(thread, /^#thread=/, 'the conversation is a thread');

    await page.getByRole('link', { name: 'SLA', exact: true }).click();
    await waitLive(page);
    assert.equal(new URL(page.url()).hash, '#sla', 'the view has its own location');
    assert.equal(await page.title(), 'SLA · Switchboard');
    assert.equal(await signOutButton(page).isVisible(), false, 'the chat is not shown beside it');

    // Both runs, in every window (each counts the runs whose final event was stored in it).
    const runs = await waitFor(
      'the "Runs" row of "Windows" to count the 2 runs in each window',
      async () => {
        const cells = await windowsRow(page, 'Runs');
        return cells.length === 3 && cells.every((cell) => cell === '2') ? cells : false;
      },
      { seen: () => windowsTable(page).innerText() },
    );
    assert.deepEqual(runs, ['2', '2', '2']);
    const headers = (await windowsTable(page).getByRole('columnheader').allInnerTexts()).map((t) => t.trim());
    assert.deepEqual(headers, ['Last minute', 'Last 5 minutes', 'Last 15 minutes']);
    const p95 = await windowsRow(page, 'Response p95');
    assert.ok(p95.every((cell) => /^[\d.,]+ ms/.test(cell)), `each window has a response p95 in ms: ${JSON.stringify(p95)}`);

    // The store of this server (SQLite), with its operations and its limit, said in words.
    const sqlite = await waitForText(tierRow(page, 'SQLite'), /^SQLite\s+(Fine|Degraded)\s+[\d,]+\s/, 'the "SQLite" row of "Tiers"');
    const cells = (await tierRow(page, 'SQLite').getByRole('cell').allInnerTexts()).map((t) => t.trim());
    assert.ok(Number(cells[1].replace(/,/g, '')) > 0, `SQLite has operations: ${sqlite}`);
    assert.equal(cells[4], '200 ms', `SQLite's limit is 200 ms: ${sqlite}`);
    await waitForText(slaView(page).getByText(/^The SLA: /), /response p95 under 2,000 ms; no response over 3,000 ms; .*a SQLite operation under 200 ms/, 'the thresholds');
    // The readiness checks, per check.
    await waitForText(slaView(page).getByRole('list', { name: 'Readiness checks', exact: true }), /SQLite: (ok|degraded), in [\d.,]+ ms[\s\S]*store: ok/, 'the readiness checks');

    // Another window, picked.
    await slaView(page).getByRole('radio', { name: 'Last 15 minutes', exact: true }).check();
    await waitForText(slaView(page).getByRole('heading', { name: /^Tiers over/ }), 'Tiers over the last 15 minutes', 'the tiers heading');
    await checkAccessibleNames(page);
    await screenshot('sla-signed-in');

    // Back to the thread that was open, without loading the page again.
    await slaView(page).getByRole('link', { name: 'Back to chat', exact: true }).click();
    await waitGone(slaView(page), 'the SLA view');
    await waitVisible(signOutButton(page), 'the signed-in screen');
    assert.equal(new URL(page.url()).hash, thread, 'back at the thread');
    await waitForText(messagesLog(page), 'And where is our latency worst?', 'the thread\'s messages');
    assert.deepEqual(uncaught(problems), []);
  },
);

webTest('signed out, the SLA view needs no sign-in: linked from the sign-in card, and by its URL', {}, async ({ page, server, problems }) => {
  await openApp(page);
  await page.getByRole('link', { name: 'Is chat meeting its SLA?', exact: true }).click();
  await waitLive(page);
  assert.equal(await signInForm(page).isVisible(), false, 'the sign-in form is not shown beside it');
  await waitForText(tierRow(page, 'SQLite'), /^SQLite\b/, 'the "SQLite" row of "Tiers"');
  const runs = await windowsRow(page, 'Runs');
  assert.deepEqual(runs, ['0', '0', '0'], 'no runs yet');
  await waitForText(slaView(page).getByText(/^None over the /), 'None over the last minute.', 'the violations (none)');
  const responses = await windowsRow(page, 'Response p50');
  assert.deepEqual(responses, ['none', 'none', 'none'], 'no response times without runs');

  // "Sign in" leads to the form; the URL alone leads to the view.
  await slaView(page).getByRole('link', { name: 'Sign in', exact: true }).click();
  await waitVisible(signInForm(page), 'the "Sign in" form');
  const other = await page.context().newPage();
  await other.goto(`${server.url}/#sla`);
  await waitLive(other);
  await checkAccessibleNames(other);
  assert.deepEqual(uncaught(problems), []);
});

webTest(
  'PostgreSQL made slow through the fault proxy: the SLA view names it as degraded, in words',
  { postgres: true, timeout: 150_000 },
  async ({ page, postgres, problems, screenshot }) => {
    assert.ok(postgres, 'the test has its PostgreSQL');
    await signInAsDev(page);
    await askAndWait(page, 'How can we cut our LLM costs?');
    await page.getByRole('link', { name: 'SLA', exact: true }).click();
    await waitLive(page);
    await waitForText(tierRow(page, 'PostgreSQL'), /^PostgreSQL\s+(Fine|Degraded)\s+[\d,]*[1-9]/, 'the "PostgreSQL" row of "Tiers" with its operations');

    // Every chunk between the server and PostgreSQL is held 300 ms: over the 200 ms limit.
    await postgres.proxy.set('latency 300');
    const status = await waitForText(slaStatus(page), /degraded: PostgreSQL/, 'the "SLA status" naming PostgreSQL', { timeout: 40_000 });
    assert.match(status, /^Chat (meets its SLA, but it is degraded: PostgreSQL\.|is violating its SLA.*; degraded: PostgreSQL\.)$/);
    await waitForText(tierRow(page, 'PostgreSQL'), /^PostgreSQL\s+Degraded\b/, 'the "PostgreSQL" row saying "Degraded"');
    const state = await tierRow(page, 'PostgreSQL').getByRole('cell').first().innerText();
    assert.equal(state.trim(), 'Degraded', 'the state is said in words, not by colour alone');
    await waitForText(
      slaView(page).getByRole('list', { name: 'Readiness checks', exact: true }),
      /PostgreSQL: degraded, in [\d.,]+ ms: (answered in \d+ ms \(slower than 200 ms\)|.*did not answer)/,
      'the readiness check of PostgreSQL',
    );
    await waitVisible(slaView(page).getByRole('img', { name: /^Response p95 and tier p99 over time: / }), 'the chart over time');
    const chart = await slaView(page).getByRole('img', { name: /^Response p95 and tier p99 over time: / }).getAttribute('aria-label');
    assert.match(chart ?? '', /PostgreSQL p99 [\d.,]+ ms \(limit 200 ms/, `the chart names PostgreSQL's p99 and its limit: ${chart}`);
    await screenshot('sla-postgres-degraded');
    await postgres.proxy.set('none');
    assert.deepEqual(uncaught(problems), []);
  },
);

webTest(
  'the server stopped: the SLA view says it did not answer, marks the figures as from the last answer, and recovers when it is back',
  {},
  async ({ page, server, problems, screenshot }) => {
    await page.goto('/#sla');
    await waitLive(page);
    const before = await slaStatus(page).innerText();

    await server.stop();
    const said = await waitForText(polling(page), /^The server did not answer \/api\/sla: it cannot be reached; retrying every 2 s\./, 'the "Polling" alert');
    assert.match(said, /The server did not answer \/health\/ready: it cannot be reached; retrying every 2 s\./, 'the readiness poll is said too');
    const stale = await waitForText(slaStatus(page), /^Not known now\./, 'the "SLA status" saying it is not known');
    assert.match(stale, new RegExp(`^Not known now\\. The last report, from ${CLOCK}, said: ${before.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`));
    await waitForText(liveLine(page), new RegExp(`^Not live: the figures below are from ${CLOCK}, the last answer\\.$`), 'the figures marked as not live');
    assert.ok(await windowsTable(page).isVisible(), 'the last figures are still shown (marked)');
    await screenshot('sla-server-stopped');

    await server.restart();
    await waitGone(polling(page), 'the "Polling" alert once the server is back', { timeout: 30_000 });
    await waitLive(page);
    assert.deepEqual(uncaught(problems), []);
  },
);

webTest('an /api/sla that answers 503, or something that is not a report, is said in a sentence; a refused request too', {}, async ({ page, problems }) => {
  await page.goto('/#sla');
  await waitLive(page);

  await page.route('**/api/sla', (route) => route.fulfill({ status: 503, contentType: 'text/plain', body: 'upstream down' }));
  await waitForText(polling(page), /^The server did not answer \/api\/sla: it answered 503\b.*; retrying every 2 s\.$/, 'the "Polling" alert (503)');
  await waitForText(slaStatus(page), /^Not known now\. The last report, from /, 'the "SLA status"');

  await page.unroute('**/api/sla');
  await page.route('**/api/sla', (route) => route.fulfill({ status: 200, contentType: 'application/json', body: '{"hello":"world"}' }));
  await waitForText(polling(page), 'The server did not answer /api/sla: its answer is not an SLA report (no status or no windows); retrying every 2 s.', 'the "Polling" alert (not a report)');

  await page.unroute('**/api/sla');
  await page.route('**/api/sla', (route) => route.abort('connectionrefused'));
  await waitForText(polling(page), 'The server did not answer /api/sla: it cannot be reached; retrying every 2 s.', 'the "Polling" alert (refused)');
  // The readiness poll still answers: only /api/sla is said.
  assert.doesNotMatch(await polling(page).innerText(), /health\/ready/);

  await page.unroute('**/api/sla');
  await waitGone(polling(page), 'the "Polling" alert once /api/sla answers');
  await waitLive(page);
  assert.deepEqual(uncaught(problems), []);
});

webTest('the SLA view polls every 2 s while shown, and not when it is left or the tab is hidden (on a fake clock)', {}, async ({ page }) => {
  // Each poll's request to /api/sla, counted in the page as it is made.
  await page.addInitScript(() => {
    const w = /** @type {any} */ (window);
    w.__slaPolls = 0;
    const real = window.fetch.bind(window);
    window.fetch = (input, init) => {
      if (String(input instanceof Request ? input.url : input).endsWith('/api/sla')) w.__slaPolls += 1;
      return real(input, init);
    };
  });
  const polls = () => page.evaluate(() => /** @type {number} */ (/** @type {any} */ (window).__slaPolls));
  await page.clock.install();
  await page.goto('/#sla');
  await waitLive(page);
  await page.clock.pauseAt((await page.evaluate(() => Date.now())) + 50);

  // Shown: the clock moved on by 2 s brings another poll.
  const pollsAgain = async (/** @type {string} */ what) => {
    const from = await polls();
    await waitFor(what, async () => {
      await page.clock.runFor(500);
      return (await polls()) > from;
    });
  };
  await pollsAgain('another poll once the clock moved on');
  // The next poll is 2 s after the last one ended, not sooner.
  await waitFor('the poll to end (the view no longer busy)', async () => (await slaView(page).getAttribute('aria-busy')) === null);
  const shown = await polls();
  await page.clock.runFor(1999);
  assert.equal(await polls(), shown, 'no poll sooner than 2 s after the last');
  await page.clock.runFor(1);
  assert.equal(await polls(), shown + 1, 'a poll 2 s after the last');

  // Left (to the sign-in form): a minute passes without a poll.
  await slaView(page).getByRole('link', { name: 'Sign in', exact: true }).click();
  await waitVisible(signInForm(page), 'the "Sign in" form');
  const left = await polls();
  await page.clock.runFor(60_000);
  assert.equal(await polls(), left, 'no poll while the view is not shown');

  // Back: it polls at once, and on.
  await page.goBack();
  await waitVisible(slaView(page), 'the SLA view again');
  await waitFor('a poll at once when the view is shown again', async () => (await polls()) > left);
  await pollsAgain('polls again while shown');

  // The tab hidden: none; visible again: at once.
  await page.evaluate(() => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  const hidden = await polls();
  await page.clock.runFor(60_000);
  assert.equal(await polls(), hidden, 'no poll while the tab is hidden');
  await page.evaluate(() => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'visible' });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await waitFor('a poll at once when the tab is visible again', async () => (await polls()) > hidden);
});

webTest('the SLA view fits a phone (390×844)', { viewport: { width: 390, height: 844 } }, async ({ page, screenshot }) => {
  await signInAsDev(page);
  await page.getByRole('link', { name: 'SLA', exact: true }).click();
  await waitLive(page);
  await screenshot('narrow-sla');
  const o = await horizontalOverflow(page);
  assert.ok(o.scrollWidth <= o.innerWidth, `the SLA view is ${o.scrollWidth} px wide in ${o.innerWidth} px (${o.widest})`);
});
