// The SLA view: whether chat meets its SLA right now, and which tier is to blame if not. It polls
// `GET /api/sla` and `GET /health/ready` (neither needs a sign-in) every 2 s while it is shown and
// the tab is visible, and draws what they say: the status in words, each window's runs and
// percentiles against the limits, each tier (the degraded ones said so in words), the violations,
// the readiness checks, and the response p95 and each tier's p99 over the time the view has been
// polling. A poll that fails is said in a sentence, and the figures still shown are marked as
// those of the last answer, with its time.

import { clock, millis, percentileBars, timeSeries } from './charts.js';
import { h, replaceChildren } from './dom.js';
import { count } from './format.js';

/** How often the view polls, from the end of one poll to the start of the next. */
export const POLL_MS = 2000;
/** How long one request may take before the poll counts as failed. */
const REQUEST_TIMEOUT_MS = 5000;
/** How long the samples of the chart are kept. */
const KEEP_MS = 15 * 60_000;
/** Samples further apart than this (the view was hidden meanwhile) are not joined by a line. */
const GAP_MS = 3 * POLL_MS + REQUEST_TIMEOUT_MS;

/** The report's windows: key, and how the page says it. */
const WINDOWS = /** @type {const} */ ([
  ['1m', 'last minute'],
  ['5m', 'last 5 minutes'],
  ['15m', 'last 15 minutes'],
]);

/** Tiers as people call them. */
const TIER_NAMES = /** @type {Record<string, string>} */ ({
  postgres: 'PostgreSQL',
  sqlite: 'SQLite',
  redis: 'Redis',
  clickhouse: 'ClickHouse',
  model: 'the model',
});

/** The order tiers are listed in (that of the server's reports). */
const TIER_ORDER = ['postgres', 'sqlite', 'redis', 'clickhouse', 'model'];

/** @param {string} tier @param {boolean} [start] at the start of a sentence or a cell */
export function tierName(tier, start = false) {
  const name = TIER_NAMES[tier] ?? tier;
  return start ? name.charAt(0).toUpperCase() + name.slice(1) : name;
}

/**
 * @typedef {{ p50: number | null, p95: number | null, p99: number | null }} Percentiles
 * @typedef {{ ops: number, p50_ms: number | null, p99_ms: number | null, errors: number }} TierWindow
 * @typedef {{ runs: number, runs_per_s: number, first_event_ms: Percentiles, response_ms: Percentiles,
 *   violations: Record<string, number>, tiers: Record<string, TierWindow> }} SlaWindow
 * @typedef {{ status: 'ok' | 'degraded' | 'violating', degraded: string[], thresholds: Record<string, number>,
 *   windows: Record<string, SlaWindow> }} SlaReport
 * @typedef {{ status: string, latency_ms: number, error?: string }} Check
 * @typedef {{ status: string, checks: Record<string, Check> }} Readiness
 * @typedef {{ at: number, response: number | null, tiers: Record<string, number | null> }} Sample
 *   one poll's figures for the chart (over the last minute); `response: null` and no tiers when
 *   the poll failed, which breaks the lines
 */

/** A poll that got no usable answer, with why in words ("it cannot be reached"). */
class PollFailed extends Error {}

/**
 * GETs a JSON document; a failure to get one is a `PollFailed` saying why.
 * @param {string} path
 * @param {(status: number) => boolean} usable which statuses carry the document
 * @param {AbortSignal} cancel aborted when the view stops polling
 */
async function getJson(path, usable, cancel) {
  let response;
  try {
    response = await fetch(path, {
      headers: { accept: 'application/json' },
      cache: 'no-store',
      signal: AbortSignal.any([cancel, AbortSignal.timeout(REQUEST_TIMEOUT_MS)]),
    });
  } catch (error) {
    if (cancel.aborted) throw error;
    if (error instanceof DOMException && error.name === 'TimeoutError') {
      throw new PollFailed(`no answer within ${REQUEST_TIMEOUT_MS / 1000} s`);
    }
    throw new PollFailed('it cannot be reached');
  }
  if (!usable(response.status)) {
    throw new PollFailed(`it answered ${response.status}${response.statusText ? ` ${response.statusText}` : ''}`);
  }
  try {
    return await response.json();
  } catch (error) {
    if (cancel.aborted) throw error;
    throw new PollFailed(`it answered ${response.status} with something that is not JSON`);
  }
}

/** @param {unknown} value */
const number = (value) => (typeof value === 'number' && Number.isFinite(value) ? value : null);

/**
 * The report as the page uses it, or a `PollFailed` when the answer is not one.
 * @param {any} body
 * @returns {SlaReport}
 */
function reportOf(body) {
  const status = body?.status;
  if (!['ok', 'degraded', 'violating'].includes(status) || typeof body?.windows !== 'object' || body.windows === null) {
    throw new PollFailed('its answer is not an SLA report (no status or no windows)');
  }
  /** @param {any} p @returns {Percentiles} */
  const percentiles = (p) => ({ p50: number(p?.p50), p95: number(p?.p95), p99: number(p?.p99) });
  /** @type {Record<string, SlaWindow>} */
  const windows = {};
  for (const [key] of WINDOWS) {
    const w = body.windows[key];
    if (typeof w !== 'object' || w === null) continue;
    /** @type {Record<string, TierWindow>} */
    const tiers = {};
    for (const [name, t] of Object.entries(w.tiers ?? {})) {
      const tier = /** @type {any} */ (t);
      tiers[name] = { ops: number(tier?.ops) ?? 0, p50_ms: number(tier?.p50_ms), p99_ms: number(tier?.p99_ms), errors: number(tier?.errors) ?? 0 };
    }
    /** @type {Record<string, number>} */
    const violations = {};
    for (const [name, n] of Object.entries(w.violations ?? {})) if (number(n) !== null) violations[name] = /** @type {number} */ (n);
    windows[key] = {
      runs: number(w.runs) ?? 0,
      runs_per_s: number(w.runs_per_s) ?? 0,
      first_event_ms: percentiles(w.first_event_ms),
      response_ms: percentiles(w.response_ms),
      violations,
      tiers,
    };
  }
  /** @type {Record<string, number>} */
  const thresholds = {};
  for (const [name, value] of Object.entries(body.thresholds ?? {})) if (number(value) !== null) thresholds[name] = /** @type {number} */ (value);
  return {
    status,
    degraded: Array.isArray(body.degraded) ? body.degraded.map(String) : [],
    thresholds,
    windows,
  };
}

/**
 * The readiness answer as the page uses it, or a `PollFailed` when it is not one.
 * @param {any} body
 * @returns {Readiness}
 */
function readinessOf(body) {
  if (typeof body?.status !== 'string' || typeof body?.checks !== 'object' || body.checks === null) {
    throw new PollFailed('its answer is not a readiness report (no status or no checks)');
  }
  /** @type {Record<string, Check>} */
  const checks = {};
  for (const [name, c] of Object.entries(body.checks)) {
    const check = /** @type {any} */ (c);
    checks[name] = { status: String(check?.status ?? 'unknown'), latency_ms: number(check?.latency_ms) ?? 0, error: typeof check?.error === 'string' ? check.error : undefined };
  }
  return { status: body.status, checks };
}

/** The tiers of a report in their order: those of the windows and the degraded ones. @param {SlaReport} report */
function tiersOf(report) {
  const names = new Set(report.degraded);
  for (const w of Object.values(report.windows)) for (const name of Object.keys(w.tiers)) names.add(name);
  const rank = (/** @type {string} */ name) => (TIER_ORDER.includes(name) ? TIER_ORDER.indexOf(name) : TIER_ORDER.length);
  return [...names].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}

/**
 * A list in words: "PostgreSQL", "PostgreSQL and Redis", "PostgreSQL, Redis and ClickHouse".
 * @param {string[]} items
 */
function and(items) {
  return items.length <= 1 ? items.join('') : `${items.slice(0, -1).join(', ')} and ${items[items.length - 1]}`;
}

/**
 * The status in words: "Chat meets its SLA.", "Chat meets its SLA, but it is degraded:
 * PostgreSQL.", "Chat is violating its SLA: …".
 * @param {SlaReport} report
 */
export function headline(report) {
  const degraded = report.degraded.map((tier) => tierName(tier));
  const p95Limit = report.thresholds.response_p95_ms ?? 2000;
  const failure = report.thresholds.response_failure_ms ?? 3000;
  if (report.status === 'violating') {
    const minute = report.windows['1m'];
    const why = [];
    const p95 = minute?.response_ms.p95 ?? null;
    if (p95 !== null && p95 > p95Limit) why.push(`response p95 ${millis(p95)} over the last minute (SLA ${millis(p95Limit)})`);
    const failed = minute?.violations[`response_over_${failure}ms`] ?? 0;
    if (failed > 0) why.push(`${count(failed)} ${failed === 1 ? 'response' : 'responses'} over ${millis(failure)}`);
    const refused = minute?.violations.messages_refused ?? 0;
    if (refused > 0) why.push(`${count(refused)} ${refused === 1 ? 'message' : 'messages'} refused`);
    const blame = degraded.length > 0 ? `; degraded: ${and(degraded)}` : '';
    return `Chat is violating its SLA${why.length > 0 ? `: ${why.join('; ')}` : ''}${blame}.`;
  }
  if (report.status === 'degraded') {
    return `Chat meets its SLA, but it is degraded: ${degraded.length > 0 ? and(degraded) : 'a tier is slow'}.`;
  }
  return 'Chat meets its SLA.';
}

/** The limits in words. @param {Record<string, number>} t */
function thresholdsText(t) {
  const parts = [];
  if (t.response_p95_ms !== undefined) parts.push(`response p95 under ${millis(t.response_p95_ms)}`);
  if (t.response_failure_ms !== undefined) parts.push(`no response over ${millis(t.response_failure_ms)}`);
  for (const tier of TIER_ORDER) {
    const limit = t[`${tier}_ms`];
    if (limit !== undefined) parts.push(`a ${tierName(tier)} operation under ${millis(limit)}`);
  }
  if (t.health_ms !== undefined) parts.push(`a health check under ${millis(t.health_ms)}`);
  if (t.workflow_ms !== undefined) parts.push(`a whole workflow under ${count(t.workflow_ms / 1000)} s`);
  if (t.throughput_per_s !== undefined) parts.push(`at least ${count(t.throughput_per_s)} runs a second`);
  return parts.length > 0 ? `The SLA: ${parts.join('; ')}.` : '';
}

/**
 * A violation's name in words, from its wire name: `response_over_3000ms` → "responses over
 * 3,000 ms", `postgres_over_200ms` → "PostgreSQL operations over 200 ms".
 * @param {string} name
 */
function violationText(name) {
  let match = /^response_p95_over_(\d+)ms$/.exec(name);
  if (match) return `response p95 over ${millis(Number(match[1]))}`;
  match = /^response_over_(\d+)ms$/.exec(name);
  if (match) return `responses over ${millis(Number(match[1]))}`;
  match = /^health_check_over_(\d+)ms$/.exec(name);
  if (match) return `health checks over ${millis(Number(match[1]))}`;
  match = /^workflow_over_(\d+)s$/.exec(name);
  if (match) return `workflows over ${match[1]} s`;
  match = /^throughput_under_(\d+)_per_s$/.exec(name);
  if (match) return `fewer than ${match[1]} runs a second`;
  if (name === 'messages_refused') return 'messages refused because a tier failed or the server was full';
  match = /^([a-z]+)_over_(\d+)ms$/.exec(name);
  if (match) return `${tierName(match[1], true)} operations over ${millis(Number(match[2]))}`;
  return name;
}

export class SlaView {
  /**
   * @param {HTMLElement} root the view's element (shown and hidden by `show` and `hide`)
   * @param {HTMLElement} body where it draws
   */
  constructor(root, body) {
    this.root = root;
    /** Whether the view is shown (it polls only then, and only while the tab is visible). */
    this.shown = false;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.timer = undefined;
    /** @type {AbortController | null} the poll under way */
    this.polling = null;
    /** @type {SlaReport | null} the last report */
    this.report = null;
    /** When the last report came (ms since the epoch). */
    this.reportAt = 0;
    /** @type {string | null} why the last poll of /api/sla failed (null: it did not) */
    this.slaFailure = null;
    /** @type {Readiness | null} */
    this.readiness = null;
    this.readinessAt = 0;
    /** @type {string | null} */
    this.readinessFailure = null;
    /** @type {Sample[]} */
    this.samples = [];
    /** @type {string} the window the tiers and the violations are shown for */
    this.window = '1m';

    this.status = h('p', { class: 'sla-headline', role: 'status', 'aria-label': 'SLA status', 'data-status': 'unknown' }, 'Asking the server…');
    this.when = h('p', { class: 'sla-when' });
    this.problem = h('div', { class: 'sla-problem', role: 'alert', 'aria-label': 'Polling' });
    this.thresholds = h('p', { class: 'hint sla-thresholds' });
    this.windows = h('section', { class: 'sla-section', 'aria-labelledby': 'sla-windows-title' });
    this.picker = h(
      'fieldset',
      { class: 'sla-picker' },
      h('legend', {}, 'Window'),
      WINDOWS.map(([key, words]) =>
        h(
          'label',
          {},
          h('input', {
            type: 'radio',
            name: 'sla-window',
            value: key,
            checked: key === this.window,
            onchange: () => {
              this.window = key;
              this.draw();
            },
          }),
          ` ${words.charAt(0).toUpperCase()}${words.slice(1)}`,
        ),
      ),
    );
    this.tiers = h('section', { class: 'sla-section', 'aria-labelledby': 'sla-tiers-title' });
    this.violations = h('section', { class: 'sla-section', 'aria-labelledby': 'sla-violations-title' });
    this.chart = h('section', { class: 'sla-section', 'aria-labelledby': 'sla-chart-title' });
    this.checks = h('section', { class: 'sla-section', 'aria-labelledby': 'sla-checks-title' });
    this.figures = h('div', { class: 'sla-figures' }, this.windows, this.picker, this.tiers, this.violations, this.chart, this.checks);
    replaceChildren(body, this.status, this.when, this.problem, this.thresholds, this.figures);

    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'hidden') this.pause();
      else if (this.shown) this.resume();
    });
    this.draw();
  }

  /** Shows the view and starts polling (at once). */
  show() {
    if (this.shown) return;
    this.shown = true;
    this.root.hidden = false;
    if (document.visibilityState !== 'hidden') this.resume();
  }

  /** Hides the view and stops polling. */
  hide() {
    if (!this.shown) return;
    this.shown = false;
    this.root.hidden = true;
    this.pause();
  }

  /** Stops polling: no timer, and the request under way is given up. */
  pause() {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.polling?.abort();
    this.polling = null;
    this.root.removeAttribute('aria-busy');
  }

  /** Polls now, then every `POLL_MS`. */
  resume() {
    this.pause();
    this.poll();
  }

  async poll() {
    const controller = new AbortController();
    this.polling = controller;
    // Being updated: a screen reader waits for the whole of it.
    this.root.setAttribute('aria-busy', 'true');
    const [sla, ready] = await Promise.allSettled([
      getJson('/api/sla', (status) => status >= 200 && status < 300, controller.signal).then(reportOf),
      // 503 is an answer too: the store does not answer, or the server is shutting down.
      getJson('/health/ready', (status) => (status >= 200 && status < 300) || status === 503, controller.signal).then(readinessOf),
    ]);
    if (controller.signal.aborted || this.polling !== controller) return;
    this.polling = null;
    const now = Date.now();
    if (sla.status === 'fulfilled') {
      this.report = sla.value;
      this.reportAt = now;
      this.slaFailure = null;
      const minute = sla.value.windows['1m'];
      /** @type {Record<string, number | null>} */
      const tiers = {};
      for (const [name, tier] of Object.entries(minute?.tiers ?? {})) tiers[name] = tier.p99_ms;
      this.samples.push({ at: now, response: minute?.response_ms.p95 ?? null, tiers });
    } else {
      this.slaFailure = messageOf(sla.reason);
      this.samples.push({ at: now, response: null, tiers: {} });
    }
    while (this.samples.length > 0 && this.samples[0].at < now - KEEP_MS) this.samples.shift();
    if (ready.status === 'fulfilled') {
      this.readiness = ready.value;
      this.readinessAt = now;
      this.readinessFailure = null;
    } else {
      this.readinessFailure = messageOf(ready.reason);
    }
    this.draw();
    if (this.shown && document.visibilityState !== 'hidden') {
      this.timer = setTimeout(() => this.poll(), POLL_MS);
    }
    this.root.removeAttribute('aria-busy');
  }

  /** Draws what the view knows. */
  draw() {
    const report = this.report;
    const stale = this.slaFailure !== null;
    const since = clock(this.reportAt);
    // What went wrong, in sentences.
    replaceChildren(
      this.problem,
      this.slaFailure === null ? null : h('p', {}, `The server did not answer /api/sla: ${this.slaFailure}; retrying every ${POLL_MS / 1000} s.`),
      this.readinessFailure === null ? null : h('p', {}, `The server did not answer /health/ready: ${this.readinessFailure}; retrying every ${POLL_MS / 1000} s.`),
    );
    this.problem.hidden = this.slaFailure === null && this.readinessFailure === null;
    this.figures.classList.toggle('stale', stale);
    if (report === null) {
      this.status.dataset.status = 'unknown';
      this.status.textContent = stale ? 'Not known: the server has not answered yet.' : 'Asking the server…';
      this.when.textContent = '';
      this.thresholds.textContent = '';
      this.figures.hidden = true;
      return;
    }
    this.figures.hidden = false;
    if (stale) {
      this.status.dataset.status = 'unknown';
      this.status.textContent = `Not known now. The last report, from ${since}, said: ${headline(report)}`;
      this.when.textContent = `Not live: the figures below are from ${since}, the last answer.`;
    } else {
      this.status.dataset.status = report.status;
      this.status.textContent = headline(report);
      this.when.textContent = `Live: as of ${since}, asked every ${POLL_MS / 1000} s.`;
    }
    this.thresholds.textContent = thresholdsText(report.thresholds);
    this.drawWindows(report);
    this.drawTiers(report);
    this.drawViolations(report);
    this.drawChart(report);
    this.drawChecks();
  }

  /** @param {SlaReport} report */
  drawWindows(report) {
    const p95Limit = report.thresholds.response_p95_ms ?? 2000;
    const failure = report.thresholds.response_failure_ms ?? 3000;
    const limits = [
      { value: p95Limit, label: 'the p95 limit' },
      { value: failure, label: 'a failure' },
    ];
    const present = WINDOWS.filter(([key]) => report.windows[key] !== undefined);
    /** @param {number | null} value @param {boolean} p95 */
    const cell = (value, p95) => {
      if (value === null) return h('td', { class: 'number' }, 'none');
      const over = value > failure ? `over ${millis(failure)}` : p95 && value > p95Limit ? `over ${millis(p95Limit)}` : null;
      return h('td', { class: over ? 'number over' : 'number' }, millis(value), over ? h('strong', {}, ` (${over})`) : null);
    };
    /** @param {string} label @param {(w: SlaWindow) => HTMLElement} make */
    const row = (label, make) => h('tr', {}, h('th', { scope: 'row' }, label), present.map(([key]) => make(report.windows[key])));
    const percentileRows = (/** @type {string} */ what, /** @type {(w: SlaWindow) => Percentiles} */ of) =>
      /** @type {const} */ (['p50', 'p95', 'p99']).map((p) => row(`${what} ${p}`, (w) => cell(of(w)[p], p === 'p95')));
    const chart = (/** @type {string} */ title, /** @type {(w: SlaWindow) => Percentiles} */ of) =>
      percentileBars(
        title,
        present.map(([key, words]) => {
          const p = of(report.windows[key]);
          return { label: `${key.replace('m', '')} min`, spoken: words, bars: [{ label: 'p50', value: p.p50 }, { label: 'p95', value: p.p95 }, { label: 'p99', value: p.p99 }] };
        }),
        limits,
      );
    replaceChildren(
      this.windows,
      h('h2', { id: 'sla-windows-title' }, 'Runs and response times'),
      h(
        'div',
        { class: 'table-scroll' },
        h(
          'table',
          { class: 'sla-table', 'aria-label': 'Windows' },
          h('thead', {}, h('tr', {}, h('td', {}), present.map(([, words]) => h('th', { scope: 'col' }, words.charAt(0).toUpperCase() + words.slice(1))))),
          h(
            'tbody',
            {},
            row('Runs', (w) => h('td', { class: 'number' }, count(w.runs))),
            row('Runs a second', (w) => h('td', { class: 'number' }, w.runs_per_s.toFixed(2))),
            percentileRows('Response', (w) => w.response_ms),
            percentileRows('First event', (w) => w.first_event_ms),
          ),
        ),
      ),
      h('div', { class: 'charts' }, chart('Response time (message accepted → final event)', (w) => w.response_ms), chart('First event (message accepted → first event)', (w) => w.first_event_ms)),
    );
  }

  /** @param {SlaReport} report */
  drawTiers(report) {
    const words = WINDOWS.find(([key]) => key === this.window)?.[1] ?? this.window;
    const w = report.windows[this.window];
    const names = tiersOf(report);
    replaceChildren(
      this.tiers,
      h('h2', { id: 'sla-tiers-title' }, `Tiers over the ${words}`),
      names.length === 0
        ? h('p', { class: 'hint' }, 'The server reports no tiers.')
        : h(
            'div',
            { class: 'table-scroll' },
            h(
              'table',
              { class: 'sla-table', 'aria-label': 'Tiers' },
              h(
                'thead',
                {},
                h('tr', {}, ['Tier', 'Now', 'Operations', 'p50', 'p99', 'Limit', 'Errors'].map((head) => h('th', { scope: 'col' }, head))),
              ),
              h(
                'tbody',
                {},
                names.map((name) => {
                  const tier = w?.tiers[name];
                  const limit = report.thresholds[`${name}_ms`] ?? null;
                  const degraded = report.degraded.includes(name);
                  const p99 = tier?.p99_ms ?? null;
                  const over = limit !== null && p99 !== null && p99 > limit;
                  return h(
                    'tr',
                    { class: degraded ? 'degraded' : '' },
                    h('th', { scope: 'row' }, tierName(name, true)),
                    h('td', { class: degraded ? 'state degraded' : 'state' }, degraded ? h('strong', {}, 'Degraded') : tier && tier.ops > 0 ? 'Fine' : 'No operations'),
                    h('td', { class: 'number' }, count(tier?.ops ?? 0)),
                    h('td', { class: 'number' }, tier?.p50_ms == null ? 'none' : millis(tier.p50_ms)),
                    h('td', { class: over ? 'number over' : 'number' }, p99 === null ? 'none' : millis(p99), over ? h('strong', {}, ' (over)') : null),
                    h('td', { class: 'number' }, limit === null ? 'none' : millis(limit)),
                    h('td', { class: tier && tier.errors > 0 ? 'number over' : 'number' }, count(tier?.errors ?? 0)),
                  );
                }),
              ),
            ),
          ),
    );
  }

  /** @param {SlaReport} report */
  drawViolations(report) {
    const words = WINDOWS.find(([key]) => key === this.window)?.[1] ?? this.window;
    const found = Object.entries(report.windows[this.window]?.violations ?? {}).filter(([, n]) => n > 0);
    replaceChildren(
      this.violations,
      h('h2', { id: 'sla-violations-title' }, `Violations over the ${words}`),
      found.length === 0
        ? h('p', { class: 'hint' }, `None over the ${words}.`)
        : h(
            'ul',
            { class: 'sla-violations', 'aria-label': 'Violations' },
            found.map(([name, n]) => h('li', {}, h('code', {}, name), `: ${count(n)} (${violationText(name)})`)),
          ),
    );
  }

  /** @param {SlaReport} report */
  drawChart(report) {
    const names = new Set();
    for (const sample of this.samples) for (const name of Object.keys(sample.tiers)) names.add(name);
    const tiers = tiersOf(report).filter((name) => names.has(name));
    const points = (/** @type {(s: Sample) => number | null} */ of) =>
      this.samples.flatMap((s, i) => {
        const point = { at: s.at, value: of(s) };
        // Not polled in between: no line across.
        return i > 0 && s.at - this.samples[i - 1].at > GAP_MS ? [{ at: s.at, value: null }, point] : [point];
      });
    const series = [
      { key: 'response', label: 'response p95', points: points((s) => s.response), limit: report.thresholds.response_p95_ms ?? null },
      ...tiers.map((name) => ({
        key: TIER_ORDER.includes(name) ? name : 'other',
        label: `${tierName(name)} p99`,
        points: points((s) => s.tiers[name] ?? null),
        limit: report.thresholds[`${name}_ms`] ?? null,
      })),
    ];
    const first = this.samples[0]?.at ?? Date.now();
    const last = this.samples[this.samples.length - 1]?.at ?? first;
    replaceChildren(
      this.chart,
      h('h2', { id: 'sla-chart-title' }, 'Over time (each over the last minute, as polled)'),
      timeSeries('Response p95 and tier p99 over time', series, { from: first, to: Math.max(last, first + 60_000) }),
    );
  }

  drawChecks() {
    const readiness = this.readiness;
    const staleNote =
      readiness !== null && this.readinessFailure !== null ? h('p', { class: 'hint' }, `Not live: these checks are from ${clock(this.readinessAt)}, the last answer.`) : null;
    replaceChildren(
      this.checks,
      h('h2', { id: 'sla-checks-title' }, 'Readiness checks (GET /health/ready)'),
      readiness === null
        ? h('p', { class: 'hint' }, 'No answer yet.')
        : [
            h('p', { class: `sla-ready state-${readiness.status}` }, `Readiness: ${readiness.status}.`),
            staleNote,
            h(
              'ul',
              { class: 'sla-checks', 'aria-label': 'Readiness checks' },
              Object.entries(readiness.checks).map(([name, check]) =>
                h(
                  'li',
                  { class: `state-${check.status}` },
                  h('strong', {}, `${TIER_NAMES[name] ? tierName(name, true) : name}: ${check.status}`),
                  `, in ${millis(check.latency_ms)}`,
                  check.error ? `: ${check.error}` : '',
                ),
              ),
            ),
          ],
    );
  }
}

/** @param {unknown} error */
function messageOf(error) {
  return error instanceof Error ? error.message : String(error);
}
