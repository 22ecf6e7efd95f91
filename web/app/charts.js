// Charts as SVG drawn here, each an `img` whose accessible name is its title and every figure it
// shows, so the chart reads the same to a screen reader as to the eye: the report of an analysis
// (`result.report` on a run's final event), and the SLA view's percentiles against their limits
// and figures over time.

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

/**
 * @typedef {{ value: number, label: string }} Limit a threshold line: where, and what it is
 * @typedef {{ label: string, value: number | null }} Percentile one bar; `null`: no samples
 * @typedef {{ label: string, spoken?: string, bars: Percentile[] }} PercentileGroup `label` is
 *   drawn, `spoken` (when it differs) says the same in the chart's name
 */

/**
 * Durations in ms as a person reads them: `0.4 ms`, `12 ms`, `2,400 ms`.
 * @param {number} ms
 */
export function millis(ms) {
  return ms < 10 ? `${(Math.round(ms * 10) / 10).toString()} ms` : `${count(Math.round(ms))} ms`;
}

/**
 * Groups of horizontal bars (the percentiles of each window, say) on one scale, with a dashed
 * line at each limit; a bar past the first limit is marked (in its name too, "over").
 * @param {string} title
 * @param {PercentileGroup[]} groups
 * @param {Limit[]} limits
 */
export function percentileBars(title, groups, limits) {
  const rowHeight = 18;
  const groupGap = 8;
  const top = 16;
  const width = 360;
  const labelWidth = 96;
  const figureWidth = 64;
  const room = width - labelWidth - figureWidth;
  const values = groups.flatMap((group) => group.bars.map((bar) => bar.value ?? 0));
  const most = Math.max(...values, ...limits.map((limit) => limit.value)) * 1.08 || 1;
  const x = (/** @type {number} */ value) => labelWidth + (Math.max(0, value) / most) * room;
  const first = limits.length > 0 ? Math.min(...limits.map((limit) => limit.value)) : Infinity;
  const rows = groups.reduce((n, group) => n + group.bars.length, 0);
  const height = top + rows * rowHeight + (groups.length - 1) * groupGap + 4;
  const spoken = (/** @type {Percentile} */ bar) =>
    bar.value === null ? `${bar.label} none` : `${bar.label} ${millis(bar.value)}${bar.value > first ? ' (over)' : ''}`;
  const name =
    `${title}: ${groups.map((group) => `${group.spoken ?? group.label} ${group.bars.map(spoken).join(', ')}`).join('; ')}` +
    (limits.length > 0 ? `; lines at ${limits.map((limit) => `${millis(limit.value)} (${limit.label})`).join(' and ')}` : '');
  /** @type {SVGElement[]} */
  const drawn = [];
  let y = top;
  for (const group of groups) {
    group.bars.forEach((bar, index) => {
      const over = bar.value !== null && bar.value > first;
      const end = bar.value === null ? labelWidth : x(bar.value);
      drawn.push(
        svg(
          'g',
          {},
          svg('text', { x: labelWidth - 6, y: y + 13, 'text-anchor': 'end', class: 'chart-label' }, index === 0 ? `${group.label} ${bar.label}` : bar.label),
          bar.value === null
            ? null
            : svg('rect', { x: labelWidth, y: y + 3, width: Math.max(1, end - labelWidth).toFixed(1), height: rowHeight - 6, rx: 2, class: over ? 'chart-bar over' : 'chart-bar' }),
          svg('text', { x: (end + 5).toFixed(1), y: y + 13, class: 'chart-figure' }, bar.value === null ? 'none' : millis(bar.value)),
        ),
      );
      y += rowHeight;
    });
    y += groupGap;
  }
  for (const limit of limits) {
    const at = x(limit.value).toFixed(1);
    drawn.push(
      svg(
        'g',
        {},
        svg('line', { x1: at, x2: at, y1: top - 2, y2: height - 2, class: 'chart-limit' }),
        svg('text', { x: at, y: 10, 'text-anchor': 'middle', class: 'chart-label' }, millis(limit.value)),
      ),
    );
  }
  return figure(title, name, width, height, svg('g', { 'aria-hidden': 'true' }, drawn));
}

/**
 * @typedef {{ at: number, value: number | null }} Point a sample: when (ms since the epoch) and
 *   its value (`null`: none, which breaks the line)
 * @typedef {{ key: string, label: string, points: Point[], limit: number | null }} Series
 *   `key` names its colour (the class `series-<key>`); `limit` is drawn as a dashed line
 */

/**
 * Lines over time on a logarithmic scale of milliseconds (so that a 50 ms limit and a 3 s one
 * both show), each series with its limit as a dashed line of its colour, and a legend.
 * @param {string} title
 * @param {Series[]} series
 * @param {{ from: number, to: number }} span the time shown
 */
export function timeSeries(title, series, span) {
  const width = 640;
  const height = 240;
  const left = 56;
  const right = 10;
  const top = 10;
  const bottom = 24;
  const values = series.flatMap((s) => s.points.map((p) => p.value).filter((v) => v !== null && v > 0));
  const limits = series.map((s) => s.limit).filter((v) => v !== null);
  const all = /** @type {number[]} */ ([...values, ...limits]);
  const low = Math.max(-2, Math.min(0, Math.floor(Math.log10(Math.min(...all, 1)))));
  const high = Math.max(1, Math.ceil(Math.log10(Math.max(...all, 10) * 1.2)));
  const duration = Math.max(1, span.to - span.from);
  const x = (/** @type {number} */ at) => left + ((at - span.from) / duration) * (width - left - right);
  const y = (/** @type {number} */ ms) => {
    const clamped = Math.min(high, Math.max(low, Math.log10(Math.max(ms, 10 ** low))));
    return top + (1 - (clamped - low) / (high - low)) * (height - top - bottom);
  };
  /** @type {SVGElement[]} */
  const drawn = [];
  for (let power = low; power <= high; power += 1) {
    const at = y(10 ** power).toFixed(1);
    drawn.push(
      svg('line', { x1: left, x2: width - right, y1: at, y2: at, class: 'chart-grid' }),
      svg('text', { x: left - 6, y: Number(at) + 4, 'text-anchor': 'end', class: 'chart-label' }, power >= 3 ? `${10 ** (power - 3)} s` : `${10 ** power} ms`),
    );
  }
  drawn.push(
    svg('text', { x: left, y: height - 6, class: 'chart-label' }, clock(span.from)),
    svg('text', { x: width - right, y: height - 6, 'text-anchor': 'end', class: 'chart-label' }, clock(span.to)),
  );
  for (const s of series) {
    if (s.limit !== null) {
      const at = y(s.limit).toFixed(1);
      drawn.push(svg('line', { x1: left, x2: width - right, y1: at, y2: at, class: `chart-limit series-${s.key}` }));
    }
    let path = '';
    let open = false;
    for (const point of s.points) {
      if (point.value === null) {
        open = false;
        continue;
      }
      path += `${open ? 'L' : 'M'}${x(point.at).toFixed(1)} ${y(point.value).toFixed(1)} `;
      open = true;
    }
    // A lone point shows as a dot.
    for (let i = 0; i < s.points.length; i += 1) {
      const point = s.points[i];
      const alone = point.value !== null && (s.points[i - 1]?.value ?? null) === null && (s.points[i + 1]?.value ?? null) === null;
      if (alone && point.value !== null) drawn.push(svg('circle', { cx: x(point.at).toFixed(1), cy: y(point.value).toFixed(1), r: 2.5, class: `chart-dot series-${s.key}` }));
    }
    if (path !== '') drawn.push(svg('path', { d: path.trim(), class: `chart-line series-${s.key}` }));
  }
  const samples = Math.max(0, ...series.map((s) => new Set(s.points.map((p) => p.at)).size));
  const latest = (/** @type {Series} */ s) => {
    const last = [...s.points].reverse().find((p) => p.value !== null);
    const limit = s.limit === null ? '' : ` (limit ${millis(s.limit)}${last?.value != null && last.value > s.limit ? ', over' : ''})`;
    return `${s.label} ${last?.value == null ? 'none' : millis(last.value)}${limit}`;
  };
  const name = `${title}: ${samples} ${samples === 1 ? 'sample' : 'samples'} from ${clock(span.from)} to ${clock(span.to)}; latest ${series.map(latest).join(', ')}`;
  const chart = figure(title, name, width, height, svg('g', { 'aria-hidden': 'true' }, drawn));
  chart.classList.add('wide');
  chart.append(
    h(
      'ul',
      { class: 'chart-legend', 'aria-hidden': 'true' },
      series.map((s) => h('li', {}, h('span', { class: `swatch series-${s.key}` }), s.limit === null ? s.label : `${s.label} (dashed: ${millis(s.limit)})`)),
    ),
  );
  return chart;
}

/**
 * A time of day, `HH:MM:SS`, in the reader's zone.
 * @param {number} at ms since the epoch
 */
export function clock(at) {
  const date = new Date(at);
  return [date.getHours(), date.getMinutes(), date.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
}

/** @param {string} text @param {number} length */
function clip(text, length) {
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}
