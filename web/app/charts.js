// The report of an analysis (`result.report` on a run's final event) as charts: SVG drawn here,
// each an `img` whose accessible name is its title and every figure it shows, so the chart reads
// the same to a screen reader as to the eye.

import { h, svg } from './dom.js';
import { count, usd } from './format.js';

/**
 * @typedef {{ label: string, value: number, shown: string, spoken?: string }} Bar
 * `shown` is the figure beside the bar; `spoken` (when it differs) the same in the chart's name.
 */

/**
 * The report's charts, leaving out those it has no figures for.
 * @param {any} report
 * @returns {HTMLElement}
 */
export function reportCharts(report) {
  const rows = (/** @type {unknown} */ list) => (Array.isArray(list) ? list : []);
  /** @type {(list: any[], key: string) => Bar[]} */
  const costs = (list, key) =>
    list
      .filter((row) => typeof row?.cost_usd === 'number')
      .map((row) => ({ label: String(row[key] ?? '(none)'), value: row.cost_usd, shown: usd(row.cost_usd) }))
      .sort((a, b) => b.value - a.value)
      .slice(0, 12);
  const hours = new Array(24).fill(0);
  for (const row of rows(report?.hours)) {
    if (Number.isInteger(row?.hour) && row.hour >= 0 && row.hour < 24 && typeof row.calls === 'number') {
      hours[row.hour] += row.calls;
    }
  }
  const savings = rows(report?.strategies)
    .filter((row) => typeof row?.monthly_savings_usd === 'number')
    .map((row) => ({
      label: String(row.title ?? row.strategy ?? 'strategy'),
      value: row.monthly_savings_usd,
      shown: `${usd(row.monthly_savings_usd)}/mo`,
      spoken: `${usd(row.monthly_savings_usd)} a month`,
    }));
  const charts = [
    horizontalBars('Cost by model', costs(rows(report?.by_model), 'model')),
    horizontalBars('Cost by feature', costs(rows(report?.by_feature), 'feature')),
    hours.some((calls) => calls > 0) ? hourColumns('Calls per hour of the day (UTC)', hours) : null,
    horizontalBars('Savings per strategy', savings),
  ];
  return h('div', { class: 'charts' }, charts);
}

/**
 * A bar per row, longest first, with its label and figure.
 * @param {string} title
 * @param {Bar[]} bars
 */
function horizontalBars(title, bars) {
  if (bars.length === 0) return null;
  const most = Math.max(...bars.map((bar) => bar.value), 0) || 1;
  const rowHeight = 24;
  const width = 360;
  const labelWidth = 124;
  const figureWidth = 92;
  const room = width - labelWidth - figureWidth;
  const height = bars.length * rowHeight + 4;
  const name = `${title}: ${bars.map((bar) => `${bar.label} ${bar.spoken ?? bar.shown}`).join(', ')}`;
  return figure(
    title,
    name,
    width,
    height,
    bars.map((bar, index) => {
      const y = index * rowHeight + 2;
      const length = Math.max(1, (bar.value / most) * room);
      return svg(
        'g',
        { 'aria-hidden': 'true' },
        svg('text', { x: labelWidth - 8, y: y + 17, 'text-anchor': 'end', class: 'chart-label' }, clip(bar.label, 18)),
        svg('rect', { x: labelWidth, y: y + 4, width: length.toFixed(1), height: rowHeight - 8, rx: 3, class: 'chart-bar' }),
        svg('text', { x: labelWidth + length + 6, y: y + 17, class: 'chart-figure' }, bar.shown),
      );
    }),
  );
}

/**
 * 24 columns, one per hour of the day.
 * @param {string} title
 * @param {number[]} calls
 */
function hourColumns(title, calls) {
  const width = 360;
  const height = 150;
  const bottom = 124;
  const most = Math.max(...calls) || 1;
  const column = (width - 12) / 24;
  const name = `${title}: ${calls.map((n, hour) => `${String(hour).padStart(2, '0')}:00 ${count(n)}`).join(', ')}`;
  return figure(
    title,
    name,
    width,
    height,
    svg(
      'g',
      { 'aria-hidden': 'true' },
      calls.map((n, hour) => {
        // The top 22 units are the peak's label.
        const tall = Math.max(n > 0 ? 1 : 0, (n / most) * (bottom - 22));
        const x = 6 + hour * column;
        return svg(
          'g',
          {},
          svg('rect', { x: (x + 2).toFixed(1), y: (bottom - tall).toFixed(1), width: (column - 4).toFixed(1), height: tall.toFixed(1), rx: 2, class: 'chart-bar' }),
          hour % 3 === 0
            ? svg('text', { x: (x + column / 2).toFixed(1), y: bottom + 18, 'text-anchor': 'middle', class: 'chart-label' }, String(hour).padStart(2, '0'))
            : null,
        );
      }),
      svg('text', { x: 6, y: 12, class: 'chart-figure' }, `peak ${count(most)} calls`),
    ),
  );
}

/**
 * A chart: its caption, and the drawing as an `img` named `name` (the title and every figure).
 * @param {string} title
 * @param {string} name
 * @param {number} width
 * @param {number} height
 * @param {import('./dom.js').Child} drawing
 */
function figure(title, name, width, height, drawing) {
  return h(
    'figure',
    { class: 'chart' },
    h('figcaption', {}, title),
    svg('svg', { role: 'img', 'aria-label': name, viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: 'xMinYMin meet' }, drawing),
  );
}

/** @param {string} text @param {number} length */
function clip(text, length) {
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}
