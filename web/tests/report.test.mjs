// The report of an analysis as charts: each an image whose name holds its figures.

import assert from 'node:assert/strict';
import {
  askAndWait,
  lastAnswer,
  ndjson,
  signInAsDev,
  waitForText,
  waitVisible,
  webTest,
  workloadRows,
} from './harness.mjs';

/**
 * The accessible name of every image in the newest answer.
 * @param {import('playwright-core').Page} page
 * @returns {Promise<string[]>}
 */
async function chartNames(page) {
  const images = lastAnswer(page).getByRole('img');
  const names = [];
  for (let i = 0; i < (await images.count()); i++) {
    names.push(
      await images.nth(i).evaluate((el) => {
        const labelled = el.getAttribute('aria-labelledby');
        if (labelled) {
          return labelled
            .split(/\s+/)
            .map((id) => document.getElementById(id)?.textContent ?? '')
            .join(' ');
        }
        return el.getAttribute('aria-label') ?? el.getAttribute('alt') ?? el.querySelector('title')?.textContent ?? '';
      }),
    );
  }
  return names;
}

/**
 * Checks the four charts of the newest answer.
 * @param {import('playwright-core').Page} page
 * @param {{models: string[], features: string[]}} data what the uploaded data holds
 */
async function checkCharts(page, data) {
  const answer = lastAnswer(page);
  // Each name starts with its title (a note such as "(UTC)" may follow it), then its figures.
  const titled = (/** @type {string} */ title) => new RegExp(`^${title}( \\([^)]*\\))?: `);
  for (const title of ['Cost by model', 'Cost by feature', 'Calls per hour of the day', 'Savings per strategy']) {
    await waitVisible(answer.getByRole('img', { name: titled(title) }), `the chart "${title}: …" in the answer`);
  }
  const names = await chartNames(page);
  const named = (/** @type {string} */ title) => names.find((n) => titled(title).test(n)) ?? '';
  const byModel = named('Cost by model');
  assert.ok(data.models.some((m) => byModel.includes(m)), `"Cost by model" names a model: ${byModel}`);
  assert.match(byModel, /\$\d/, `"Cost by model" holds dollar figures: ${byModel}`);
  const byFeature = named('Cost by feature');
  assert.ok(data.features.some((f) => byFeature.includes(f)), `"Cost by feature" names a feature: ${byFeature}`);
  assert.match(byFeature, /\$\d/, `"Cost by feature" holds dollar figures: ${byFeature}`);
  const perHour = named('Calls per hour of the day');
  assert.match(perHour, /\b\d{2}(:00)?\b.*\d/, `"Calls per hour of the day" holds hours and counts: ${perHour}`);
  const savings = named('Savings per strategy');
  assert.match(savings, /\$\d/, `"Savings per strategy" holds dollar figures: ${savings}`);
  for (const name of names) {
    assert.ok(!/NaN|undefined|null|\[object/.test(name), `a chart name shows no placeholder: ${name}`);
  }
}

webTest('an uploaded file, then "Where does our money go?": the answer has the four charts', {}, async ({ page }) => {
  await signInAsDev(page);
  const rows = workloadRows(4_000);
  await page
    .getByLabel('Upload usage data', { exact: true })
    .setInputFiles({ name: 'month.ndjson', mimeType: 'application/x-ndjson', buffer: Buffer.from(ndjson(rows)) });
  await waitForText(page.getByRole('status', { name: 'Upload', exact: true }), /Stored 4,000 calls from month\.ndjson\./, 'the "Upload" status');
  await askAndWait(page, 'Where does our money go?');
  await checkCharts(page, {
    models: ['gpt-4o', 'gpt-4o-mini', 'claude-sonnet-4'],
    features: ['search', 'chat', 'summaries', 'nightly-report'],
  });
});

webTest('"Try demo data", then "Where does our money go?": the answer has the four charts', {}, async ({ page }) => {
  await signInAsDev(page);
  await page.getByRole('button', { name: 'Try demo data', exact: true }).click();
  await waitForText(page.getByRole('status', { name: 'Upload', exact: true }), /Stored [\d,]+ calls/, 'the "Upload" status after "Try demo data"', {
    timeout: 30_000,
  });
  await askAndWait(page, 'Where does our money go?');
  // The demo month (crates/agents/src/demo.rs) has several providers' models and features.
  await checkCharts(page, {
    models: ['gpt-4o', 'gpt-4o-mini', 'claude', 'gemini', 'llama', 'mistral'],
    features: ['support-chat', 'search-answers', 'tagging', 'autocomplete', 'nightly-report'],
  });
});
