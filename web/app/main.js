// Switchboard in the browser: signing in, the threads, the conversation, the live run timeline,
// stop, resume after a reload, uploads of usage data, and the live SLA report (`#sla`, signed in
// or not). The page keeps one connection per tab;
// every event is applied once, in seq order, and the last seq applied (and where each unfinished
// run began) is kept in localStorage, so that a reload asks for exactly the events it has not
// shown yet and rebuilds the runs still under way from their first event.

import { ApiError, Session, publicRequest, serverInfo } from './api.js';
import { reportCharts } from './charts.js';
import { byId, h, replaceChildren } from './dom.js';
import { count, when } from './format.js';
import { renderMarkdown } from './markdown.js';
import { SlaView } from './sla.js';
import { Connection } from './socket.js';
import { Run } from './timeline.js';
import { UnreadableFile, readRows, upload } from './upload.js';

/** Runs kept in memory; older finished ones are let go. */
const MAX_RUNS = 200;
const SUGGESTIONS = [
  'How can we cut our LLM costs?',
  'Where is our latency worst, and what would make it faster?',
  'Was anything unusual in our usage last week?',
];

const page = {
  signedOut: byId('signed-out', HTMLElement),
  signedIn: byId('signed-in', HTMLDivElement),
  signInForm: byId('sign-in', HTMLFormElement),
  email: byId('email', HTMLInputElement),
  password: byId('password', HTMLInputElement),
  signInError: byId('sign-in-error', HTMLParagraphElement),
  register: byId('register', HTMLButtonElement),
  devSignIn: byId('dev-sign-in', HTMLDivElement),
  devLogin: byId('dev-login', HTMLButtonElement),
  menu: byId('menu', HTMLButtonElement),
  sidebar: byId('sidebar', HTMLElement),
  connection: byId('connection', HTMLParagraphElement),
  who: byId('who', HTMLSpanElement),
  signOut: byId('sign-out', HTMLButtonElement),
  newChat: byId('new-chat', HTMLButtonElement),
  threadList: byId('thread-list', HTMLUListElement),
  uploadFile: byId('upload-file', HTMLInputElement),
  demoData: byId('demo-data', HTMLButtonElement),
  uploadProgress: byId('upload-progress', HTMLProgressElement),
  uploadStatus: byId('upload-status', HTMLParagraphElement),
  refusedRows: byId('refused-rows', HTMLUListElement),
  threadTitle: byId('thread-title', HTMLHeadingElement),
  messages: byId('messages', HTMLDivElement),
  composer: byId('composer', HTMLFormElement),
  composerError: byId('composer-error', HTMLParagraphElement),
  message: byId('message', HTMLTextAreaElement),
  stop: byId('stop', HTMLButtonElement),
  send: byId('send', HTMLButtonElement),
  timeline: byId('timeline', HTMLElement),
  timelineToggle: byId('timeline-toggle', HTMLButtonElement),
  timelineBody: byId('timeline-body', HTMLDivElement),
  dropZone: byId('drop-zone', HTMLDivElement),
  deleteDialog: byId('delete-dialog', HTMLDialogElement),
  deleteWhat: byId('delete-what', HTMLParagraphElement),
  deleteCancel: byId('delete-cancel', HTMLButtonElement),
  deleteConfirm: byId('delete-confirm', HTMLButtonElement),
  slaView: byId('sla-view', HTMLElement),
  slaBody: byId('sla-body', HTMLDivElement),
  slaBack: byId('sla-back', HTMLAnchorElement),
};

/** The SLA view, shown at `#sla` in place of the chat (signed in or not). */
const sla = new SlaView(page.slaView, page.slaBody);

/**
 * @typedef {{ id: string, title: string, created_at: string, updated_at: string }} Thread
 * @typedef {{ text: string, threadId: string | null, element: HTMLElement, sent: boolean, held: boolean }} Pending
 *   `held`: refused for a passing reason; kept, with a "Send again" button, and never sent
 *   again by itself
 */

/** The refusals of a message that may pass when it is sent again in a moment: such a message
 * is kept for the person to send again, with the same client_message_id. */
const PASSING = new Set(['store_unavailable', 'server_busy', 'rate_limited', 'too_many_active_runs', 'shutting_down', 'internal']);

const state = {
  /** @type {import('./api.js').Info | null} */
  info: null,
  /** @type {Session | null} */
  session: null,
  /** @type {Connection | null} */
  connection: null,
  /** @type {Thread[]} */
  threads: [],
  /** @type {string | null} the open thread; null for a new chat */
  threadId: null,
  /** Increased at each opening of a thread, so a late answer for an earlier one is dropped. */
  opening: 0,
  /** @type {Map<string, Run>} */
  runs: new Map(),
  /** Messages sent and not yet accepted, by client_message_id. @type {Map<string, Pending>} */
  pending: new Map(),
  /** @type {number | null} the last seq applied in this page */
  applied: null,
  /** @type {number | null} the after_seq the current connection asked for */
  asked: null,
  /** @type {string | null} the run whose timeline is shown */
  shownRun: null,
  /** Runs of the open thread whose record is being fetched. @type {Set<string>} */
  fetching: new Set(),
  /** @type {string | null} the run "Stop" was pressed for, until it ends */
  stopping: null,
  /** The threads or the open thread could not be loaded (a store that did not answer, say):
   * loaded again when the next connection opens. */
  stale: false,
  /** Whether the page knows what to show (the server's info and the kept session are read). */
  booted: false,
};

// ---------------------------------------------------------------------------------------------
// Which screen: the SLA view at `#sla`, else the chat (or the sign-in form when signed out).

function onSlaRoute() {
  return location.hash === '#sla';
}

/** Shows the screen the location and the session call for. */
function showScreen() {
  if (!state.booted) return;
  const onSla = onSlaRoute();
  page.signedIn.hidden = onSla || state.session === null;
  page.signedOut.hidden = onSla || state.session !== null;
  if (onSla) {
    page.slaBack.textContent = state.session === null ? 'Sign in' : 'Back to chat';
    page.slaBack.href = chatLocation();
    document.title = 'SLA · Switchboard';
    sla.show();
  } else {
    sla.hide();
    if (state.session === null) document.title = 'Switchboard';
    else renderThreads();
  }
}

/** Where the chat is: the open thread's location, or the page's own. */
function chatLocation() {
  return state.threadId === null ? location.pathname : `#thread=${state.threadId}`;
}

/** The screen of the location, after it changed (a link, back or forward). */
function route() {
  showScreen();
  if (!onSlaRoute() && state.session !== null && threadOfLocation() !== state.threadId) openThread(threadOfLocation());
}

// Back to the chat from the SLA view: to the thread that was open, without loading the page again.
page.slaBack.addEventListener('click', (event) => {
  event.preventDefault();
  history.pushState(null, '', chatLocation());
  route();
  if (state.session === null) page.email.focus();
  else page.message.focus();
});

// ---------------------------------------------------------------------------------------------
// Where the log was left: per user, the last seq applied and where each unfinished run began.

/** @param {string} user */
function logKey(user) {
  return `switchboard.log.${user}`;
}

/** @returns {{ last: number, open: Record<string, number> } | null} */
function loadLogPlace() {
  if (state.session === null) return null;
  try {
    const place = JSON.parse(localStorage.getItem(logKey(state.session.user.id)) ?? 'null');
    if (typeof place?.last !== 'number') return null;
    return { last: place.last, open: typeof place.open === 'object' && place.open !== null ? place.open : {} };
  } catch {
    return null;
  }
}

/**
 * Keeps the place after an event is applied. Tabs share it: the highest seq wins, and a run
 * ends for all when one tab saw its end.
 * @param {any} event
 */
function saveLogPlace(event) {
  if (state.session === null) return;
  const place = loadLogPlace() ?? { last: 0, open: {} };
  place.last = Math.max(place.last, event.seq);
  if (event.type === 'agent_started' && event.agent_name === 'supervisor' && !(event.run_id in place.open)) {
    place.open[event.run_id] = event.seq;
  }
  if (event.type === 'agent_completed' && event.payload?.final) delete place.open[event.run_id];
  localStorage.setItem(logKey(state.session.user.id), JSON.stringify(place));
}

/** @param {number} last the server's newest seq */
function forgetLogPlace(last) {
  if (state.session !== null) localStorage.setItem(logKey(state.session.user.id), JSON.stringify({ last, open: {} }));
}

/** What to ask a new connection for: everything after the last event applied here, or on a
 * fresh page everything from the start of the runs still under way. */
function afterSeq() {
  if (state.applied !== null) {
    state.asked = state.applied;
    return state.asked;
  }
  const place = loadLogPlace();
  if (place === null) {
    state.asked = null;
    return null;
  }
  const starts = Object.values(place.open).filter((seq) => typeof seq === 'number' && seq > 0);
  state.asked = Math.max(0, Math.min(place.last, ...starts.map((seq) => seq - 1)));
  return state.asked;
}

// ---------------------------------------------------------------------------------------------
// Signing in and out.

/** @param {string} message */
function signInFailed(message) {
  page.signInError.textContent = message;
}

/** @param {() => Promise<any>} getPair */
async function signIn(getPair) {
  signInFailed('');
  const buttons = page.signInForm.querySelectorAll('button');
  buttons.forEach((button) => (button.disabled = true));
  try {
    const pair = await getPair();
    startSession(Session.start(pair, signedOut));
  } catch (error) {
    signInFailed(error instanceof Error ? error.message : String(error));
  } finally {
    buttons.forEach((button) => (button.disabled = false));
  }
}

function credentials() {
  const email = page.email.value.trim();
  const password = page.password.value;
  if (email === '' || password === '') throw new ApiError(0, 'invalid_request', 'Enter your email and password.');
  return { email, password };
}

page.signInForm.addEventListener('submit', (event) => {
  event.preventDefault();
  signIn(() => publicRequest('POST', '/api/auth/login', credentials()));
});
page.register.addEventListener('click', () => {
  signIn(async () => {
    const body = credentials();
    await publicRequest('POST', '/api/auth/register', body);
    return publicRequest('POST', '/api/auth/login', body);
  });
});
page.devLogin.addEventListener('click', () => signIn(() => publicRequest('POST', '/api/auth/dev-login')));
page.signOut.addEventListener('click', () => state.session?.signOut());

/** @param {string | null} why */
function signedOut(why) {
  state.connection?.stop();
  state.connection = null;
  state.session = null;
  state.runs.clear();
  state.pending.clear();
  state.applied = null;
  state.stale = false;
  state.threads = [];
  state.threadId = null;
  state.shownRun = null;
  replaceChildren(page.messages);
  replaceChildren(page.threadList);
  page.password.value = '';
  signInFailed(why ?? '');
  showScreen();
  page.email.focus();
}

/** @param {Session} session */
function startSession(session) {
  state.session = session;
  showScreen();
  page.who.textContent = session.user.email;
  page.demoData.hidden = !state.info?.dev;
  state.connection = new Connection({
    token: () => session.accessToken(),
    refresh: () => session.refresh(),
    afterSeq,
    onFrame,
    onStatus: (status) => {
      page.connection.textContent = status.text;
      page.connection.dataset.state = status.state;
    },
    onOpen: () => {
      resendPending();
      resendStop();
      if (state.stale) {
        // What failed to load while the server could not answer (its store did not answer, say):
        // now that it lets the connection in, again.
        state.stale = false;
        loadThreads();
        openThread(state.threadId);
      }
    },
    onClosed: (code) => {
      // 1009: a frame was over the server's limit. Whatever was sent on that connection and not
      // yet accepted is given up, so that it is not sent again and again.
      if (code === 1009) {
        for (const [id, pending] of state.pending) {
          if (pending.sent) notSent(id, 'the server closed the connection because the message was too large.');
        }
      }
    },
  });
  state.connection.start();
  loadThreads().then(() => openThread(threadOfLocation()));
  page.message.focus();
}

// ---------------------------------------------------------------------------------------------
// Threads.

function threadOfLocation() {
  const match = location.hash.match(/^#thread=([\w-]+)$/);
  return match ? match[1] : null;
}

/** @param {string | null} id */
function setLocation(id) {
  // The SLA view keeps its location; the chat's thread is taken up when it is left.
  if (onSlaRoute()) return;
  const hash = id === null ? '' : `#thread=${id}`;
  if (location.hash !== hash) history.pushState(null, '', hash === '' ? location.pathname : hash);
}

// A fragment link fires both; `route` does nothing the second time.
window.addEventListener('popstate', route);
window.addEventListener('hashchange', route);

/** @param {Thread | undefined} thread */
function titleOf(thread) {
  return thread?.title?.trim() || 'New chat';
}

async function loadThreads() {
  const session = state.session;
  if (session === null) return;
  try {
    const answer = await session.request('GET', '/api/threads');
    if (session !== state.session) return;
    state.threads = (answer?.threads ?? []).slice().sort((/** @type {Thread} */ a, /** @type {Thread} */ b) =>
      b.updated_at.localeCompare(a.updated_at),
    );
    renderThreads();
  } catch (error) {
    if (session !== state.session) return;
    state.stale = true;
    showComposerError(`The threads could not be loaded: ${messageOf(error)}`);
  }
}

let threadsReload = /** @type {ReturnType<typeof setTimeout> | undefined} */ (undefined);
function reloadThreadsSoon() {
  clearTimeout(threadsReload);
  threadsReload = setTimeout(loadThreads, 150);
}

function renderThreads() {
  replaceChildren(
    page.threadList,
    state.threads.map((thread) => {
      const title = titleOf(thread);
      const open = thread.id === state.threadId;
      const active = [...state.runs.values()].some((run) => run.threadId === thread.id && run.active);
      return h(
        'li',
        { class: open ? 'open' : '' },
        h(
          'a',
          {
            href: `#thread=${thread.id}`,
            'aria-current': open ? 'page' : null,
            onclick: (/** @type {MouseEvent} */ event) => {
              event.preventDefault();
              openThread(thread.id);
              closeMenu();
            },
          },
          h('span', { class: 'thread-name' }, title),
          // Not part of the link's name, which is the thread's title.
          h('span', { class: 'thread-when', 'aria-hidden': 'true' }, active ? 'running…' : when(thread.updated_at)),
        ),
        h(
          'button',
          { type: 'button', class: 'delete', 'aria-label': `Delete thread ${title}`, title: 'Delete', onclick: () => askToDelete(thread) },
          h('span', { 'aria-hidden': 'true' }, '×'),
        ),
      );
    }),
  );
  const open = state.threads.find((thread) => thread.id === state.threadId);
  page.threadTitle.textContent = state.threadId === null ? 'New chat' : titleOf(open);
  if (onSlaRoute()) return;
  document.title = state.threadId === null ? 'Switchboard' : `${titleOf(open)} · Switchboard`;
}

/** @type {Thread | null} */
let deleting = null;

/** @param {Thread} thread */
function askToDelete(thread) {
  deleting = thread;
  page.deleteWhat.textContent = `“${titleOf(thread)}” and all its messages will be deleted. This cannot be undone.`;
  page.deleteDialog.showModal();
  page.deleteCancel.focus();
}

page.deleteCancel.addEventListener('click', () => page.deleteDialog.close());
page.deleteConfirm.addEventListener('click', async () => {
  const thread = deleting;
  page.deleteDialog.close();
  if (thread === null || state.session === null) return;
  try {
    await state.session.request('DELETE', `/api/threads/${thread.id}`);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) {
      showComposerError(`The thread could not be deleted: ${messageOf(error)}`);
      return;
    }
  }
  state.threads = state.threads.filter((t) => t.id !== thread.id);
  if (state.threadId === thread.id) openThread(null);
  else renderThreads();
});

page.newChat.addEventListener('click', () => {
  openThread(null);
  closeMenu();
  page.message.focus();
});

page.menu.addEventListener('click', () => {
  const open = page.menu.getAttribute('aria-expanded') !== 'true';
  page.menu.setAttribute('aria-expanded', String(open));
  page.sidebar.classList.toggle('open', open);
});

// On a narrow screen the side bar lies over the conversation: a tap beside it or Escape closes it.
for (const element of [page.messages, page.composer, page.timeline]) {
  element.addEventListener('pointerdown', () => {
    if (page.sidebar.classList.contains('open')) closeMenu();
  });
}
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && page.sidebar.classList.contains('open')) {
    closeMenu();
    page.menu.focus();
  }
});

function closeMenu() {
  page.menu.setAttribute('aria-expanded', 'false');
  page.sidebar.classList.remove('open');
}

/**
 * Shows a thread (or a new chat, for null): its messages from the server, with the answers of
 * runs this page follows taken from their events.
 * @param {string | null} id
 */
async function openThread(id) {
  const session = state.session;
  if (session === null) return;
  const opening = ++state.opening;
  state.threadId = id;
  setLocation(id);
  renderThreads();
  showComposerError('');
  if (id === null) {
    page.messages.removeAttribute('aria-busy');
    replaceChildren(page.messages, welcome());
    for (const pending of state.pending.values()) if (pending.threadId === null) page.messages.append(pending.element);
    showTimeline(null);
    updateStop();
    return;
  }
  page.messages.setAttribute('aria-busy', 'true');
  let messages;
  try {
    messages = (await session.request('GET', `/api/threads/${id}/messages`))?.messages ?? [];
  } catch (error) {
    if (opening !== state.opening) return;
    page.messages.removeAttribute('aria-busy');
    if (error instanceof ApiError && error.status === 404) {
      // What is sent from here starts a new chat.
      state.threadId = null;
      setLocation(null);
      state.threads = state.threads.filter((t) => t.id !== id);
      renderThreads();
      replaceChildren(page.messages, h('p', { class: 'empty' }, 'This thread does not exist (it may have been deleted). A message sent now starts a new chat.'));
    } else {
      state.stale = true;
      replaceChildren(page.messages, h('p', { class: 'error-text' }, `The messages could not be loaded: ${messageOf(error)}`));
    }
    return;
  }
  if (opening !== state.opening) return;
  page.messages.removeAttribute('aria-busy');
  /** @type {Map<string, string>} */
  const answers = new Map();
  for (const message of messages) {
    if (message.role === 'assistant' && message.run_id) answers.set(message.run_id, message.text);
  }
  const nodes = [];
  const placed = new Set();
  let lastRun = null;
  for (const message of messages) {
    if (message.role === 'user') {
      nodes.push(userArticle(message.text));
      if (message.run_id) {
        nodes.push(answerArticle(message.run_id, answers.get(message.run_id) ?? null));
        placed.add(message.run_id);
        lastRun = message.run_id;
      }
    } else if (message.run_id && !placed.has(message.run_id)) {
      nodes.push(answerArticle(message.run_id, message.text));
      placed.add(message.run_id);
    }
  }
  // Runs of this thread the page follows whose message is not stored yet (just sent).
  for (const pending of state.pending.values()) if (pending.threadId === id) nodes.push(pending.element);
  replaceChildren(page.messages, nodes.length > 0 ? nodes : h('p', { class: 'empty' }, 'No messages yet.'));
  showTimeline(lastRun);
  updateStop();
  scrollToEnd(true);
}

function welcome() {
  return h(
    'div',
    { class: 'welcome' },
    h('h3', {}, 'What would you like to know?'),
    h(
      'p',
      {},
      'The agents read the usage data you upload (or the demo data) and answer with figures computed from it: cost by model and feature, savings, latency, anomalies.',
    ),
    h(
      'ul',
      { class: 'suggestions' },
      SUGGESTIONS.map((text) =>
        h(
          'li',
          {},
          h(
            'button',
            {
              type: 'button',
              onclick: () => {
                page.message.value = text;
                page.message.focus();
              },
            },
            text,
          ),
        ),
      ),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// Messages and answers.

/** @param {string} text */
function userArticle(text) {
  return h('article', { class: 'message user', 'aria-label': 'You' }, h('div', { class: 'text' }, text));
}

/**
 * The answer of a run: from its events when this page follows it, else the stored text.
 * @param {string} runId
 * @param {string | null} storedText
 */
function answerArticle(runId, storedText) {
  const article = h('article', { class: 'message answer', 'aria-label': 'Switchboard', 'data-run': runId });
  if (storedText !== null) article.dataset.stored = storedText;
  renderAnswer(article);
  const run = state.runs.get(runId);
  if (run === undefined && storedText === null) fetchRun(runId);
  return article;
}

/** @param {string} runId */
function articleOf(runId) {
  return /** @type {HTMLElement | null} */ (page.messages.querySelector(`article[data-run="${CSS.escape(runId)}"]`));
}

/** Answers waiting to be drawn at the next frame. @type {Set<string>} */
const toDraw = new Set();

/** @param {string} runId */
function drawSoon(runId) {
  if (toDraw.size === 0) requestAnimationFrame(drawAnswers);
  toDraw.add(runId);
}

function drawAnswers() {
  const follow = nearEnd();
  for (const runId of toDraw) {
    const article = articleOf(runId);
    if (article) renderAnswer(article);
  }
  toDraw.clear();
  scrollToEnd(follow);
}

/** @param {HTMLElement} article */
function renderAnswer(article) {
  const runId = article.dataset.run ?? '';
  const run = state.runs.get(runId);
  const stored = article.dataset.stored;
  const text = run && (run.text !== '' || stored === undefined) ? run.text : (stored ?? '');
  const busy = run ? run.active : stored === undefined && article.dataset.status === 'running';
  // A run this page joined under way has only the end of its answer so far: said, and marked
  // with a leading "…", until the final event brings the whole answer.
  const joined = run !== undefined && !run.done && !run.fromStart && run.startedAt !== null;
  const body = h('div', { class: 'text markdown' }, renderMarkdown(joined && text !== '' ? `… ${text}` : text));
  /** @type {HTMLElement[]} */
  const parts = [];
  if (joined) parts.push(h('p', { class: 'working joined' }, 'Joined while the run was under way; the whole answer shows when it ends.'));
  parts.push(body);
  if (busy && text === '' && !joined) body.append(h('p', { class: 'working' }, 'Working…'));
  const report = run?.final?.result?.report;
  if (report && typeof report === 'object') parts.push(reportCharts(report));
  const ended = run ? run.endSentence() : (article.dataset.ended ?? null);
  if (ended) parts.push(h('p', { class: 'run-end' }, ended));
  // The run has ended, but its last events (the end of the answer) are not stored yet.
  const delayed = run?.delayed ?? null;
  if (delayed !== null) parts.push(h('p', { class: 'store-delayed', role: 'status', 'aria-label': 'Answer delayed' }, delayed.message));
  parts.push(
    h(
      'div',
      { class: 'answer-tools' },
      text !== '' && !busy && delayed === null
        ? h(
            'button',
            {
              type: 'button',
              class: 'link',
              'aria-label': 'Copy the answer',
              onclick: (/** @type {MouseEvent} */ event) => {
                const button = /** @type {HTMLButtonElement} */ (event.currentTarget);
                navigator.clipboard?.writeText(text).then(
                  () => (button.textContent = 'Copied'),
                  () => (button.textContent = 'Cannot copy here'),
                );
              },
            },
            'Copy',
          )
        : null,
      h(
        'button',
        { type: 'button', class: 'link', 'aria-label': 'Show the timeline of this answer', onclick: () => showTimeline(runId, true) },
        'Timeline',
      ),
    ),
  );
  if (busy) article.setAttribute('aria-busy', 'true');
  else article.removeAttribute('aria-busy');
  replaceChildren(article, parts);
}

/**
 * Learns how a run this page has no events of ended (or that it is still running).
 * @param {string} runId
 */
async function fetchRun(runId) {
  if (state.session === null || state.fetching.has(runId)) return;
  state.fetching.add(runId);
  try {
    const record = await state.session.request('GET', `/api/runs/${runId}`);
    const article = articleOf(runId);
    if (article === null || state.runs.has(runId)) return;
    article.dataset.status = record.status;
    const ended = Run.fromRecord(record).endSentence();
    if (ended !== null) article.dataset.ended = ended;
    renderAnswer(article);
    if (state.shownRun === runId) showTimeline(runId);
  } catch {
    // The answer stays as stored; nothing to add.
  } finally {
    state.fetching.delete(runId);
  }
}

function nearEnd() {
  const log = page.messages;
  return log.scrollHeight - log.scrollTop - log.clientHeight < 80;
}

/** @param {boolean} follow */
function scrollToEnd(follow) {
  if (follow) page.messages.scrollTop = page.messages.scrollHeight;
}

/** @param {string} text */
function showComposerError(text) {
  page.composerError.textContent = text;
}

page.composer.addEventListener('submit', (event) => {
  event.preventDefault();
  sendMessage();
});

// The box grows with its text, up to the height the style sheet allows.
page.message.addEventListener('input', () => {
  page.message.style.height = 'auto';
  page.message.style.height = `${page.message.scrollHeight + 2}px`;
});

page.message.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendMessage();
  }
});

function sendMessage() {
  const text = page.message.value.trim();
  if (text === '' || state.session === null) return;
  const limit = state.info?.max_text_chars ?? 32_000;
  if ([...text].length > limit) {
    showComposerError(`The message is too long: at most ${count(limit)} characters.`);
    return;
  }
  showComposerError('');
  const id = crypto.randomUUID();
  const element = userArticle(text);
  element.classList.add('pending');
  state.pending.set(id, { text, threadId: state.threadId, element, sent: false, held: false });
  page.messages.querySelector('.welcome, .empty')?.remove();
  page.messages.append(element);
  page.message.value = '';
  page.message.style.height = '';
  scrollToEnd(true);
  transmit(id);
}

/** @param {string} id a client_message_id */
function transmit(id) {
  const pending = state.pending.get(id);
  if (pending === undefined || state.connection === null) return;
  /** @type {Record<string, string>} */
  const payload = { text: pending.text, client_message_id: id };
  if (pending.threadId !== null) payload.thread_id = pending.threadId;
  const frame = { type: 'user_message', payload };
  const bytes = new TextEncoder().encode(JSON.stringify(frame)).length;
  const limit = state.info?.max_frame_bytes ?? 64 * 1024;
  if (bytes > limit) {
    notSent(
      id,
      `the message is ${count(Math.ceil(bytes / 1024))} KB as sent, over the server's limit of ${count(Math.floor(limit / 1024))} KB; shorten it.`,
    );
    return;
  }
  // Not connected: it goes with the next connection (the same client_message_id never starts
  // a second run).
  pending.sent = state.connection.send(frame);
}

/**
 * Gives up a message that was not accepted, saying why in it and under the box.
 * @param {string} id its client_message_id
 * @param {string} why a sentence, without the leading "Not sent: "
 */
function notSent(id, why) {
  const pending = state.pending.get(id);
  if (pending === undefined) return;
  state.pending.delete(id);
  pending.element.classList.remove('pending');
  pending.element.classList.add('not-sent');
  pending.element.append(h('p', { class: 'error-text' }, `Not sent: ${why}`));
  showComposerError(`Not sent: ${why}`);
}

/**
 * Keeps a message refused for a passing reason (a slow store, a busy server): it stays in the
 * conversation, saying why, with a button "Send again" that sends it with the same
 * client_message_id (so that it can never start two runs). Never sent again by itself.
 * @param {string} id its client_message_id
 * @param {string} why the server's sentence
 */
function hold(id, why) {
  const pending = state.pending.get(id);
  if (pending === undefined) return;
  pending.held = true;
  pending.sent = false;
  pending.element.classList.remove('pending');
  pending.element.classList.add('not-sent');
  pending.element.querySelector('.not-sent-note')?.remove();
  pending.element.append(
    h(
      'div',
      { class: 'not-sent-note' },
      h('p', { class: 'error-text' }, `Not sent: ${why}`),
      h('button', { type: 'button', class: 'link', onclick: () => sendAgain(id) }, 'Send again'),
    ),
  );
  showComposerError(`Not sent: ${why}`);
}

/** @param {string} id the client_message_id of a held message */
function sendAgain(id) {
  const pending = state.pending.get(id);
  if (pending === undefined || !pending.held) return;
  pending.held = false;
  pending.element.querySelector('.not-sent-note')?.remove();
  pending.element.classList.remove('not-sent');
  pending.element.classList.add('pending');
  showComposerError('');
  transmit(id);
}

function resendPending() {
  for (const [id, pending] of state.pending) if (!pending.held) transmit(id);
}

/** Sends `stop_agent` again on a new connection for a run still being stopped: the first one
 * may have gone into a connection that was already dead. */
function resendStop() {
  const run = state.stopping === null ? undefined : state.runs.get(state.stopping);
  if (run === undefined || !run.active) {
    state.stopping = null;
    return;
  }
  state.connection?.send({ type: 'stop_agent', payload: { run_id: run.id } });
}

page.stop.addEventListener('click', async () => {
  const run = activeRunOfThread();
  if (run === null || state.session === null) return;
  page.stop.disabled = true;
  state.stopping = run.id;
  if (!state.connection?.send({ type: 'stop_agent', payload: { run_id: run.id } })) {
    try {
      await state.session.request('POST', `/api/runs/${run.id}/cancel`);
    } catch (error) {
      page.stop.disabled = false;
      showComposerError(`The run could not be stopped: ${messageOf(error)}`);
    }
  }
});

function activeRunOfThread() {
  let found = null;
  for (const run of state.runs.values()) {
    if (run.threadId === state.threadId && run.active) found = run;
  }
  return found;
}

function updateStop() {
  const active = state.threadId !== null && activeRunOfThread() !== null;
  if (page.stop.hidden === active) {
    page.stop.hidden = !active;
    if (!active) page.stop.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Frames from the server.

/** @param {any} frame */
function onFrame(frame) {
  switch (frame.type) {
    case 'connection_established': {
      const last = Number(frame.payload?.last_seq ?? 0);
      if (state.asked !== null && last < state.asked) {
        // The server's log is shorter than what this page was told before (its data was reset):
        // start over from its end, on a connection that asks for that.
        forgetLogPlace(last);
        state.applied = last;
        state.connection?.socket?.close();
        return;
      }
      if (state.applied === null) state.applied = state.asked ?? last;
      return;
    }
    case 'message_accepted':
      accepted(frame.payload);
      return;
    case 'error':
      refused(frame.payload);
      return;
    case 'store_delayed':
      storeDelayed(frame.payload);
      return;
    case 'heartbeat':
    case 'pong':
    case 'resumed':
    case 'thread_history':
      return;
    default:
      if (typeof frame.seq === 'number' && typeof frame.run_id === 'string') applyEvent(frame);
  }
}

/** @param {any} payload */
function accepted(payload) {
  const pending = state.pending.get(payload.client_message_id);
  if (pending === undefined) return;
  state.pending.delete(payload.client_message_id);
  pending.element.classList.remove('pending');
  if (pending.threadId === null) {
    // A new chat became a thread.
    if (state.threadId === null) {
      state.threadId = payload.thread_id;
      setLocation(payload.thread_id);
    }
    pending.threadId = payload.thread_id;
    if (!state.threads.some((thread) => thread.id === payload.thread_id)) {
      // Shown at once; the list from the server replaces it in a moment. The server names a
      // thread by its first message's first line, cut at 60 characters.
      const line = pending.text.split('\n')[0].trim();
      const title = [...line].length > 60 ? `${[...line].slice(0, 59).join('')}…` : line;
      const now = new Date().toISOString();
      state.threads.unshift({ id: payload.thread_id, title, created_at: now, updated_at: now });
      renderThreads();
    }
  }
  if (!state.runs.has(payload.run_id)) state.runs.set(payload.run_id, new Run(payload.run_id, payload.thread_id));
  if (pending.threadId === state.threadId && articleOf(payload.run_id) === null) {
    pending.element.after(answerArticle(payload.run_id, null));
    showTimeline(payload.run_id);
  }
  updateStop();
  reloadThreadsSoon();
}

/** @param {any} payload */
function refused(payload) {
  const message = String(payload?.message ?? 'The server refused the request.');
  if (typeof payload?.ref === 'string' && state.pending.has(payload.ref)) {
    if (PASSING.has(String(payload.code))) hold(payload.ref, message);
    else notSent(payload.ref, message);
  } else {
    showComposerError(message);
  }
  updateStop();
}

/**
 * A run of the user has ended, but the store has not stored its last events: the answer stops
 * showing as under way and says so, until those events (the final one among them) come. A
 * notice of a run this page does not show is ignored.
 * @param {any} payload
 */
function storeDelayed(payload) {
  if (typeof payload?.run_id !== 'string' || typeof payload.message !== 'string') return;
  let run = state.runs.get(payload.run_id);
  const article = articleOf(payload.run_id);
  if (run === undefined) {
    // An answer shown from the store, of a run still running when it was read: followed from
    // here, so that its final event (which follows) completes it.
    if (article === null || article.dataset.stored !== undefined || typeof payload.thread_id !== 'string') return;
    run = new Run(payload.run_id, payload.thread_id);
    state.runs.set(run.id, run);
    forgetOldRuns();
  }
  if (!run.delay(payload)) return;
  if (article !== null) drawSoon(run.id);
  if (state.stopping === run.id) state.stopping = null;
  updateStop();
  renderThreads();
}

/** @param {any} event a run event, with its seq */
function applyEvent(event) {
  if (state.applied !== null && event.seq <= state.applied) return; // already shown
  if (state.applied !== null && event.seq > state.applied + 1) {
    // Never expected (the server delivers without gaps); reconnecting asks for what is missing.
    state.connection?.socket?.close();
    return;
  }
  state.applied = event.seq;
  saveLogPlace(event);
  let run = state.runs.get(event.run_id);
  const fresh = run === undefined;
  if (run === undefined) {
    run = new Run(event.run_id, event.thread_id);
    state.runs.set(event.run_id, run);
    forgetOldRuns();
  }
  run.add(event);
  if (run.threadId === state.threadId) {
    if (articleOf(run.id) === null) {
      // A run started elsewhere (another tab, or before this page): its message is in the store.
      if (fresh || event.type === 'agent_started') reloadThreadSoon();
    } else {
      drawSoon(run.id);
    }
    if (fresh && (state.shownRun === null || !state.runs.get(state.shownRun)?.active)) showTimeline(run.id);
  }
  if (!state.threads.some((thread) => thread.id === run.threadId)) reloadThreadsSoon();
  if (run.done) {
    if (state.stopping === run.id) state.stopping = null;
    updateStop();
    renderThreads();
    reloadThreadsSoon();
  } else if (fresh) {
    updateStop();
    renderThreads();
  }
}

let threadReload = /** @type {ReturnType<typeof setTimeout> | undefined} */ (undefined);
function reloadThreadSoon() {
  clearTimeout(threadReload);
  const id = state.threadId;
  threadReload = setTimeout(() => {
    if (state.threadId === id) openThread(id);
  }, 100);
}

function forgetOldRuns() {
  if (state.runs.size <= MAX_RUNS) return;
  for (const [id, run] of state.runs) {
    if (state.runs.size <= MAX_RUNS) break;
    if (run.done && id !== state.shownRun) state.runs.delete(id);
  }
}

// ---------------------------------------------------------------------------------------------
// The run timeline.

/**
 * Shows a run's timeline (null: none).
 * @param {string | null} runId
 * @param {boolean} [reveal] open the timeline when it is hidden
 */
async function showTimeline(runId, reveal = false) {
  state.shownRun = runId;
  if (reveal) setTimelineOpen(true);
  const run = runId === null ? undefined : state.runs.get(runId);
  if (runId === null) {
    replaceChildren(page.timelineBody, h('p', { class: 'hint' }, 'Each step of a run shows here as it happens.'));
    return;
  }
  if (run !== undefined) {
    replaceChildren(page.timelineBody, run.element);
    return;
  }
  replaceChildren(page.timelineBody, h('p', { class: 'hint' }, 'Loading the run…'));
  try {
    const record = await state.session?.request('GET', `/api/runs/${runId}`);
    if (state.shownRun !== runId || state.runs.has(runId)) {
      if (state.shownRun === runId) showTimeline(runId);
      return;
    }
    replaceChildren(page.timelineBody, Run.fromRecord(record).element);
  } catch (error) {
    if (state.shownRun === runId) replaceChildren(page.timelineBody, h('p', { class: 'error-text' }, `The run could not be loaded: ${messageOf(error)}`));
  }
}

const TIMELINE_KEY = 'switchboard.timeline';

/** @param {boolean} open */
function setTimelineOpen(open) {
  page.timelineToggle.setAttribute('aria-expanded', String(open));
  page.timelineToggle.textContent = open ? 'Hide timeline' : 'Show timeline';
  page.timelineBody.hidden = !open;
  page.timeline.classList.toggle('collapsed', !open);
  page.signedIn.classList.toggle('timeline-collapsed', !open);
  localStorage.setItem(TIMELINE_KEY, open ? 'open' : 'closed');
}

page.timelineToggle.addEventListener('click', () => {
  setTimelineOpen(page.timelineToggle.getAttribute('aria-expanded') !== 'true');
});

// ---------------------------------------------------------------------------------------------
// Usage data.

/** @param {File} file */
async function uploadFile(file) {
  const session = state.session;
  if (session === null) return;
  replaceChildren(page.refusedRows);
  page.refusedRows.hidden = true;
  page.uploadStatus.textContent = `Reading ${file.name}…`;
  let rows;
  try {
    rows = await readRows(file);
  } catch (error) {
    page.uploadStatus.textContent = error instanceof UnreadableFile ? error.message : `${file.name} cannot be read: ${messageOf(error)}`;
    return;
  }
  if (rows.length === 0) {
    page.uploadStatus.textContent = `${file.name} holds no calls.`;
    return;
  }
  page.uploadProgress.hidden = false;
  page.uploadProgress.value = 0;
  page.uploadFile.disabled = true;
  page.uploadStatus.textContent = `Uploading ${count(rows.length)} calls from ${file.name}…`;
  try {
    const outcome = await upload(session, rows, (done) => {
      page.uploadProgress.value = Math.round((done / rows.length) * 100);
    });
    if (outcome.message === null) {
      page.uploadProgress.value = 100;
      page.uploadStatus.textContent = `Stored ${count(outcome.stored)} calls from ${file.name}.`;
    } else {
      page.uploadStatus.textContent = outcome.message;
      if (outcome.refused.length > 0) {
        page.refusedRows.hidden = false;
        replaceChildren(page.refusedRows, outcome.refused.slice(0, 200).map((row) => h('li', {}, `Line ${row.line}: ${row.error}`)));
        if (outcome.refused.length > 200) page.refusedRows.append(h('li', {}, `… and ${count(outcome.refused.length - 200)} more.`));
      }
    }
  } finally {
    page.uploadFile.disabled = false;
    page.uploadFile.value = '';
  }
}

page.uploadFile.addEventListener('change', () => {
  const file = page.uploadFile.files?.[0];
  if (file) uploadFile(file);
});

page.demoData.addEventListener('click', async () => {
  if (state.session === null) return;
  page.demoData.disabled = true;
  page.uploadStatus.textContent = 'Making a month of demo data…';
  try {
    const answer = await state.session.request('POST', '/api/dev/demo-data', { json: {} });
    page.uploadStatus.textContent = `Stored ${count(Number(answer?.accepted ?? 0))} calls of demo data. Ask a question about them.`;
  } catch (error) {
    page.uploadStatus.textContent = `The demo data could not be stored: ${messageOf(error)}`;
  } finally {
    page.demoData.disabled = false;
  }
});

let dragDepth = 0;
window.addEventListener('dragenter', (event) => {
  if (state.session === null || !event.dataTransfer?.types.includes('Files')) return;
  dragDepth += 1;
  page.dropZone.hidden = false;
});
window.addEventListener('dragleave', () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) page.dropZone.hidden = true;
});
window.addEventListener('dragover', (event) => {
  if (state.session !== null) event.preventDefault();
});
window.addEventListener('drop', (event) => {
  event.preventDefault();
  dragDepth = 0;
  page.dropZone.hidden = true;
  const file = event.dataTransfer?.files?.[0];
  if (file && state.session !== null) uploadFile(file);
});

// ---------------------------------------------------------------------------------------------

/** @param {unknown} error */
function messageOf(error) {
  return error instanceof Error ? error.message : String(error);
}

async function main() {
  const narrow = window.matchMedia('(max-width: 900px)').matches;
  const kept = localStorage.getItem(TIMELINE_KEY);
  setTimelineOpen(kept === null ? !narrow : kept === 'open');
  state.info = await serverInfo();
  page.devSignIn.hidden = !state.info.dev;
  const session = Session.restore(signedOut);
  state.booted = true;
  if (session === null) {
    showScreen();
    page.email.focus();
  } else {
    startSession(session);
  }
}

main();
