// One run as the page knows it: its events applied in seq order, the answer as it streams in,
// and its timeline (agents, thinking, tool calls, errors, where the time went, model calls),
// built as the events arrive so that following a live run costs one element per event.

import { h, replaceChildren } from './dom.js';
import { count, duration, offset, summary, usd } from './format.js';

/** A final status as the sentence that ends an answer. */
const ENDED = {
  completed: 'completed',
  failed: 'failed',
  timed_out: 'timed out',
  cancelled: 'was cancelled',
  interrupted: 'was interrupted (the server stopped)',
};

/** The storage tiers a `store_delayed` notice names, as people call them. */
const TIERS = { postgres: 'PostgreSQL', sqlite: 'SQLite' };

/**
 * @typedef {{ status: string, durationMs: number, tier: string, message: string }} Delayed
 */

export class Run {
  /**
   * @param {string} id
   * @param {string} threadId
   */
  constructor(id, threadId) {
    this.id = id;
    this.threadId = threadId;
    /** The answer so far (the `partial_result` pieces, then the final `result.text`). */
    this.text = '';
    /** @type {any} the final event's payload, once it came */
    this.final = null;
    /**
     * The `store_delayed` notice of the run, while its final event has not come: the run has
     * ended, but the store has not stored its last events yet (they follow once it answers).
     * @type {Delayed | null}
     */
    this.delayed = null;
    /** Whether this page saw the run's first event (else it joined a run under way). */
    this.fromStart = false;
    /** @type {string | null} the last error sentence of the run */
    this.error = null;
    /** @type {number | null} */
    this.startedAt = null;
    /** @type {string[]} agents open, innermost last */
    this.stack = [];
    /** @type {Map<string, HTMLLIElement>} */
    this.tools = new Map();
    this.entries = h('ol', { class: 'timeline-entries' });
    this.heading = h('p', { class: 'timeline-heading' }, `Run ${shortId(id)}: running…`);
    this.footer = h('div', { class: 'timeline-footer' });
    this.element = h('div', { class: 'run-timeline', 'data-run': id }, this.heading, this.entries, this.footer);
    /** Told after each event. @type {Set<() => void>} */
    this.listeners = new Set();
  }

  /** Whether the run is under way: neither its final event nor a notice of its end came. */
  get active() {
    return this.final === null && this.delayed === null;
  }

  /** Whether its final event came (a delayed run has ended, but is not done). */
  get done() {
    return this.final !== null;
  }

  /**
   * A `store_delayed` notice of this run: it has ended, but its last events are not stored yet.
   * Ignored once the final event came. Returns whether it was taken.
   * @param {any} payload the notice's
   */
  delay(payload) {
    if (this.final !== null || typeof payload?.message !== 'string') return false;
    const status = String(payload.status ?? '');
    const took = Number(payload.duration_ms);
    this.delayed = {
      status,
      durationMs: Number.isFinite(took) ? took : 0,
      tier: String(payload.tier ?? ''),
      message: payload.message,
    };
    const ended = ENDED[/** @type {keyof typeof ENDED} */ (status)] ?? (status || 'ended');
    const tier = TIERS[/** @type {keyof typeof TIERS} */ (this.delayed.tier)] ?? 'the store';
    replaceChildren(this.heading, `Run ${shortId(this.id)}: ${ended} in ${duration(this.delayed.durationMs)}; its last steps show once ${tier} has stored them`);
    for (const listener of this.listeners) listener();
    return true;
  }

  /**
   * A run event of this run, in seq order.
   * @param {any} event
   */
  add(event) {
    const payload = event.payload ?? {};
    const at = Date.parse(event.timestamp);
    if (this.startedAt === null) this.startedAt = at;
    const time = h('span', { class: 'at' }, offset(at - this.startedAt));
    const agent = String(event.agent_name ?? '');
    const depth = Math.max(0, this.stack.length - 1);
    const entry = (/** @type {string} */ kind, /** @type {import('./dom.js').Child[]} */ ...body) => {
      const item = h('li', { class: `entry ${kind}`, 'data-depth': String(Math.min(depth, 4)) }, time, ' ', ...body);
      this.entries.append(item);
      return item;
    };
    switch (event.type) {
      case 'agent_started': {
        if (agent === 'supervisor' && this.stack.length === 0) this.fromStart = this.entries.childElementCount === 0;
        this.stack.push(agent);
        const item = h(
          'li',
          { class: 'entry started', 'data-depth': String(Math.min(this.stack.length - 1, 4)) },
          time,
          ' ',
          h('span', { class: 'mark', 'aria-hidden': 'true' }, '▶ '),
          h('strong', {}, agent),
          payload.task ? `: ${payload.task}` : ' started',
        );
        this.entries.append(item);
        break;
      }
      case 'agent_thinking': {
        const progress = typeof payload.progress === 'number' ? ` (${Math.round(payload.progress * 100)} %)` : '';
        entry('thinking', h('span', { class: 'mark', 'aria-hidden': 'true' }, '· '), String(payload.text ?? ''), progress);
        break;
      }
      case 'tool_executing': {
        const item = entry(
          'tool',
          h('span', { class: 'mark', 'aria-hidden': 'true' }, '⚙ '),
          h('code', {}, String(payload.tool_name ?? 'tool')),
          ' ',
          h('span', { class: 'tool-state' }, 'running…'),
          h('details', {}, h('summary', {}, 'Parameters'), h('pre', {}, pretty(payload.parameters))),
        );
        this.tools.set(String(payload.tool_call_id), item);
        break;
      }
      case 'tool_completed': {
        let item = this.tools.get(String(payload.tool_call_id));
        if (item === undefined) {
          item = entry('tool', h('code', {}, String(payload.tool_name ?? 'tool')), ' ', h('span', { class: 'tool-state' }));
        }
        const state = item.querySelector('.tool-state');
        const took = duration(Number(payload.duration_ms ?? 0));
        if (payload.success) {
          item.classList.add('ok');
          state?.replaceChildren(`done in ${took}`);
          item.append(h('p', { class: 'tool-result' }, `Result: ${summary(payload.results)}`));
        } else {
          item.classList.add('failed');
          state?.replaceChildren(`failed after ${took}`);
          item.append(h('p', { class: 'tool-result error-text' }, String(payload.error ?? 'The tool failed.')));
        }
        break;
      }
      case 'agent_error': {
        this.error = String(payload.message ?? 'The run failed.');
        entry('error', h('span', { class: 'mark', 'aria-hidden': 'true' }, '✗ '), this.error);
        break;
      }
      case 'partial_result': {
        if (this.text === '' && payload.delta) {
          entry('writing', h('span', { class: 'mark', 'aria-hidden': 'true' }, '✎ '), `${agent} writes the answer`);
        }
        this.text += String(payload.delta ?? '');
        break;
      }
      case 'agent_completed': {
        const status = String(payload.status ?? '');
        const item = h(
          'li',
          { class: `entry completed status-${status}`, 'data-depth': String(Math.min(depth, 4)) },
          time,
          ' ',
          h('span', { class: 'mark', 'aria-hidden': 'true' }, '■ '),
          h('strong', {}, agent),
          ` ${ENDED[/** @type {keyof typeof ENDED} */ (status)] ?? status} in ${duration(Number(payload.duration_ms ?? 0))}`,
        );
        this.entries.append(item);
        this.stack.pop();
        if (payload.final) this.finish(payload);
        break;
      }
      default:
        break;
    }
    for (const listener of this.listeners) listener();
  }

  /** @param {any} payload the final event's */
  finish(payload) {
    this.final = payload;
    this.delayed = null;
    if (typeof payload.result?.text === 'string') this.text = payload.result.text;
    replaceChildren(this.heading, `Run ${shortId(this.id)}: ${ENDED[/** @type {keyof typeof ENDED} */ (payload.status)] ?? payload.status} in ${duration(Number(payload.duration_ms ?? 0))}`);
    replaceChildren(this.footer, timingsBar(payload.timings), modelCalls(payload.model_calls));
  }

  /**
   * The timeline of a run this page saw none of the events of, from its record
   * (`GET /api/runs/{id}`).
   * @param {any} record
   */
  static fromRecord(record) {
    const run = new Run(record.id, record.thread_id);
    run.entries.append(h('li', { class: 'entry note' }, 'The steps of this run happened before this page was opened; here is where its time went.'));
    // A finished record holds what a final event does, but the answer (which is in the thread).
    if (record.status !== 'running') run.finish({ ...record, result: null });
    return run;
  }

  /** The sentence that ends an answer whose run did not complete, or null. */
  endSentence() {
    const payload = this.final;
    if (payload === null || payload.status === 'completed') return null;
    const after = duration(Number(payload.duration_ms ?? 0));
    if (payload.status === 'cancelled') return `Stopped: the run was cancelled after ${after}.`;
    const what = ENDED[/** @type {keyof typeof ENDED} */ (payload.status)] ?? payload.status;
    return this.error ? `The run ${what} after ${after}: ${this.error}` : `The run ${what} after ${after}.`;
  }
}

/** @param {string} id */
function shortId(id) {
  return id.length > 12 ? `${id.slice(0, 12)}…` : id;
}

/** @param {unknown} value */
function pretty(value) {
  try {
    return JSON.stringify(value ?? {}, null, 2);
  } catch {
    return String(value);
  }
}

/**
 * The run's `timings` as one bar: queue, store, model, tools and the rest, each as wide as its
 * share; the figures are the bar's accessible name and its legend.
 * @param {any} timings
 */
function timingsBar(timings) {
  if (timings === null || typeof timings !== 'object') return null;
  const total = Number(timings.total_ms ?? 0);
  const parts = [
    ['queue', Number(timings.queue_ms ?? 0)],
    ['store', Number(timings.store_ms ?? 0)],
    ['model', Number(timings.model_ms ?? 0)],
    ['tools', Number(timings.tools_ms ?? 0)],
  ];
  const known = parts.reduce((sum, [, ms]) => sum + Number(ms), 0);
  parts.push(['other', Math.max(0, total - known)]);
  const agents = Object.entries(timings.agents ?? {}).map(([name, ms]) => `${name} ${count(Number(ms))} ms`);
  const figures = parts.map(([name, ms]) => `${name} ${count(Number(ms))} ms`).join(', ');
  const name = `Where the time went: ${figures}; total ${count(total)} ms${agents.length ? `; agents: ${agents.join(', ')}` : ''}`;
  const bar = h('div', { class: 'timings-bar', role: 'img', 'aria-label': name });
  const scale = Math.max(total, known, 1);
  for (const [part, ms] of parts) {
    if (Number(ms) <= 0) continue;
    const segment = h('span', { class: `segment segment-${part}`, title: `${part} ${count(Number(ms))} ms` });
    segment.style.width = `${(Number(ms) / scale) * 100}%`;
    bar.append(segment);
  }
  const legend = h(
    'ul',
    { class: 'timings-legend', 'aria-hidden': 'true' },
    parts.map(([part, ms]) => h('li', {}, h('span', { class: `swatch segment-${part}` }), `${part} ${count(Number(ms))} ms`)),
  );
  return h(
    'div',
    { class: 'timings' },
    h('p', { class: 'timings-title' }, `Where the time went (${count(total)} ms)`),
    bar,
    legend,
    agents.length ? h('p', { class: 'timings-agents' }, `Agents: ${agents.join(', ')}`) : null,
  );
}

/**
 * The run's language-model calls as a table.
 * @param {any} calls
 */
function modelCalls(calls) {
  if (!Array.isArray(calls) || calls.length === 0) return null;
  const total = calls.reduce((sum, call) => sum + (typeof call.cost_usd === 'number' ? call.cost_usd : 0), 0);
  return h(
    'div',
    { class: 'table-scroll' },
    h(
      'table',
      { class: 'model-calls', 'aria-label': 'Model calls' },
      h('thead', {}, h('tr', {}, ['Agent', 'Model', 'Tokens in', 'Tokens out', 'Cost', 'Duration'].map((title) => h('th', { scope: 'col' }, title)))),
      h(
        'tbody',
        {},
        calls.map((call) =>
          h(
            'tr',
            { class: call.success ? '' : 'failed' },
            h('td', {}, String(call.agent ?? '')),
            h('td', {}, String(call.model ?? ''), call.success ? '' : ' (failed)'),
            h('td', { class: 'number' }, count(Number(call.input_tokens ?? 0))),
            h('td', { class: 'number' }, count(Number(call.output_tokens ?? 0))),
            h('td', { class: 'number' }, typeof call.cost_usd === 'number' ? usd(call.cost_usd) : '–'),
            h('td', { class: 'number' }, duration(Number(call.duration_ms ?? 0))),
          ),
        ),
      ),
      h('tfoot', {}, h('tr', {}, h('td', { colspan: '4' }, `${calls.length} call${calls.length === 1 ? '' : 's'}`), h('td', { class: 'number' }, usd(total)), h('td', {}))),
    ),
  );
}
