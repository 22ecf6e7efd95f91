// Switchboard's chat load, driven by k6: an independent client of the protocol
// (shared/PROTOCOL.md) that measures what `switchboard loadtest` measures, so that the two can
// be compared on the same server at the same time (scripts/compare-k6).
//
//   BASE_URL=http://127.0.0.1:8080 USERS=10 DURATION=30 THINK_MS=1000 k6 run scripts/k6/chat.js
//
// Environment: BASE_URL (the server, http:// or https://), USERS (virtual users, each an account
// of its own), DURATION (seconds during which messages are sent), THINK_MS (each user's pause
// after an answer before its next message, 1000), DRAIN_SECS (how long to wait after DURATION
// for the runs still open, 70, as the loadtest's --drain-secs), MESSAGE (the text of every
// message), SUMMARY_JSON (where handleSummary writes the report, k6-summary.json).
//
// Each user registers `k6-<run tag>-<N>@k6.invalid` (a tag fresh for every run, as the loadtest
// does where dev-login is off), signs in, opens GET /ws with `Authorization: Bearer <token>`,
// waits for `connection_established`, and sends `user_message` frames: the first spread over one
// think time, the next one THINK_MS after each answer (the loadtest's closed model). Per run it
// records, on k6's monotonic clock, accept_ms (sent -> `message_accepted`), first_event_ms
// (`message_accepted` -> the run's first event) and response_ms (`message_accepted` -> the run's
// final `agent_completed`), the loadtest's definitions. It counts `errors` (sign-in, socket,
// refused or unanswered messages) and `contract_problems` it can see on its stream (a seq gap or
// duplicate, an event after a run's final event, a run whose final event did not come within
// DRAIN_SECS). The thresholds are the SLA's, as the loadtest's: response p95 < 2000 ms, no
// response over 3000 ms, no errors, no contract problems; k6 exits 99 when one is violated.
//
// handleSummary writes `response_ms`, `first_event_ms` and `accept_ms` as
// {"count","p50","p95","p99","max"}, `runs`, `errors`, `errors_by_kind`, `contract_problems`
// (a count) and `contract_problems_by_kind`: the loadtest's JSON field names and shapes.

import http from 'k6/http';
import exec from 'k6/execution';
import { Counter, Trend } from 'k6/metrics';
import { WebSocket } from 'k6/experimental/websockets';

// --- options from the environment (a bad value stops k6 before any user starts, with a sentence)

function integer(name, fallback, min) {
  const text = __ENV[name];
  if (text === undefined || text === '') {
    if (fallback === undefined) {
      throw new Error(`${name} is not set; give it as an environment variable (e.g. ${name}=10)`);
    }
    return fallback;
  }
  if (!/^[0-9]+$/.test(text) || Number(text) < min) {
    throw new Error(`${name} must be a whole number of at least ${min}, not '${text}'`);
  }
  return Number(text);
}

function baseUrl() {
  const text = (__ENV.BASE_URL || '').replace(/\/+$/, '');
  if (!/^https?:\/\/[^/]+$/.test(text)) {
    throw new Error(`BASE_URL must be the server's http:// or https:// address, such as http://127.0.0.1:8080, not '${__ENV.BASE_URL || ''}'`);
  }
  return text;
}

const BASE_URL = baseUrl();
const WS_URL = `${BASE_URL.replace(/^http/, 'ws')}/ws`;
const USERS = integer('USERS', 10, 1);
const DURATION_S = integer('DURATION', 30, 1);
const THINK_MS = integer('THINK_MS', 1000, 0);
const DRAIN_S = integer('DRAIN_SECS', 70, 1);
const MESSAGE = __ENV.MESSAGE || 'How can we cut our LLM costs on gpt-4o?';
const SUMMARY_JSON = __ENV.SUMMARY_JSON || 'k6-summary.json';
// The longest a sign-in, opening a socket, or a message's acceptance may take (the loadtest's).
const REQUEST_DEADLINE_MS = 10000;
// How often each user checks its deadlines (the loadtest's tick).
const TICK_MS = 250;

// The kinds of error and of contract problem that get their own count in the summary (any other
// kind still counts in the totals, and as `other` by kind).
const ERROR_KINDS = ['sign_in', 'connect', 'socket', 'no_answer', 'rate_limited', 'too_many_active_runs', 'server_busy', 'shutting_down', 'invalid_payload', 'server_error'];
const PROBLEM_KINDS = ['gap', 'duplicate', 'after_final', 'missing_final'];

// A threshold that always holds (`count>=0`) makes k6 keep the submetric of each kind, so that
// handleSummary can tell the kinds apart.
const byKind = (metric, kinds) => Object.fromEntries(kinds.map((kind) => [`${metric}{kind:${kind}}`, ['count>=0']]));

export const options = {
  scenarios: {
    chat: {
      executor: 'per-vu-iterations',
      vus: USERS,
      iterations: 1,
      // Sign-in, the load, the drain, and a margin: the users end themselves well before.
      maxDuration: `${DURATION_S + DRAIN_S + 30}s`,
      gracefulStop: '5s',
    },
  },
  thresholds: {
    response_ms: ['p(95)<2000', 'max<=3000'],
    errors: ['count==0'],
    contract_problems: ['count==0'],
    ...byKind('errors', ERROR_KINDS),
    ...byKind('contract_problems', PROBLEM_KINDS),
  },
  summaryTrendStats: ['count', 'p(50)', 'p(95)', 'p(99)', 'max'],
  setupTimeout: '30s',
};

const responseMs = new Trend('response_ms', true);
const firstEventMs = new Trend('first_event_ms', true);
const acceptMs = new Trend('accept_ms', true);
const runs = new Counter('runs');
const errors = new Counter('errors');
const contractProblems = new Counter('contract_problems');

// k6's clock since the start of the test, in milliseconds with microseconds (Date.now() has
// whole milliseconds only).
const now = () => exec.instance.currentTestRunDuration;

function randomHex(digits) {
  let out = '';
  for (let i = 0; i < digits; i += 1) {
    out += Math.floor(Math.random() * 16).toString(16);
  }
  return out;
}

// --- setup: the server must answer, and the run gets its tag

export function setup() {
  const live = http.get(`${BASE_URL}/health/live`, { timeout: `${REQUEST_DEADLINE_MS}ms` });
  if (live.status !== 200) {
    const why = live.error ? live.error : `HTTP ${live.status}`;
    // Counted, so that the summary written on the way out does not read as a clean run.
    errors.add(1, { kind: 'connect' });
    exec.test.abort(`the server at ${BASE_URL} did not answer GET /health/live with 200 (${why})`);
  }
  // Zeros, so that the counters exist (and their thresholds are checked) when nothing went wrong.
  errors.add(0);
  contractProblems.add(0);
  runs.add(0);
  return { tag: `${Date.now().toString(16)}${randomHex(8)}`, password: `k6-${randomHex(24)}` };
}

// --- one user

function error(user, kind, message) {
  errors.add(1, { kind: ERROR_KINDS.includes(kind) ? kind : 'other' });
  console.error(`user ${user}: ${message}`);
}

function problem(user, kind, message) {
  contractProblems.add(1, { kind });
  console.error(`contract problem, user ${user}: ${message}`);
}

function post(path, body, token) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) {
    headers.Authorization = `Bearer ${token}`;
  }
  return http.post(`${BASE_URL}${path}`, JSON.stringify(body), {
    headers,
    timeout: `${REQUEST_DEADLINE_MS}ms`,
    tags: { name: path },
  });
}

function errorText(response) {
  if (response.error) {
    return response.error;
  }
  try {
    const body = response.json();
    return `HTTP ${response.status}: ${body.error.message}`;
  } catch (_) {
    return `HTTP ${response.status}`;
  }
}

// Registers the user's account and signs in: the access token, or null after counting the error.
function signIn(user, tag, password) {
  const email = `k6-${tag}-${user}@k6.invalid`;
  const registered = post('/api/auth/register', { email, password });
  if (registered.status !== 201) {
    error(user, 'sign_in', `could not register ${email}: ${errorText(registered)}`);
    return null;
  }
  const login = post('/api/auth/login', { email, password });
  if (login.status !== 200) {
    error(user, 'sign_in', `could not sign in as ${email}: ${errorText(login)}`);
    return null;
  }
  const token = login.json('access_token');
  if (typeof token !== 'string' || token === '') {
    error(user, 'sign_in', `the login of ${email} answered no access_token`);
    return null;
  }
  return token;
}

export default function (data) {
  const user = exec.vu.idInTest - 1;
  const token = signIn(user, data.tag, data.password);
  if (token === null) {
    return;
  }
  // Messages are sent until DURATION after the start of the scenario, for every user alike.
  const stopSendingAt = exec.scenario.startTime + DURATION_S * 1000;
  const giveUpAt = stopSendingAt + DRAIN_S * 1000;

  const ws = new WebSocket(WS_URL, null, { headers: { Authorization: `Bearer ${token}` } });
  let established = false;
  let closing = false;
  let lastSeq = 0;
  let sends = 0;
  let nextSend = null; // the timer of the next message
  const pending = new Map(); // client_message_id -> sent (ms)
  const active = new Map(); // run_id -> { sent, accepted, firstEvent }
  const ended = new Set(); // run_ids whose final event came

  const close = () => {
    if (closing) {
      return;
    }
    closing = true;
    clearInterval(tick);
    clearTimeout(nextSend);
    ws.close();
  };

  const sending = () => Date.now() < stopSendingAt;

  // Closed model: the next message `delay` from now if the test still sends; otherwise, once
  // nothing is open, the user is done.
  const afterAnswer = (delay) => {
    if (pending.size > 0 || active.size > 0) {
      return;
    }
    if (sending() && Date.now() + delay < stopSendingAt) {
      nextSend = setTimeout(send, delay);
    } else {
      close();
    }
  };

  const send = () => {
    nextSend = null;
    if (closing || !sending()) {
      afterAnswer(0);
      return;
    }
    sends += 1;
    const id = `k6-${user}-${sends}`;
    pending.set(id, now());
    ws.send(JSON.stringify({ type: 'user_message', payload: { text: MESSAGE, client_message_id: id } }));
  };

  const onEvent = (frame, at) => {
    if (frame.seq <= lastSeq) {
      problem(user, 'duplicate', `seq ${frame.seq} (${frame.type}) came after seq ${lastSeq}`);
    } else {
      if (frame.seq !== lastSeq + 1) {
        problem(user, 'gap', `seq ${frame.seq} (${frame.type}) came after seq ${lastSeq}: ${frame.seq - lastSeq - 1} missing`);
      }
      lastSeq = frame.seq;
    }
    if (ended.has(frame.run_id)) {
      problem(user, 'after_final', `${frame.type} (seq ${frame.seq}) of run ${frame.run_id} came after its final event`);
      return;
    }
    const run = active.get(frame.run_id);
    if (run === undefined) {
      return;
    }
    if (run.firstEvent === null) {
      run.firstEvent = at;
    }
    if (frame.type === 'agent_completed' && frame.payload && frame.payload.final === true) {
      active.delete(frame.run_id);
      ended.add(frame.run_id);
      firstEventMs.add(run.firstEvent - run.accepted);
      responseMs.add(at - run.accepted);
      runs.add(1);
      afterAnswer(THINK_MS);
    }
  };

  ws.onmessage = (message) => {
    const at = now();
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch (_) {
      error(user, 'socket', `the server sent a frame that is not JSON: ${String(message.data).slice(0, 80)}`);
      return;
    }
    if (typeof frame.seq === 'number') {
      onEvent(frame, at);
      return;
    }
    const payload = frame.payload || {};
    switch (frame.type) {
      case 'connection_established':
        established = true;
        lastSeq = payload.last_seq || 0;
        // The first message spread over one think time, so that the users do not send at once.
        nextSend = setTimeout(send, (THINK_MS * user) / USERS);
        break;
      case 'message_accepted': {
        const sent = pending.get(payload.client_message_id);
        if (sent !== undefined) {
          pending.delete(payload.client_message_id);
          acceptMs.add(at - sent);
          active.set(payload.run_id, { sent, accepted: at, firstEvent: null });
        }
        break;
      }
      case 'error': {
        const refused = pending.delete(payload.ref);
        const what = refused ? 'a message was refused' : 'the server told';
        const known = ERROR_KINDS.includes(payload.code);
        error(user, known ? payload.code : 'server_error', `${what}: ${payload.message} (${payload.code})`);
        if (refused) {
          afterAnswer(THINK_MS);
        }
        break;
      }
      default:
        // heartbeat, pong and any type this script does not know: nothing to measure.
        break;
    }
  };

  ws.onerror = (event) => {
    if (!closing) {
      error(user, 'socket', `the socket failed: ${event.error}`);
      closing = true;
      clearInterval(tick);
      clearTimeout(nextSend);
    }
  };

  ws.onclose = () => {
    if (!closing) {
      error(user, 'socket', 'the server closed the socket');
      closing = true;
      clearInterval(tick);
      clearTimeout(nextSend);
    }
  };

  const opened = now();
  const tick = setInterval(() => {
    const at = now();
    if (!established) {
      if (at - opened > REQUEST_DEADLINE_MS) {
        error(user, 'connect', `no connection_established within ${REQUEST_DEADLINE_MS} ms of opening ${WS_URL}`);
        close();
      }
      return;
    }
    for (const [id, sent] of pending) {
      if (at - sent > REQUEST_DEADLINE_MS) {
        pending.delete(id);
        error(user, 'no_answer', `message ${id} was neither accepted nor refused within ${REQUEST_DEADLINE_MS} ms`);
        afterAnswer(THINK_MS);
      }
    }
    // A run open past the drain limit (from its message) will not end: the loadtest's rule.
    for (const [runId, run] of active) {
      if (at - run.sent > DRAIN_S * 1000) {
        active.delete(runId);
        problem(user, 'missing_final', `run ${runId} had no final event within ${DRAIN_S} s`);
        afterAnswer(THINK_MS);
      }
    }
    if (Date.now() >= giveUpAt) {
      for (const runId of active.keys()) {
        problem(user, 'missing_final', `run ${runId} had no final event when the test ended`);
      }
      for (const id of pending.keys()) {
        error(user, 'no_answer', `message ${id} was neither accepted nor refused when the test ended`);
      }
      active.clear();
      pending.clear();
      close();
    }
  }, TICK_MS);
}

// --- the summary, in the loadtest's JSON shape

function round2(value) {
  return typeof value === 'number' ? Math.round(value * 100) / 100 : null;
}

function figures(data, name) {
  const metric = data.metrics[name];
  if (!metric || !metric.values.count) {
    return { count: 0, p50: null, p95: null, p99: null, max: null };
  }
  const v = metric.values;
  return { count: v.count, p50: round2(v['p(50)']), p95: round2(v['p(95)']), p99: round2(v['p(99)']), max: round2(v.max) };
}

function count(data, name) {
  const metric = data.metrics[name];
  return metric ? metric.values.count : 0;
}

function kinds(data, name, known) {
  const out = {};
  let named = 0;
  for (const kind of [...known, 'other']) {
    const n = count(data, `${name}{kind:${kind}}`);
    if (n > 0) {
      out[kind] = n;
      named += n;
    }
  }
  // Kinds without a submetric of their own (none today) still show up.
  if (count(data, name) > named) {
    out.other = (out.other || 0) + count(data, name) - named;
  }
  return out;
}

export function handleSummary(data) {
  const thresholds = [];
  for (const name of ['response_ms', 'errors', 'contract_problems']) {
    const metric = data.metrics[name];
    for (const [limit, result] of Object.entries((metric && metric.thresholds) || {})) {
      thresholds.push({ metric: name, limit, ok: result.ok });
    }
  }
  const report = {
    tool: 'k6',
    server: BASE_URL,
    users: USERS,
    model: 'closed',
    think_ms: THINK_MS,
    duration_s: DURATION_S,
    elapsed_s: round2(data.state.testRunDurationMs / 1000),
    runs: count(data, 'runs'),
    errors: count(data, 'errors'),
    errors_by_kind: kinds(data, 'errors', ERROR_KINDS),
    response_ms: figures(data, 'response_ms'),
    first_event_ms: figures(data, 'first_event_ms'),
    accept_ms: figures(data, 'accept_ms'),
    contract_problems: count(data, 'contract_problems'),
    contract_problems_by_kind: kinds(data, 'contract_problems', PROBLEM_KINDS),
    thresholds,
  };
  const cell = (v) => (v === null ? '-' : v.toFixed(1));
  const row = (label, f) => `| ${label} | ${f.count} | ${cell(f.p50)} | ${cell(f.p95)} | ${cell(f.p99)} | ${cell(f.max)} |`;
  const lines = [
    `k6 chat: ${USERS} users against ${BASE_URL}, closed model, think ${THINK_MS} ms: ${report.runs} runs answered in ${report.elapsed_s} s, ${report.errors} errors, ${report.contract_problems} contract problems`,
    '',
    '| figure (ms) | count | p50 | p95 | p99 | max |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
    row('response (accepted → final event)', report.response_ms),
    row('first event (accepted → first event)', report.first_event_ms),
    row('accept (sent → message_accepted)', report.accept_ms),
    '',
    ...thresholds.map((t) => `threshold ${t.metric} ${t.limit}: ${t.ok ? 'ok' : 'VIOLATED'}`),
    `summary written to ${SUMMARY_JSON}`,
    '',
  ];
  return { [SUMMARY_JSON]: `${JSON.stringify(report, null, 2)}\n`, stdout: lines.join('\n') };
}
