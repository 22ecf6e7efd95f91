// The main screens at a phone's width (390×844) and a desktop's (1440×900): a screenshot of each
// in target/web-screenshots/ (always: they are for a person to look at), and nothing wider than
// the window.

import assert from 'node:assert/strict';
import {
  askAndWait,
  horizontalOverflow,
  ndjson,
  closeSideBar,
  openApp,
  openSideBar,
  signInAsDev,
  threadsNav,
  waitForText,
  waitVisible,
  webTest,
  workloadRows,
} from './harness.mjs';

const VIEWPORTS = [
  { label: 'narrow', viewport: { width: 390, height: 844 } },
  { label: 'wide', viewport: { width: 1440, height: 900 } },
];

for (const { label, viewport } of VIEWPORTS) {
  webTest(`the main screens fit a ${label} window (${viewport.width}×${viewport.height})`, { viewport }, async ({ page, screenshot }) => {
    /** @type {string[]} */
    const overflowing = [];
    const shoot = async (/** @type {string} */ screen) => {
      await screenshot(`${label}-${screen}`);
      const o = await horizontalOverflow(page);
      if (o.scrollWidth > o.innerWidth) overflowing.push(`${screen}: ${o.scrollWidth} px wide in ${o.innerWidth} px (${o.widest})`);
    };

    await openApp(page);
    await shoot('1-sign-in');

    await signInAsDev(page);
    await shoot('2-empty-chat');

    await openSideBar(page);
    await shoot('2b-side-bar');
    const rows = workloadRows(3_000);
    await page
      .getByLabel('Upload usage data', { exact: true })
      .setInputFiles({ name: 'month.ndjson', mimeType: 'application/x-ndjson', buffer: Buffer.from(ndjson(rows)) });
    await waitForText(page.getByRole('status', { name: 'Upload', exact: true }), /Stored 3,000 calls/, 'the "Upload" status');
    await closeSideBar(page);
    await askAndWait(page, 'Where does our money go? Compare gpt-4o-mini versus claude-sonnet-4 for search, and show the figures per hour of the day');
    await shoot('3-answer-with-charts-and-timeline');

    await openSideBar(page);
    const bad = workloadRows(5);
    bad[2].input_tokens = -1;
    bad[4].timestamp = 'yesterday-ish, a very long value that does not wrap nicely at all because it has no spaces-'.repeat(2);
    await page
      .getByLabel('Upload usage data', { exact: true })
      .setInputFiles({ name: 'a-rather-long-file-name-for-the-usage-of-last-month.ndjson', mimeType: 'application/x-ndjson', buffer: Buffer.from(ndjson(bad)) });
    await waitVisible(page.getByRole('list', { name: 'Refused rows', exact: true }), 'the "Refused rows" list');
    await shoot('4-refused-rows');

    await openSideBar(page);
    const remove = threadsNav(page).getByRole('button', { name: /^Delete thread / }).first();
    if (await remove.isVisible()) {
      await remove.click();
      await waitVisible(page.getByRole('dialog', { name: 'Delete this thread?', exact: true }), 'the "Delete this thread?" dialog');
      await shoot('5-delete-dialog');
      await page.getByRole('dialog').getByRole('button', { name: 'Cancel', exact: true }).click();
    }

    assert.deepEqual(overflowing, [], 'no screen is wider than the window');
  });
}
