// The browser tests' harness: the real server binary on a free port with a fresh data dir, a
// headless Chromium (Debian's, driven by playwright-core), and helpers that read like a person's
// steps. Tests wait for what the page shows, never for a fixed time.

import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test, after } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export { startFakeLlm, DEFAULT_ANSWER, LONG_ANSWER } from './fake-llm.mjs';

/** The repository's root. */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const TARGET = process.env.CARGO_TARGET_DIR ? path.resolve(ROOT, process.env.CARGO_TARGET_DIR) : path.join(ROOT, 'target');
/** The server binary (debug profile, as the rest of the suite uses). */
export const BINARY = process.env.SWITCHBOARD_BIN ?? path.join(TARGET, 'debug', 'switchboard');
/** The fault proxy (crates/faultproxy), which scripts/test-web builds with the server. */
export const FAULTPROXY = process.env.SWITCHBOARD_FAULTPROXY_BIN ?? path.join(TARGET, 'debug', 'switchboard-faultproxy');
/** Where screenshots go: on failure, and the viewport test's, for a person to look at. */
export const SCREENSHOTS = path.join(TARGET, 'web-screenshots');
/** The browser: Debian's `chromium` package, never a download. */
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/** How long a step may take before the test says what it waited for. */
export const STEP_TIMEOUT = 20_000;
/** The longest a whole test may take. */
export const TEST_TIMEOUT = 120_000;

/** The dev user's email (crates/server/src/api.rs, `DEV_EMAIL`). */
export const DEV_EMAIL = 'dev@switchboard.local';

// ---------------------------------------------------------------------------------------------
// Waiting

/**
 * Polls `probe` until it returns something truthy, then returns that. On time-out, fails with
 * what was awaited and what `probe` last saw (the value of `seen()`, or its last error).
 * @template T
 * @param {string} what what the test waits for, as a person would say it
 * @param {() => Promise<T> | T} probe
 * @param {{timeout?: number, seen?: () => Promise<string> | string}} [options]
 * @returns {Promise<Exclude<T, false | null | undefined | 0 | ''>>}
 */
export async function waitFor(what, probe, options = {}) {
  const timeout = options.timeout ?? STEP_TIMEOUT;
  const deadline = Date.now() + timeout;
  let delay = 20;
  /** @type {unknown} */
  let lastError;
  for (;;) {
    try {
      const value = await probe();
      if (value) return /** @type {Exclude<T, false | null | undefined | 0 | ''>} */ (value);
      lastError = undefined;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() >= deadline) {
      let seen = '';
      try {
        if (options.seen) seen = `\n  the page showed: ${await options.seen()}`;
      } catch (error) {
        seen = `\n  (could not read what the page showed: ${errorText(error)})`;
      }
      const cause = lastError ? `\n  last error: ${errorText(lastError)}` : '';
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${seen}${cause}`);
    }
    // Polling, not sleeping for the answer: the interval grows from 20 to 200 ms.
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 200);
  }
}

/** @param {unknown} error */
function errorText(error) {
  return error instanceof Error ? error.message.split('\n')[0] : String(error);
}

/**
 * The visible text of a locator's first element ('' when there is none).
 * @param {import('playwright-core').Locator} locator
 */
export async function textOf(locator) {
  if ((await locator.count()) === 0) return '<absent>';
  return (await locator.first().innerText({ timeout: 2_000 })).trim();
}

/**
 * Waits until the locator's text matches (a RegExp, or a string it must contain).
 * @param {import('playwright-core').Locator} locator
 * @param {RegExp | string} expected
 * @param {string} what
 * @param {{timeout?: number}} [options]
 * @returns {Promise<string>} the text
 */
export async function waitForText(locator, expected, what, options = {}) {
  const matches = (/** @type {string} */ text) =>
    typeof expected === 'string' ? text.includes(expected) : expected.test(text);
  const text = await waitFor(
    `${what} to read ${expected}`,
    async () => {
      if ((await locator.count()) === 0) return false;
      const text = (await locator.first().innerText({ timeout: 2_000 })).trim();
      return matches(text) ? text || ' ' : '';
    },
    { ...options, seen: () => textOf(locator) },
  );
  return String(text);
}

/**
 * Waits until the locator is visible.
 * @param {import('playwright-core').Locator} locator
 * @param {string} what
 * @param {{timeout?: number}} [options]
 */
export async function waitVisible(locator, what, options = {}) {
  try {
    await locator.first().waitFor({ state: 'visible', timeout: options.timeout ?? STEP_TIMEOUT });
  } catch (error) {
    throw new Error(`${what} did not appear: ${errorText(error)}`);
  }
}

/**
 * Waits until no element of the locator is visible.
 * @param {import('playwright-core').Locator} locator
 * @param {string} what
 * @param {{timeout?: number}} [options]
 */
export async function waitGone(locator, what, options = {}) {
  await waitFor(
    `${what} to go away`,
    async () => {
      const n = await locator.count();
      for (let i = 0; i < n; i++) if (await locator.nth(i).isVisible()) return false;
      return true;
    },
    { ...options, seen: async () => `${await locator.count()} such element(s)` },
  );
}

// ---------------------------------------------------------------------------------------------
// The server

/**
 * @typedef {object} Server
 * @property {string} url e.g. `http://127.0.0.1:40123`
 * @property {number} port
 * @property {string} dataDir
 * @property {number} pid
 * @property {string[]} args the flags it was started with (after `serve`)
 * @property {() => string} log its log so far
 * @property {() => Promise<void>} stop SIGTERM, then SIGKILL if it does not exit in 15 s
 * @property {() => Promise<void>} kill SIGKILL (as a crash)
 * @property {() => Promise<Server>} restart a new process on the same port and data dir
 */

/** @type {Set<Server>} */
const running = new Set();

/**
 * Starts `switchboard serve --dev` on 127.0.0.1 (port 0 unless given) with a fresh data dir,
 * and waits for its `listening on` log line.
 * @param {{args?: string[], port?: number, dataDir?: string, env?: Record<string, string>}} [options]
 * @returns {Promise<Server>}
 */
export async function startServer(options = {}) {
  if (!fs.existsSync(BINARY)) {
    throw new Error(`the server binary ${BINARY} is missing: run \`cargo build -p switchboard --bin switchboard\` (scripts/test-web does)`);
  }
  const dataDir = options.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'switchboard-web-'));
  const args = options.args ?? [];
  const port = options.port ?? 0;
  /** @type {NodeJS.ProcessEnv} */
  const env = { ...process.env, SWITCHBOARD_LOG: 'info', NO_COLOR: '1', ...(options.env ?? {}) };
  delete env.RUST_LOG;
  for (const key of Object.keys(env)) {
    // Settings from the developer's shell must not change what the tests see.
    if (key.startsWith('SWITCHBOARD_') && key !== 'SWITCHBOARD_LOG' && key !== 'SWITCHBOARD_BIN' && !(options.env && key in options.env)) {
      delete env[key];
    }
  }
  const argv = [
    'serve',
    '--dev',
    '--listen',
    `127.0.0.1:${port}`,
    '--data-dir',
    dataDir,
    '--shutdown-grace-ms',
    '1000',
    ...args,
  ];
  const child = spawn(BINARY, argv, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const append = (/** @type {Buffer} */ chunk) => {
    // eslint-disable-next-line no-control-regex
    log += chunk.toString('utf8').replace(/\x1b\[[0-9;]*m/g, '');
    if (log.length > 200_000) log = log.slice(-100_000);
  };
  child.stdout.on('data', append);
  child.stderr.on('data', append);
  /** @type {Promise<number | null>} */
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? (signal ? -1 : null))));
  let hasExited = false;
  exited.then(() => {
    hasExited = true;
  });

  const address = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      child.kill('SIGKILL');
      reject(new Error(`the server did not log "listening on" within 30 s; its log:\n${log}`));
    }, 30_000);
    const onData = () => {
      const match = /listening on (\d+\.\d+\.\d+\.\d+:\d+)/.exec(log);
      if (match) {
        cleanup();
        resolve(match[1]);
      }
    };
    const onExit = (/** @type {number | null} */ code) => {
      cleanup();
      reject(new Error(`the server exited (${code}) before listening: ${BINARY} ${argv.join(' ')}\nits log:\n${log}`));
    };
    const cleanup = () => {
      clearTimeout(timer);
      child.stderr.off('data', onData);
      child.stdout.off('data', onData);
      child.off('exit', onExit);
    };
    child.stderr.on('data', onData);
    child.stdout.on('data', onData);
    child.once('exit', onExit);
  });

  /** Whether the process exited within `ms`. */
  const waitExit = async (/** @type {number} */ ms) => {
    /** @type {NodeJS.Timeout | undefined} */
    let timer;
    const late = new Promise((resolve) => {
      timer = setTimeout(() => resolve(false), ms);
    });
    try {
      return await Promise.race([exited.then(() => true), late]);
    } finally {
      clearTimeout(timer);
    }
  };

  /** @type {Server} */
  const server = {
    url: `http://${address}`,
    port: Number(String(address).split(':')[1]),
    dataDir,
    pid: /** @type {number} */ (child.pid),
    args,
    log: () => log,
    async stop() {
      running.delete(server);
      if (hasExited) return;
      child.kill('SIGTERM');
      if (!(await waitExit(15_000))) {
        child.kill('SIGKILL');
        await exited;
      }
    },
    async kill() {
      running.delete(server);
      if (hasExited) return;
      child.kill('SIGKILL');
      await exited;
    },
    restart: () => startServer({ ...options, port: server.port, dataDir }),
  };
  running.add(server);
  return server;
}

process.on('exit', () => {
  // A test that threw before its clean-up: stop what it started, by PID.
  for (const pid of [...[...running].map((server) => server.pid), ...proxies]) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

// ---------------------------------------------------------------------------------------------
// PostgreSQL behind a fault proxy

/**
 * The admin URL of the throw-away PostgreSQL that scripts/test starts
 * (`SWITCHBOARD_TEST_POSTGRES_URL`); without it the test fails, saying how to run it.
 */
export function postgresAdminUrl() {
  const url = process.env.SWITCHBOARD_TEST_POSTGRES_URL;
  if (!url) {
    throw new Error(
      'SWITCHBOARD_TEST_POSTGRES_URL is not set, so this test has no PostgreSQL to stall: run the browser tests through ' +
        'scripts/test (it starts a throw-away PostgreSQL and exports it), or start one yourself: ' +
        '`scripts/tiers start --postgres DIR; set -a; . DIR/env; set +a; scripts/test-web`',
    );
  }
  return url;
}

/**
 * Runs one SQL statement with psql; returns its unaligned output.
 * @param {string} url
 * @param {string} sql
 * @param {string[]} [flags]
 * @returns {Promise<string>}
 */
function psql(url, sql, flags = []) {
  return new Promise((resolve, reject) => {
    execFile('psql', [url, '-v', 'ON_ERROR_STOP=1', ...flags, '-qAtc', sql], { timeout: 30_000, maxBuffer: 64 << 20 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`psql ${JSON.stringify(sql)} failed (${errorText(error)}): ${String(stderr).trim()}`));
      else resolve(String(stdout));
    });
  });
}

let databases = 0;

/**
 * Creates a fresh database on the admin URL's server; returns its name.
 * @param {string} adminUrl
 */
export async function createDatabase(adminUrl) {
  databases += 1;
  const name = `switchboard_web_${process.pid}_${databases}_${Math.random().toString(36).slice(2, 8)}`;
  await psql(adminUrl, `CREATE DATABASE ${name}`);
  return name;
}

/**
 * Drops a database made by `createDatabase` (connections to it are ended).
 * @param {string} adminUrl
 * @param {string} name
 */
export async function dropDatabase(adminUrl, name) {
  await psql(adminUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
}

/**
 * The rows of a query on a database of the test PostgreSQL (straight, not through the proxy),
 * each as its columns' texts.
 * @param {string} adminUrl
 * @param {string} database
 * @param {string} sql
 * @returns {Promise<string[][]>}
 */
export async function queryDatabase(adminUrl, database, sql) {
  const url = new URL(adminUrl);
  url.pathname = `/${database}`;
  const out = await psql(url.toString(), sql, ['-F', '\t']);
  return out.split('\n').filter((line) => line !== '').map((line) => line.split('\t'));
}

/**
 * @typedef {object} FaultProxy
 * @property {string} address where it listens (`127.0.0.1:PORT`)
 * @property {(command: 'none' | 'stall' | 'refuse' | 'cut' | `latency ${number}`) => Promise<string>} set
 *   gives it a command and waits for its `ok` line
 * @property {() => Promise<void>} stop `quit`, then SIGKILL if it does not exit in 5 s
 */

/** @type {Set<number>} the PIDs of the fault proxies still running */
const proxies = new Set();

/**
 * Starts `switchboard-faultproxy --listen 127.0.0.1:0 --upstream <upstream>` and waits for the
 * address it prints.
 * @param {string} upstream `HOST:PORT`
 * @returns {Promise<FaultProxy>}
 */
export async function startFaultProxy(upstream) {
  if (!fs.existsSync(FAULTPROXY)) {
    throw new Error(`the fault proxy ${FAULTPROXY} is missing: run \`cargo build -p switchboard-faultproxy\` (scripts/test-web does)`);
  }
  const child = spawn(FAULTPROXY, ['--listen', '127.0.0.1:0', '--upstream', upstream], { stdio: ['pipe', 'pipe', 'pipe'] });
  const pid = /** @type {number} */ (child.pid);
  proxies.add(pid);
  let errors = '';
  /** @type {string[]} lines of standard output not yet taken */
  const lines = [];
  /** @type {Array<(line: string | null) => void>} */
  const waiting = [];
  let buffer = '';
  let ended = false;
  const give = (/** @type {string | null} */ line) => {
    const next = waiting.shift();
    if (next) next(line);
    else if (line !== null) lines.push(line);
  };
  child.stdout.on('data', (/** @type {Buffer} */ chunk) => {
    buffer += chunk.toString('utf8');
    let at;
    while ((at = buffer.indexOf('\n')) >= 0) {
      give(buffer.slice(0, at).trim());
      buffer = buffer.slice(at + 1);
    }
  });
  child.stderr.on('data', (/** @type {Buffer} */ chunk) => {
    errors += chunk.toString('utf8');
  });
  /** @type {Promise<void>} */
  const exited = new Promise((resolve) =>
    child.once('exit', () => {
      ended = true;
      proxies.delete(pid);
      while (waiting.length) give(null);
      resolve();
    }),
  );
  /** The next line of its output, or null once it exited. */
  const nextLine = (/** @type {number} */ ms) =>
    new Promise((resolve, reject) => {
      if (lines.length) return resolve(/** @type {string} */ (lines.shift()));
      if (ended) return resolve(null);
      const timer = setTimeout(() => reject(new Error(`the fault proxy said nothing within ${ms} ms; its errors: ${errors.trim() || '(none)'}`)), ms);
      waiting.push((line) => {
        clearTimeout(timer);
        resolve(line);
      });
    });
  const first = await nextLine(10_000);
  const match = /^(\d+\.\d+\.\d+\.\d+:\d+)$/.exec(first ?? '');
  if (!match) {
    child.kill('SIGKILL');
    throw new Error(`the fault proxy did not print its address (it said ${JSON.stringify(first)}; errors: ${errors.trim() || '(none)'})`);
  }
  /** One command at a time: each waits for the answer of the one before. */
  let queue = Promise.resolve('');
  return {
    address: match[1],
    set(command) {
      const done = queue.then(async () => {
        if (ended) throw new Error(`the fault proxy has exited; cannot \`${command}\` (errors: ${errors.trim() || '(none)'})`);
        child.stdin.write(`${command}\n`);
        const line = await nextLine(10_000);
        if (line === null || !line.startsWith('ok')) {
          throw new Error(`the fault proxy answered \`${command}\` with ${JSON.stringify(line)}; errors: ${errors.trim() || '(none)'}`);
        }
        return line;
      });
      queue = done.catch(() => '');
      return done;
    },
    async stop() {
      if (ended) return;
      child.stdin.end('quit\n');
      const late = new Promise((resolve) => setTimeout(() => resolve('late'), 5_000));
      if ((await Promise.race([exited.then(() => 'gone'), late])) === 'late') {
        child.kill('SIGKILL');
        await exited;
      }
    },
  };
}

/**
 * @typedef {object} Postgres
 * @property {string} adminUrl `SWITCHBOARD_TEST_POSTGRES_URL`
 * @property {string} database the fresh database of the test
 * @property {string} url the server's `--database-url`: that database, through the proxy
 * @property {FaultProxy} proxy between the server and PostgreSQL
 */

/**
 * A fresh database on the test PostgreSQL, and a fault proxy in front of it.
 * @returns {Promise<Postgres & {close: (keep?: boolean) => Promise<void>}>} `close(true)` stops
 *   the proxy but keeps the database
 */
export async function startPostgres() {
  const adminUrl = postgresAdminUrl();
  const admin = new URL(adminUrl);
  const upstream = `${admin.hostname}:${admin.port || '5432'}`;
  const database = await createDatabase(adminUrl);
  let proxy;
  try {
    proxy = await startFaultProxy(upstream);
  } catch (error) {
    await dropDatabase(adminUrl, database).catch(() => {});
    throw error;
  }
  const through = new URL(adminUrl);
  through.host = proxy.address;
  through.pathname = `/${database}`;
  const started = proxy;
  return {
    adminUrl,
    database,
    url: through.toString(),
    proxy,
    async close(keep = false) {
      await started.stop();
      if (!keep) await dropDatabase(adminUrl, database);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Several nodes behind a load balancer

/**
 * The URL of the throw-away Redis that scripts/test starts (`SWITCHBOARD_TEST_REDIS_URL`), for
 * the tests of several nodes; without it the test fails, saying how to run it.
 */
export function redisUrl() {
  const url = process.env.SWITCHBOARD_TEST_REDIS_URL;
  if (!url) {
    throw new Error(
      'SWITCHBOARD_TEST_REDIS_URL is not set, so these nodes have no Redis to share: run the browser tests through ' +
        'scripts/test (it starts a throw-away PostgreSQL and Redis and exports them), or start them yourself: ' +
        '`scripts/tiers start --postgres --redis DIR; set -a; . DIR/env; set +a; scripts/test-web`',
    );
  }
  return url;
}

/**
 * @typedef {object} Balanced one connection the balancer passed on
 * @property {Server} node the node it went to
 * @property {boolean} websocket whether its first request asked for a WebSocket upgrade
 * @property {boolean} open whether it is still open
 */

/**
 * @typedef {object} Balancer
 * @property {string} url e.g. `http://127.0.0.1:40123`
 * @property {Balanced[]} connections every connection it passed on, in the order they came
 * @property {() => Balanced[]} openSockets the WebSocket connections still open, oldest first
 * @property {(node: Server | undefined) => void} pin sends every new WebSocket to `node` first
 *   (then, if it refuses, on in turn), or, with `undefined`, in turn again
 * @property {() => Promise<void>} stop closes it and every connection through it
 */

/**
 * A load balancer in front of `nodes`, as a deployment puts one, without sticky sessions: each
 * new TCP connection goes to the next node in turn, WebSocket upgrades and other HTTP
 * connections each in a turn of their own (so two sockets opened one after the other land on
 * two nodes), past a node that refuses connections (as a balancer's health check would take it
 * out). It reads a connection's first request head to tell which it is, then passes bytes on
 * both ways untouched; one side's end is passed on to the other once what it sent has been
 * written (a reset resets both).
 * @param {Server[]} nodes
 * @returns {Promise<Balancer>}
 */
export async function startBalancer(nodes) {
  /** @type {Record<'websocket' | 'http', number>} */
  const turns = { websocket: 0, http: 0 };
  /** @type {Balanced[]} */
  const connections = [];
  /** @type {Set<net.Socket>} */
  const sockets = new Set();
  /** @type {Server | undefined} */
  let pinned;
  const track = (/** @type {net.Socket} */ socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    // A reset from either side ends both (below); it is not the test's failure.
    socket.on('error', () => socket.destroy());
  };
  const listener = net.createServer((client) => {
    track(client);
    let head = Buffer.alloc(0);
    const onData = (/** @type {Buffer} */ chunk) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0 && head.length < 64 * 1024) return;
      client.pause();
      client.off('data', onData);
      const headers = head.subarray(0, end < 0 ? head.length : end).toString('latin1');
      const kind = /^upgrade:[ \t]*websocket[ \t]*$/im.test(headers) ? 'websocket' : 'http';
      const pass = (/** @type {number} */ tried) => {
        if (tried === nodes.length || client.destroyed) {
          client.destroy();
          return;
        }
        const node = kind === 'websocket' && pinned && tried === 0 ? pinned : nodes[turns[kind]++ % nodes.length];
        const upstream = net.connect(node.port, '127.0.0.1');
        upstream.once('error', () => pass(tried + 1));
        upstream.once('connect', () => {
          upstream.removeAllListeners('error');
          track(upstream);
          if (client.destroyed) {
            // The browser gave up while this connected.
            upstream.destroy();
            return;
          }
          /** @type {Balanced} */
          const connection = { node, websocket: kind === 'websocket', open: true };
          connections.push(connection);
          const closed = (/** @type {net.Socket} */ other) => (/** @type {boolean} */ hadError) => {
            connection.open = false;
            if (hadError) other.destroy();
            else other.end();
          };
          client.once('close', closed(upstream));
          upstream.once('close', closed(client));
          upstream.write(head);
          client.pipe(upstream);
          upstream.pipe(client);
        });
      };
      pass(0);
    };
    client.on('data', onData);
  });
  await new Promise((resolve, reject) => {
    listener.once('error', reject);
    listener.listen(0, '127.0.0.1', () => resolve(undefined));
  });
  // An accept that fails (too many open files, say) fails that connection only.
  listener.on('error', (error) => process.stderr.write(`the test's load balancer: ${errorText(error)}\n`));
  const { port } = /** @type {net.AddressInfo} */ (listener.address());
  return {
    url: `http://127.0.0.1:${port}`,
    connections,
    openSockets: () => connections.filter((c) => c.websocket && c.open),
    pin(node) {
      pinned = node;
    },
    async stop() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => listener.close(() => resolve(undefined)));
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The REST API, from the test (with a token of the same user as the page)

/**
 * Calls the server's REST API; fails on a non-2xx answer unless `expect` is given.
 * @param {Server} server
 * @param {string} method
 * @param {string} route e.g. `/api/threads`
 * @param {{token?: string, body?: any, expect?: number}} [options]
 * @returns {Promise<any>}
 */
export async function api(server, method, route, options = {}) {
  /** @type {Record<string, string>} */
  const headers = {};
  if (options.token) headers.authorization = `Bearer ${options.token}`;
  if (options.body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(server.url + route, {
    method,
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  const text = await response.text();
  const status = response.status;
  if (options.expect !== undefined ? status !== options.expect : status < 200 || status > 299) {
    throw new Error(`${method} ${route} answered ${status}: ${text}`);
  }
  return text ? JSON.parse(text) : null;
}

/**
 * An access token of a user: the dev user (dev-login) unless an email and password are given.
 * @param {Server} server
 * @param {{email?: string, password?: string}} [who]
 * @returns {Promise<string>}
 */
export async function tokenOf(server, who = {}) {
  if (who.password) {
    const pair = await api(server, 'POST', '/api/auth/login', { body: { email: who.email, password: who.password } });
    return pair.access_token;
  }
  const pair = await api(server, 'POST', '/api/auth/dev-login', { body: who.email ? { email: who.email } : undefined });
  return pair.access_token;
}

/**
 * The user's threads, newest first, as the server has them.
 * @param {Server} server
 * @param {string} token
 * @returns {Promise<Array<{id: string, title: string | null}>>}
 */
export async function threadsOf(server, token) {
  return (await api(server, 'GET', '/api/threads', { token })).threads;
}

/**
 * The stored messages of a thread.
 * @param {Server} server
 * @param {string} token
 * @param {string} threadId
 * @returns {Promise<Array<{id: string, role: string, text: string, run_id: string | null}>>}
 */
export async function messagesOf(server, token, threadId) {
  return (await api(server, 'GET', `/api/threads/${threadId}/messages`, { token })).messages;
}

// ---------------------------------------------------------------------------------------------
// The browser and the test wrapper

/** @type {Promise<import('playwright-core').Browser> | undefined} */
let browserPromise;

/** The file's one browser, launched at first use and closed after the file's tests. */
export function browser() {
  if (!browserPromise) {
    if (!fs.existsSync(CHROMIUM)) {
      throw new Error(`${CHROMIUM} is missing: \`apt-get install -y chromium\` (scripts/test-web does)`);
    }
    browserPromise = chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
    });
  }
  return browserPromise;
}

after(async () => {
  if (browserPromise) await (await browserPromise).close();
});

/**
 * @typedef {object} Session
 * @property {Server} server
 * @property {Server[]} nodes every server of the test's cluster (`[server]` unless `nodes`), in node order
 * @property {Balancer | undefined} balancer the load balancer in front of them (with `nodes`), where the pages go
 * @property {import('playwright-core').BrowserContext} context
 * @property {import('playwright-core').Page} page
 * @property {(options?: {viewport?: {width: number, height: number}}) => Promise<import('playwright-core').BrowserContext>} newContext another browser profile (another person)
 * @property {(name: string, page?: import('playwright-core').Page) => Promise<string>} screenshot saves `target/web-screenshots/<name>.png`
 * @property {(options?: Parameters<typeof startServer>[0]) => Promise<Server>} startServer another server, stopped at the end
 * @property {string[]} problems errors the pages raised (uncaught exceptions, console errors)
 */

/**
 * @param {string} name
 */
export function fileName(name) {
  return name.replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 120);
}

/**
 * A browser test: a fresh server (with `server` options) and a fresh browser context with one
 * page, given to `body`; on failure, a screenshot of each open page goes to
 * `target/web-screenshots/<test name>[-N].png` and the failure says so, with the pages' errors
 * and the end of the server's log.
 * @param {string} name
 * `postgres`: the server's store is a fresh database on the test PostgreSQL
 * (`SWITCHBOARD_TEST_POSTGRES_URL`, which scripts/test exports; without it the test fails),
 * reached through a fault proxy (`session.postgres.proxy`), with a 500 ms deadline on each
 * query; the proxy is set back to `none` before the servers stop.
 * `nodes` (2 or more): that many servers on that database and the test Redis
 * (`SWITCHBOARD_TEST_REDIS_URL`), one JWT secret, `--node-id node-1`, `node-2`, …, behind a load
 * balancer without sticky sessions (`startBalancer`), where the pages go (`session.nodes`,
 * `session.balancer`; `session.server` is node-1).
 * @param {{server?: Parameters<typeof startServer>[0], viewport?: {width: number, height: number}, timeout?: number, llm?: import('./fake-llm.mjs').FakeLlmOptions, postgres?: boolean, nodes?: number}} options
 * @param {(session: Session & {llm?: import('./fake-llm.mjs').FakeLlm, postgres?: Postgres}) => Promise<void>} body
 */
export function webTest(name, options, body) {
  test(name, { timeout: options.timeout ?? TEST_TIMEOUT }, async () => {
    /** @type {Array<() => Promise<unknown>>} */
    const cleanups = [];
    /** @type {import('playwright-core').BrowserContext[]} */
    const contexts = [];
    /** @type {Server[]} */
    const servers = [];
    /** @type {string[]} */
    const problems = [];
    /** @type {FaultProxy | undefined} */
    let proxy;
    /** @type {(() => string) | undefined} */
    let postgresNote;
    let failed = false;
    try {
      /** @type {Postgres | undefined} */
      let postgres;
      let serverOptions = options.server ?? {};
      const nodeCount = options.nodes ?? 1;
      if (options.postgres || nodeCount > 1) {
        const started = await startPostgres();
        // A failed test's database is kept with WEB_TEST_KEEP_DATA=1, as its data dir is.
        cleanups.push(() => started.close(failed && Boolean(process.env.WEB_TEST_KEEP_DATA)));
        postgres = started;
        proxy = started.proxy;
        postgresNote = () =>
          `PostgreSQL database ${started.database} on ${started.adminUrl}${process.env.WEB_TEST_KEEP_DATA ? ', kept' : ', dropped; WEB_TEST_KEEP_DATA=1 keeps it'}`;
        serverOptions = {
          ...serverOptions,
          // The stall tests' short deadline; a cluster keeps the default.
          args: [...(serverOptions.args ?? []), '--database-url', started.url, ...(options.postgres ? ['--database-timeout-ms', '500'] : [])],
        };
      }
      /** @type {import('./fake-llm.mjs').FakeLlm | undefined} */
      let llm;
      if (options.llm) {
        const { startFakeLlm } = await import('./fake-llm.mjs');
        llm = await startFakeLlm(options.llm);
        cleanups.push(() => /** @type {any} */ (llm).close());
        serverOptions = {
          ...serverOptions,
          args: [...(serverOptions.args ?? []), '--llm-base-url', llm.baseUrl, '--llm-model', llm.model, '--llm-max-retries', '0'],
        };
      }
      const startOne = async (/** @type {Parameters<typeof startServer>[0]} */ o) => {
        const s = await startServer(o);
        servers.push(s);
        return s;
      };
      /** @type {Server[]} */
      const nodes = [];
      /** @type {Balancer | undefined} */
      let balancer;
      if (nodeCount > 1) {
        const shared = {
          ...serverOptions,
          args: [...(serverOptions.args ?? []), '--redis-url', redisUrl()],
          env: { ...(serverOptions.env ?? {}), SWITCHBOARD_JWT_SECRET: randomBytes(32).toString('hex') },
        };
        for (let n = 1; n <= nodeCount; n += 1) {
          nodes.push(await startOne({ ...shared, args: [...shared.args, '--node-id', `node-${n}`] }));
        }
        const started = await startBalancer(nodes);
        cleanups.push(() => started.stop());
        balancer = started;
      } else {
        nodes.push(await startOne(serverOptions));
      }
      const server = nodes[0];
      const b = await browser();
      const newContext = async (/** @type {{viewport?: {width: number, height: number}}} */ o = {}) => {
        const context = await b.newContext({
          baseURL: balancer?.url ?? server.url,
          viewport: o.viewport ?? options.viewport ?? { width: 1280, height: 860 },
          locale: 'en-US',
          timezoneId: 'UTC',
        });
        context.setDefaultTimeout(STEP_TIMEOUT);
        context.on('page', (p) => watch(p, problems));
        contexts.push(context);
        return context;
      };
      const context = await newContext();
      const page = await context.newPage();
      /** @type {Session & {llm?: import('./fake-llm.mjs').FakeLlm, postgres?: Postgres}} */
      const session = {
        server,
        nodes,
        balancer,
        context,
        page,
        llm,
        postgres,
        newContext,
        problems,
        startServer: startOne,
        async screenshot(shot, p = page) {
          await settled(p);
          fs.mkdirSync(SCREENSHOTS, { recursive: true });
          const file = path.join(SCREENSHOTS, `${fileName(shot)}.png`);
          await p.screenshot({ path: file, fullPage: true });
          return file;
        },
      };
      // Servers the body started later (restarts) are stopped too.
      const track = session.server.restart;
      session.server.restart = async () => {
        const s = await track();
        servers.push(s);
        return s;
      };
      await body(session);
    } catch (error) {
      failed = true;
      const notes = [];
      let index = 0;
      for (const context of contexts) {
        for (const p of context.pages()) {
          index += 1;
          try {
            fs.mkdirSync(SCREENSHOTS, { recursive: true });
            const file = path.join(SCREENSHOTS, `${fileName(name)}${index > 1 ? `-${index}` : ''}.png`);
            await p.screenshot({ path: file, fullPage: true, timeout: 5_000 });
            notes.push(`screenshot of page ${index} (${p.url()}): ${path.relative(ROOT, file)}`);
          } catch (shotError) {
            notes.push(`no screenshot of page ${index}: ${errorText(shotError)}`);
          }
        }
      }
      if (problems.length) notes.push(`the pages reported:\n    ${problems.slice(-15).join('\n    ')}`);
      if (postgresNote) notes.push(postgresNote());
      for (const s of servers) {
        const tail = s.log().trim().split('\n').slice(-12).join('\n    ');
        notes.push(`server ${s.url} (pid ${s.pid}, data ${s.dataDir}${process.env.WEB_TEST_KEEP_DATA ? ', kept' : ', removed; WEB_TEST_KEEP_DATA=1 keeps it'}) log, last lines:\n    ${tail}`);
      }
      const err = error instanceof Error ? error : new Error(String(error));
      // The reporter prints the stack, which holds the message as it was when thrown: make a
      // new error that says it all, with the original frames.
      const wrapped = new Error(`${err.message}\n  ${notes.join('\n  ')}`);
      const frames = (err.stack ?? '').split('\n').filter((line) => /^\s+at /.test(line));
      wrapped.stack = `${err.name}: ${wrapped.message}\n${frames.join('\n')}`;
      throw wrapped;
    } finally {
      for (const context of contexts) await context.close().catch(() => {});
      // A stalled store would hold up the servers' shutdown.
      if (proxy) await proxy.set('none').catch(() => {});
      for (const s of servers) await s.stop().catch(() => {});
      for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
      // A failed test's data dirs are kept with WEB_TEST_KEEP_DATA=1 (their paths are in the failure).
      if (!(failed && process.env.WEB_TEST_KEEP_DATA)) {
        for (const dir of new Set(servers.map((s) => s.dataDir))) fs.rmSync(dir, { recursive: true, force: true });
      }
    }
  });
}

/**
 * Collects a page's uncaught exceptions and console errors.
 * @param {import('playwright-core').Page} page
 * @param {string[]} problems
 */
function watch(page, problems) {
  page.on('pageerror', (error) => problems.push(`uncaught: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console.error: ${message.text()}`);
  });
  page.on('dialog', (dialog) => {
    // A native alert/confirm/prompt is not part of the app: note it and dismiss it.
    problems.push(`native ${dialog.type()}: ${dialog.message()}`);
    dialog.dismiss().catch(() => {});
  });
}

// ---------------------------------------------------------------------------------------------
// What a person sees

/** @param {import('playwright-core').Page} page */
export const signInForm = (page) => page.getByRole('form', { name: 'Sign in', exact: true });
/** @param {import('playwright-core').Page} page */
export const connection = (page) => page.getByRole('status', { name: 'Connection', exact: true });
/** @param {import('playwright-core').Page} page */
export const threadsNav = (page) => page.getByRole('navigation', { name: 'Threads', exact: true });
/** @param {import('playwright-core').Page} page */
export const messagesLog = (page) => page.getByRole('log', { name: 'Messages', exact: true });
/** @param {import('playwright-core').Page} page */
export const yourMessages = (page) => messagesLog(page).getByRole('article', { name: 'You', exact: true });
/** @param {import('playwright-core').Page} page */
export const answers = (page) => messagesLog(page).getByRole('article', { name: 'Switchboard', exact: true });
/** @param {import('playwright-core').Page} page */
export const messageBox = (page) => page.getByRole('textbox', { name: 'Message', exact: true });
/** @param {import('playwright-core').Page} page */
export const sendButton = (page) => page.getByRole('button', { name: 'Send', exact: true });
/** @param {import('playwright-core').Page} page */
export const stopButton = (page) => page.getByRole('button', { name: 'Stop', exact: true });
/** @param {import('playwright-core').Page} page */
export const timeline = (page) => page.getByRole('region', { name: 'Run timeline', exact: true });
/** @param {import('playwright-core').Page} page */
export const signOutButton = (page) => page.getByRole('button', { name: 'Sign out', exact: true });

/**
 * On a narrow screen the "Threads" side bar (threads, uploads) sits behind a "Threads" button:
 * opens it when it is closed, as a person would.
 * @param {import('playwright-core').Page} page
 */
export async function openSideBar(page) {
  const menu = page.getByRole('button', { name: 'Threads', exact: true });
  if ((await menu.count()) > 0 && (await menu.first().isVisible()) && (await menu.first().getAttribute('aria-expanded')) === 'false') {
    await menu.first().click();
    await waitVisible(threadsNav(page), 'the "Threads" side bar');
  }
}

/**
 * Closes the narrow screen's side bar when it is open (back to the conversation).
 * @param {import('playwright-core').Page} page
 */
export async function closeSideBar(page) {
  const menu = page.getByRole('button', { name: 'Threads', exact: true });
  if ((await menu.count()) > 0 && (await menu.first().isVisible()) && (await menu.first().getAttribute('aria-expanded')) === 'true') {
    await menu.first().click();
  }
}

/**
 * Starts recording every text the "Connection" status shows; returns a function that gives
 * them in order (so a state shown only briefly is not missed between two polls).
 * @param {import('playwright-core').Page} page
 * @returns {Promise<() => Promise<string[]>>}
 */
export async function recordConnection(page) {
  await connection(page).evaluate((el) => {
    const seen = [el.textContent?.trim() ?? ''];
    /** @type {any} */ (window).__connectionSeen = seen;
    new MutationObserver(() => {
      const text = el.textContent?.trim() ?? '';
      if (seen[seen.length - 1] !== text) seen.push(text);
    }).observe(el, { subtree: true, childList: true, characterData: true });
  });
  return () => page.evaluate(() => /** @type {string[]} */ (/** @type {any} */ (window).__connectionSeen));
}

/** Collapses whitespace, for comparing rendered text with stored Markdown. */
export const flat = (/** @type {string} */ text) => text.replace(/\s+/g, ' ').trim();

/**
 * @typedef {object} AnswersShown
 * @property {string[][]} answers per answer (by its place among the answers of the "Messages"
 *   log, 0 the first), the distinct texts it showed, in order, over all documents of the tab
 * @property {string[][][]} documents the same per document (a reload starts a new one)
 */

/**
 * Starts recording every text each "Switchboard" answer shows, in this page and in the documents
 * it loads later (a reload keeps what was seen before it: the record lives in the tab's
 * sessionStorage, as `window.__answerTexts`). An answer's text is that of its Markdown body,
 * without buttons and without a "Working…" or "joined …" note, whitespace collapsed.
 * @param {import('playwright-core').Page} page
 * @returns {Promise<() => Promise<AnswersShown>>}
 */
export async function recordAnswers(page) {
  const install = () => {
    const w = /** @type {any} */ (window);
    if (w.__answerRecorder) return;
    w.__answerRecorder = true;
    const KEY = '__answerTexts';
    /** @type {string[][][]} one list per document, of one list per answer */
    let documents = [];
    try {
      documents = JSON.parse(sessionStorage.getItem(KEY) ?? '[]');
    } catch {
      documents = [];
    }
    /** @type {string[][]} */
    const seen = [];
    documents.push(seen);
    w.__answerTexts = documents;
    /** @param {Element} article */
    const textOf = (article) => {
      const body = article.querySelector('.markdown') ?? article;
      const copy = /** @type {Element} */ (body.cloneNode(true));
      for (const el of Array.from(copy.querySelectorAll('button'))) el.remove();
      // The notes of a run under way are not part of the answer. Innermost first, so that a
      // note inside a paragraph takes only itself away.
      for (const el of Array.from(copy.querySelectorAll('*')).reverse()) {
        if (/^\s*Working…|\bjoined\b/i.test(el.textContent ?? '')) el.remove();
      }
      return (copy.textContent ?? '').replace(/\s+/g, ' ').trim();
    };
    const look = () => {
      const log = document.querySelector('[role="log"][aria-label="Messages"]');
      if (!log) return;
      const all = Array.from(log.querySelectorAll('article[aria-label="Switchboard"]'));
      let changed = false;
      all.forEach((article, i) => {
        while (seen.length <= i) seen.push([]);
        const list = seen[i];
        const text = textOf(article);
        if (list[list.length - 1] !== text) {
          list.push(text);
          changed = true;
        }
      });
      if (changed) {
        try {
          sessionStorage.setItem(KEY, JSON.stringify(documents));
        } catch {
          // no storage (about:blank): the record stays in this document
        }
      }
    };
    new MutationObserver(look).observe(document, { subtree: true, childList: true, characterData: true });
    look();
  };
  await page.addInitScript(install);
  // The document already loaded (when it is the app's) gets it now.
  await page.evaluate(install).catch(() => {});
  return async () => {
    const documents = /** @type {string[][][]} */ (await page.evaluate(() => /** @type {any} */ (window).__answerTexts ?? []));
    /** @type {string[][]} */
    const answers = [];
    for (const doc of documents) {
      doc.forEach((texts, i) => {
        while (answers.length <= i) answers.push([]);
        for (const text of texts) if (answers[i][answers[i].length - 1] !== text) answers[i].push(text);
      });
    }
    return { answers, documents };
  };
}

/**
 * Checks what an answer showed while it streamed: every text it showed is the start of the final
 * answer (no word lost, doubled or out of order on the way), and at least two different parts
 * of it showed before the end (the test did watch it stream).
 * @param {string[] | undefined} shown the texts the answer showed, in order (`recordAnswers`)
 * @param {string} final the whole answer (the stored one)
 * @param {string} what which answer, for the failure
 */
export function checkStreamed(shown, final, what) {
  const whole = flat(final);
  const texts = (shown ?? []).map(flat).filter((text) => text !== '');
  const list = () => texts.map((t) => `    ${JSON.stringify(t)}`).join('\n');
  for (const text of texts) {
    if (!whole.startsWith(text)) {
      throw new Error(
        `${what} showed a text that is not the start of the final answer:\n  shown: ${JSON.stringify(text)}\n  final: ${JSON.stringify(whole)}\n  all it showed:\n${list()}`,
      );
    }
  }
  const partial = new Set(texts.filter((text) => text.length < whole.length));
  if (partial.size < 2) {
    throw new Error(`${what} showed fewer than 2 parts of the answer before the end (so its streaming was not watched):\n${list()}`);
  }
  if (texts[texts.length - 1] !== whole) {
    throw new Error(`${what} ended on another text than the final answer:\n  final: ${JSON.stringify(whole)}\n  all it showed:\n${list()}`);
  }
}

/**
 * A value of the server's `/metrics` (OpenMetrics text): the sample named `name` (e.g.
 * `switchboard_connections`) whose labels include all of `labels`; 0 when there is none.
 * @param {Server} server
 * @param {string} name
 * @param {Record<string, string>} [labels]
 */
export async function metric(server, name, labels = {}) {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  let total = 0;
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!match || match[1] !== name) continue;
    const have = match[2] ?? '';
    if (Object.entries(labels).every(([k, v]) => have.includes(`${k}="${v}"`))) total += Number(match[3]);
  }
  return total;
}

/**
 * Opens the app and waits for its first screen (the sign-in form or the signed-in banner).
 * @param {import('playwright-core').Page} page
 */
export async function openApp(page) {
  await page.goto('/');
  await waitFor(
    'the app to show the sign-in form or the signed-in screen',
    async () => (await signInForm(page).isVisible()) || (await signOutButton(page).isVisible()),
    { seen: () => page.locator('body').innerText() },
  );
}

/**
 * Signs in with "Continue as dev user" and waits for the signed-in screen.
 * @param {import('playwright-core').Page} page
 */
export async function signInAsDev(page) {
  await openApp(page);
  if (!(await signOutButton(page).isVisible())) {
    // Said at once, instead of after a time-out: the app shows the button only when the
    // server's GET /api/info says `dev: true`.
    const info = await fetch(new URL('/api/info', page.url())).catch((error) => error);
    if (!(info instanceof Response) || !info.ok) {
      const why = info instanceof Response ? `answered ${info.status}` : `failed (${errorText(info)})`;
      throw new Error(`GET /api/info ${why}, so the app cannot know the server runs in dev mode and shows no "Continue as dev user" button`);
    }
    await page.getByRole('button', { name: 'Continue as dev user', exact: true }).click();
  }
  await waitSignedIn(page);
}

/**
 * Waits for the signed-in screen: "Sign out" and the "Connection" status reading "Connected".
 * @param {import('playwright-core').Page} page
 */
export async function waitSignedIn(page) {
  await waitVisible(signOutButton(page), 'the "Sign out" button');
  await waitForText(connection(page), /^Connected$/, 'the "Connection" status');
}

/**
 * Fills the sign-in form and presses one of its buttons.
 * @param {import('playwright-core').Page} page
 * @param {string} email
 * @param {string} password
 * @param {'Sign in' | 'Create account'} button
 */
export async function submitSignIn(page, email, password, button) {
  const form = signInForm(page);
  await waitVisible(form, 'the "Sign in" form');
  await form.getByRole('textbox', { name: 'Email', exact: true }).fill(email);
  // A password input has no role: find it by its label.
  await form.getByLabel('Password', { exact: true }).fill(password);
  await form.getByRole('button', { name: button, exact: true }).click();
}

/**
 * Types a message and presses "Send"; waits until it shows as the user's newest message.
 * @param {import('playwright-core').Page} page
 * @param {string} text
 */
export async function ask(page, text) {
  const before = await yourMessages(page).count();
  await messageBox(page).fill(text);
  await sendButton(page).click();
  await waitForMessage(page, text, before);
}

/**
 * Waits for a "You" article beyond the first `before` ones that shows `text`.
 * @param {import('playwright-core').Page} page
 * @param {string} text
 * @param {number} before
 */
export async function waitForMessage(page, text, before) {
  await waitFor(
    `a new "You" message reading ${JSON.stringify(text)}`,
    async () => {
      const mine = yourMessages(page);
      const n = await mine.count();
      return n > before && (await mine.nth(n - 1).innerText()).includes(text.trim());
    },
    { seen: () => messagesLog(page).innerText().catch(() => '<no "Messages" log>') },
  );
}

/**
 * Waits until the newest answer has finished streaming (`aria-busy` no longer "true") and has
 * text; returns its text. `count`: wait for at least that many answers first.
 * @param {import('playwright-core').Page} page
 * @param {{count?: number, timeout?: number}} [options]
 */
export async function waitForAnswer(page, options = {}) {
  const all = answers(page);
  const count = options.count ?? 1;
  return waitFor(
    `answer ${count} ("Switchboard" article) to finish`,
    async () => {
      const n = await all.count();
      if (n < count) return false;
      const last = all.nth(n - 1);
      if ((await last.getAttribute('aria-busy')) === 'true') return false;
      const text = (await last.innerText()).trim();
      return text || false;
    },
    { timeout: options.timeout ?? 30_000, seen: () => messagesLog(page).innerText().catch(() => '<no "Messages" log>') },
  );
}

/**
 * The newest answer article.
 * @param {import('playwright-core').Page} page
 */
export const lastAnswer = (page) => answers(page).last();

/**
 * Asks and waits for the whole answer; returns its text.
 * @param {import('playwright-core').Page} page
 * @param {string} text
 */
export async function askAndWait(page, text) {
  const before = await answers(page).count();
  await ask(page, text);
  return waitForAnswer(page, { count: before + 1 });
}

/**
 * The thread link of that title in "Threads".
 * @param {import('playwright-core').Page} page
 * @param {string | RegExp} title
 */
export const threadLink = (page, title) => threadsNav(page).getByRole('link', { name: title, exact: typeof title === 'string' });

/**
 * Waits until no finite animation or transition of the page is running (a side bar sliding in,
 * say), so that a screenshot or a measurement shows where things end up.
 * @param {import('playwright-core').Page} page
 */
export async function settled(page) {
  await page.waitForFunction(
    () =>
      document
        .getAnimations()
        .filter((a) => a.effect?.getComputedTiming().iterations !== Infinity)
        .every((a) => a.playState !== 'running'),
    undefined,
    { timeout: STEP_TIMEOUT, polling: 'raf' },
  );
}

/**
 * Waits for the thread link of that title in "Threads"; on time-out, says which links there are
 * (their accessible names, as a screen reader reads them).
 * @param {import('playwright-core').Page} page
 * @param {string | RegExp} title
 * @param {string} what
 */
export async function waitForThread(page, title, what) {
  await waitFor(`${what} (a link named ${typeof title === 'string' ? JSON.stringify(title) : title})`, () => threadLink(page, title).first().isVisible(), {
    seen: async () => `the "Threads" navigation holds:\n${await threadsNav(page).ariaSnapshot()}`,
  });
}

/**
 * Whether the document is wider than the viewport (something overflows horizontally).
 * @param {import('playwright-core').Page} page
 * @returns {Promise<{scrollWidth: number, innerWidth: number, widest: string}>}
 */
export async function horizontalOverflow(page) {
  await settled(page);
  return page.evaluate(() => {
    const innerWidth = window.innerWidth;
    const scrollWidth = document.documentElement.scrollWidth;
    // Name the elements that stick out, to say what to fix.
    const wide = [];
    for (const el of Array.from(document.querySelectorAll('body *'))) {
      const rect = el.getBoundingClientRect();
      if (rect.right > innerWidth + 0.5 && rect.width > 0) {
        const id = el.id ? `#${el.id}` : '';
        const cls = typeof el.className === 'string' && el.className ? `.${el.className.trim().split(/\s+/).join('.')}` : '';
        wide.push(`${el.tagName.toLowerCase()}${id}${cls} (right ${Math.round(rect.right)})`);
      }
      if (wide.length >= 5) break;
    }
    return { scrollWidth, innerWidth, widest: wide.join(', ') };
  });
}

/**
 * A day of workload rows, as NDJSON lines: several models and features, a daily rhythm,
 * repeated prompts, a nightly batch, a few errors.
 * @param {number} count
 * @param {{start?: number}} [options] `start`: the first timestamp, in ms
 * @returns {Array<Record<string, unknown>>}
 */
export function workloadRows(count, options = {}) {
  const start = options.start ?? Date.UTC(2026, 10, 1);
  const models = [
    ['openai', 'gpt-4o'],
    ['openai', 'gpt-4o-mini'],
    ['anthropic', 'claude-sonnet-4'],
  ];
  const features = ['search', 'chat', 'summaries', 'nightly-report'];
  const rows = [];
  for (let i = 0; i < count; i++) {
    const [provider, model] = models[i % models.length];
    const feature = features[i % features.length];
    const timestamp = new Date(start + Math.floor((i * 86_400_000 * 7) / count)).toISOString();
    rows.push({
      timestamp,
      provider,
      model,
      input_tokens: 200 + ((i * 37) % 3000),
      output_tokens: 50 + ((i * 11) % 600),
      latency_ms: 300 + ((i * 13) % 2500),
      status: i % 97 === 0 ? 'error' : 'ok',
      feature,
      prompt_hash: `p${i % 50}`,
      batch: feature === 'nightly-report',
    });
  }
  return rows;
}

/**
 * Rows as NDJSON text.
 * @param {Array<Record<string, unknown>>} rows
 */
export const ndjson = (rows) => rows.map((row) => JSON.stringify(row)).join('\n') + '\n';
