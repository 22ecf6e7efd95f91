// A fake OpenAI-compatible chat-completions server, for the browser tests: the Switchboard server
// is started with `--llm-base-url <this>/v1 --llm-model gpt-4o-mini` and asks it instead of a real
// model.
//
// What the server sends (crates/llm/src/lib.rs): `POST {base}/chat/completions` with
// `{"model","messages":[{"role","content"}],"stream":bool, "max_tokens"?, "temperature"?,
// "response_format"?: {"type":"json_object"}, "stream_options"?: {"include_usage":true}}`.
// - The triage agent classifies with a whole (not streamed) call whose system message starts
//   "Classify the user's request" and which asks for a JSON object: it is answered
//   `{"category": …}` (crates/agents/src/triage.rs).
// - The reporting agent streams the answer (`"stream": true`): it is answered as server-sent
//   events, one `data:` chunk per piece (`choices[0].delta.content`), then a chunk with
//   `finish_reason: "stop"`, one with `usage`, and `data: [DONE]` (crates/llm/src/sse.rs).
// - Any other whole call gets the scripted answer as one `choices[0].message.content`.

import http from 'node:http';

/**
 * @typedef {object} FakeLlmOptions
 * @property {string} [answer] the text every answer call gets (Markdown)
 * @property {string} [category] the triage classification (`cost`, `performance`, …)
 * @property {number} [chunkDelayMs] pause before each streamed piece (0: all at once)
 * @property {number} [wordsPerChunk] words per streamed piece
 */

/**
 * @typedef {object} FakeLlm
 * @property {string} baseUrl the API's root, to pass as `--llm-base-url` (ends with `/v1`)
 * @property {string} model the model name to pass as `--llm-model`
 * @property {Array<{path: string, body: any}>} requests every request received, in order
 * @property {(answer: string) => void} setAnswer changes the scripted answer for later calls
 * @property {() => number} sent how many pieces of streamed answers it has sent so far (to wait
 *   until the model has written more while the page is cut off, say)
 * @property {() => Promise<void>} close stops the server
 */

/** The answer when none is given: plain words, so its rendered text equals its Markdown. */
export const DEFAULT_ANSWER =
  'Route short calls to a cheaper model of the same provider, cache the prompts you repeat, ' +
  'and move the nightly bulk job to a batch API. Together these cut the bill by about a third.';

/**
 * A long answer of plain words (no Markdown), for the tests that watch one stream: at 80 to
 * 150 ms a word (`chunkDelayMs`) it lasts long enough to reload, stop, join or kill a node
 * part-way, and each sentence starts with a word found once ("Alpha" … "Foxtrot").
 */
export const LONG_ANSWER =
  'Alpha one: route the short search calls to gpt-4o-mini. Bravo two: cache the fifty prompts ' +
  'that repeat every hour. Charlie three: send the nightly report through the batch API at half ' +
  'the price. Delta four: trim the system prompt of the chat feature to its first paragraph. ' +
  'Echo five: fix the failing calls of the summaries feature. Foxtrot six: that is the plan.';

/**
 * Cuts a text into pieces of `words` words each, keeping every character (spaces and line
 * breaks stay with the word before them), so that the pieces add up to the text exactly.
 * @param {string} text
 * @param {number} words
 * @returns {string[]}
 */
export function pieces(text, words) {
  const tokens = text.match(/\S+\s*|\s+/g) ?? [];
  /** @type {string[]} */
  const out = [];
  for (let i = 0; i < tokens.length; i += words) {
    out.push(tokens.slice(i, i + words).join(''));
  }
  return out;
}

/**
 * A rough token count, for `usage`.
 * @param {string} text
 */
function tokens(text) {
  return Math.max(1, Math.ceil(text.length / 4));
}

/**
 * @param {any} body
 * @returns {boolean}
 */
function isClassification(body) {
  const system = (body?.messages ?? []).find((/** @type {any} */ m) => m?.role === 'system');
  return (
    body?.response_format?.type === 'json_object' ||
    (typeof system?.content === 'string' && system.content.startsWith('Classify'))
  );
}

/**
 * Starts the fake model on 127.0.0.1 at a free port.
 * @param {FakeLlmOptions} [options]
 * @returns {Promise<FakeLlm>}
 */
export async function startFakeLlm(options = {}) {
  let answer = options.answer ?? DEFAULT_ANSWER;
  const category = options.category ?? 'cost';
  const chunkDelayMs = options.chunkDelayMs ?? 0;
  const wordsPerChunk = options.wordsPerChunk ?? 1;
  const model = 'gpt-4o-mini';
  /** @type {Array<{path: string, body: any}>} */
  const requests = [];
  /** @type {Set<import('node:net').Socket>} */
  const sockets = new Set();
  let sentPieces = 0;

  const server = http.createServer((req, res) => {
    /** @type {Buffer[]} */
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch {
        body = null;
      }
      requests.push({ path: req.url ?? '', body });
      if (req.method !== 'POST' || !(req.url ?? '').endsWith('/chat/completions') || !body) {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: `no such route: ${req.method} ${req.url}`, type: 'not_found' } }));
        return;
      }
      const prompt = JSON.stringify(body.messages ?? []);
      const text = isClassification(body) ? JSON.stringify({ category }) : answer;
      const usage = { prompt_tokens: tokens(prompt), completion_tokens: tokens(text), total_tokens: 0 };
      usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
      if (!body.stream) {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({
            id: 'chatcmpl-fake',
            object: 'chat.completion',
            model,
            choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: 'stop' }],
            usage,
          }),
        );
        return;
      }
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      /** @param {any} value */
      const send = (value) => res.write(`data: ${JSON.stringify(value)}\n\n`);
      const chunk = (/** @type {any} */ delta, /** @type {string | null} */ finish) => ({
        id: 'chatcmpl-fake',
        object: 'chat.completion.chunk',
        model,
        choices: [{ index: 0, delta, finish_reason: finish }],
      });
      send(chunk({ role: 'assistant', content: '' }, null));
      const queue = pieces(text, wordsPerChunk);
      /** @type {NodeJS.Timeout | undefined} */
      let timer;
      let closed = false;
      res.on('close', () => {
        closed = true;
        if (timer) clearTimeout(timer);
      });
      const next = () => {
        if (closed) return;
        const piece = queue.shift();
        if (piece === undefined) {
          send(chunk({}, 'stop'));
          send({ id: 'chatcmpl-fake', object: 'chat.completion.chunk', model, choices: [], usage });
          res.end('data: [DONE]\n\n');
          return;
        }
        send(chunk({ content: piece }, null));
        sentPieces += 1;
        if (chunkDelayMs > 0) timer = setTimeout(next, chunkDelayMs);
        else setImmediate(next);
      };
      if (chunkDelayMs > 0) timer = setTimeout(next, chunkDelayMs);
      else next();
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(undefined));
  });
  const address = /** @type {import('node:net').AddressInfo} */ (server.address());
  return {
    baseUrl: `http://127.0.0.1:${address.port}/v1`,
    model,
    requests,
    setAnswer(text) {
      answer = text;
    },
    sent: () => sentPieces,
    close() {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
