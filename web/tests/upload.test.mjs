// Uploading usage data: a large NDJSON file in chunks with progress, refused rows by their line,
// JSON and CSV files.

import assert from 'node:assert/strict';
import {
  askAndWait,
  ndjson,
  signInAsDev,
  timeline,
  waitFor,
  waitForText,
  waitVisible,
  webTest,
  workloadRows,
} from './harness.mjs';

/** @param {import('playwright-core').Page} page */
const fileInput = (page) => page.getByLabel('Upload usage data', { exact: true });
/** @param {import('playwright-core').Page} page */
const uploadStatus = (page) => page.getByRole('status', { name: 'Upload', exact: true });
/** @param {import('playwright-core').Page} page */
const progress = (page) => page.getByRole('progressbar', { name: 'Upload progress', exact: true });
/** @param {import('playwright-core').Page} page */
const refused = (page) => page.getByRole('list', { name: 'Refused rows', exact: true });

/**
 * Records every value any progress bar of the page takes from now on (the test reads them after
 * the upload, to see it went through several steps).
 * @param {import('playwright-core').Page} page
 */
async function recordProgress(page) {
  await page.evaluate(() => {
    /** @type {number[]} */
    const seen = [];
    /** @type {any} */ (window).__progressSeen = seen;
    const read = () => {
      for (const el of Array.from(document.querySelectorAll('progress, [role="progressbar"]'))) {
        const now = el.getAttribute('aria-valuenow');
        const max = el.getAttribute('aria-valuemax');
        let value = null;
        if (el instanceof HTMLProgressElement && now === null) value = el.max ? (el.value / el.max) * 100 : null;
        else if (now !== null) value = (Number(now) / (max === null ? 100 : Number(max))) * 100;
        if (value !== null && Number.isFinite(value) && seen[seen.length - 1] !== value) seen.push(value);
      }
    };
    new MutationObserver(read).observe(document.body, { subtree: true, childList: true, attributes: true, characterData: true });
  });
}

/**
 * The upload progress bar's value, in percent of its maximum.
 * @param {import('playwright-core').Page} page
 */
async function progressPercent(page) {
  return progress(page).evaluate((el) => {
    const now = el.getAttribute('aria-valuenow');
    const max = el.getAttribute('aria-valuemax');
    if (now !== null) return (Number(now) / (max === null ? 100 : Number(max))) * 100;
    if (el instanceof HTMLProgressElement) return el.max ? (el.value / el.max) * 100 : NaN;
    return NaN;
  });
}

/**
 * Asks a question and reads, in the run timeline, how many calls triage found uploaded
 * ("…; you have N model calls uploaded." or "…; you have no workload data uploaded yet.").
 * @param {import('playwright-core').Page} page
 */
async function callsTheAgentsSee(page) {
  await askAndWait(page, 'How much do we spend?');
  const text = await waitForText(timeline(page), /you have (no workload data|[\d,]+ model calls?) uploaded/, 'the run timeline');
  const match = /you have ([\d,]+) model calls? uploaded/.exec(text);
  return match ? Number(match[1].replace(/,/g, '')) : 0;
}

/**
 * The items of the "Refused rows" list, once it shows one.
 * @param {import('playwright-core').Page} page
 */
async function refusedItems(page) {
  const list = refused(page);
  await waitVisible(list, 'the "Refused rows" list');
  return waitFor('a refused row', async () => {
    const texts = await list.getByRole('listitem').allInnerTexts();
    return texts.length ? texts : false;
  });
}

webTest('a 30 000-row NDJSON file uploads in chunks with progress to 100 and says it is stored', {}, async ({ page }) => {
  await signInAsDev(page);
  const rows = workloadRows(30_000);
  const buffer = Buffer.from(ndjson(rows));
  await recordProgress(page);
  await fileInput(page).setInputFiles({ name: 'usage.ndjson', mimeType: 'application/x-ndjson', buffer });
  await waitVisible(progress(page), 'the "Upload progress" progress bar');
  await waitForText(uploadStatus(page), /Stored 30,000 calls from usage\.ndjson\./, 'the "Upload" status', { timeout: 60_000 });
  const percent = await progressPercent(page);
  assert.equal(percent, 100, 'the progress bar reached 100');
  const seen = /** @type {number[]} */ (await page.evaluate(() => /** @type {any} */ (window).__progressSeen));
  assert.ok(
    seen.some((v) => v > 0 && v < 100),
    `the progress bar showed a step between 0 and 100 (the file goes in several chunks): ${JSON.stringify(seen)}`,
  );
  assert.equal(await refused(page).getByRole('listitem').count(), 0, 'no refused rows');
  assert.equal(await callsTheAgentsSee(page), 30_000, 'the agents find the 30 000 calls');
});

webTest('a file with a bad row lists it under "Refused rows" by its line and stores nothing', {}, async ({ page }) => {
  await signInAsDev(page);
  const rows = workloadRows(10);
  rows[2].input_tokens = -1;
  await fileInput(page).setInputFiles({ name: 'bad.ndjson', mimeType: 'application/x-ndjson', buffer: Buffer.from(ndjson(rows)) });
  const items = await refusedItems(page);
  assert.equal(items.length, 1, `one refused row: ${JSON.stringify(items)}`);
  assert.match(items[0], /^Line 3: .*input_tokens/, `the row is named by its line and field: ${items[0]}`);
  const status = await uploadStatus(page).innerText();
  assert.ok(!/Stored/.test(status), `the "Upload" status does not say stored: ${status}`);

  // All or nothing: the agents find no data.
  assert.equal(await callsTheAgentsSee(page), 0, 'nothing of the refused file was stored');
});

webTest('a bad row in a later chunk is named by its line in the file', {}, async ({ page }) => {
  await signInAsDev(page);
  const rows = workloadRows(12_000);
  rows[11_499].output_tokens = 'many';
  await fileInput(page).setInputFiles({ name: 'late.ndjson', mimeType: 'application/x-ndjson', buffer: Buffer.from(ndjson(rows)) });
  const list = refused(page);
  await waitVisible(list, 'the "Refused rows" list', { timeout: 60_000 });
  const items = await list.getByRole('listitem').allInnerTexts();
  assert.equal(items.length, 1, `one refused row: ${JSON.stringify(items)}`);
  assert.match(items[0], /^Line 11,?500: /, `the row is named by its line in the file, not in its chunk: ${items[0]}`);
});

webTest('a CSV file with a header uploads; a bad CSV row is refused by its line', {}, async ({ page }) => {
  await signInAsDev(page);
  const header = 'timestamp,model,input_tokens,output_tokens,feature,latency_ms,status';
  const lines = workloadRows(50).map(
    (r) => `${r.timestamp},${r.model},${r.input_tokens},${r.output_tokens},${r.feature},${r.latency_ms},${r.status}`,
  );
  await fileInput(page).setInputFiles({ name: 'usage.csv', mimeType: 'text/csv', buffer: Buffer.from([header, ...lines].join('\n') + '\n') });
  await waitForText(uploadStatus(page), /Stored 50 calls from usage\.csv\./, 'the "Upload" status');

  // Line 1 is the header: the second data row is line 3.
  const bad = [...lines];
  bad[1] = bad[1].replace(/,\d+,(\d+),/, ',-1,$1,');
  await fileInput(page).setInputFiles({ name: 'bad.csv', mimeType: 'text/csv', buffer: Buffer.from([header, ...bad].join('\n') + '\n') });
  const items = await refusedItems(page);
  assert.equal(items.length, 1, `one refused row: ${JSON.stringify(items)}`);
  assert.match(items[0], /^Line 3: .*input_tokens/, `the CSV row is named by its line in the file: ${items[0]}`);
});

webTest('a JSON array file uploads', {}, async ({ page }) => {
  await signInAsDev(page);
  const rows = workloadRows(20);
  await fileInput(page).setInputFiles({ name: 'usage.json', mimeType: 'application/json', buffer: Buffer.from(JSON.stringify(rows)) });
  await waitForText(uploadStatus(page), /Stored 20 calls from usage\.json\./, 'the "Upload" status');
});
