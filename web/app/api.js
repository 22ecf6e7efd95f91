// The HTTP API (PROTOCOL.md section 7) and the signed-in session: tokens kept in localStorage so
// that a reload stays signed in, refreshed before they expire, and shared by every tab of the
// page (a refresh token can be used once, so tabs take turns through a Web Lock and reuse what
// another tab already got).

const SESSION_KEY = 'switchboard.session';
/** Where a tab holds the right to refresh when the browser has no Web Locks (plain http on
 * another host than localhost). */
const LEASE_KEY = 'switchboard.refresh-lease';
/** How long a sign-in or refresh request may take. */
const REQUEST_TIMEOUT_MS = 15_000;
/** Refresh when the access token has less than this left. */
const REFRESH_BEFORE_MS = 60_000;

/**
 * @typedef {{ id: string, email: string }} User
 * @typedef {{ access_token: string, refresh_token: string, expires_at: number, user: User }} Tokens
 * @typedef {{ protocol: string, version: string, dev: boolean, max_text_chars: number, max_upload_bytes: number, max_frame_bytes: number }} Info
 */

/** An answer of the API that is not a success, with the server's sentence. */
export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string} code
   * @param {string} message
   * @param {any} [body]
   */
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

/**
 * A request's answer as JSON, or an `ApiError` with the server's code and sentence.
 * @param {Response} response
 */
async function answer(response) {
  const text = await response.text();
  /** @type {any} */
  let body = null;
  if (text !== '') {
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
  }
  if (response.ok) return body;
  const error = body?.error;
  const message =
    typeof error?.message === 'string' ? error.message : `The server answered ${response.status} ${response.statusText}.`;
  throw new ApiError(response.status, typeof error?.code === 'string' ? error.code : 'http_error', message, body);
}

/**
 * A request without credentials.
 * @param {string} method
 * @param {string} path
 * @param {unknown} [body]
 * @param {number} [timeoutMs] given up after this long
 */
export async function publicRequest(method, path, body, timeoutMs = REQUEST_TIMEOUT_MS) {
  /** @type {RequestInit} */
  const init = { method, headers: {}, signal: AbortSignal.timeout(timeoutMs) };
  if (body !== undefined) {
    init.headers = { 'content-type': 'application/json' };
    init.body = JSON.stringify(body);
  }
  return answer(await send(path, init, timeoutMs));
}

/**
 * `fetch`, with a failure to reach the server (or to hear from it within `timeoutMs`) told as
 * an `ApiError` sentence; a request aborted by its caller stays an `AbortError`.
 * @param {string} path
 * @param {RequestInit} init
 * @param {number} [timeoutMs] the timeout `init.signal` carries, if any
 */
async function send(path, init, timeoutMs) {
  try {
    return await fetch(path, init);
  } catch (error) {
    if (error instanceof DOMException && error.name === 'TimeoutError' && timeoutMs !== undefined) {
      throw new ApiError(0, 'timeout', `The server did not answer within ${timeoutMs / 1000} s; try again.`);
    }
    if (error instanceof DOMException && error.name === 'AbortError') throw error;
    throw new ApiError(0, 'network', 'The server cannot be reached; check the connection and try again.');
  }
}

/** @returns {Promise<Info>} */
export async function serverInfo() {
  try {
    return await publicRequest('GET', '/api/info');
  } catch {
    // The server's defaults.
    return {
      protocol: 'switchboard.v1',
      version: '',
      dev: false,
      max_text_chars: 16_000,
      max_upload_bytes: 10 * 1024 * 1024,
      max_frame_bytes: 64 * 1024,
    };
  }
}

/**
 * A pair of tokens as the server answers sign-in and refresh, stamped with when it expires.
 * @param {any} pair
 * @returns {Tokens}
 */
function tokensOf(pair) {
  return {
    access_token: pair.access_token,
    refresh_token: pair.refresh_token,
    expires_at: Date.now() + pair.expires_in * 1000,
    user: pair.user,
  };
}

/** @returns {Tokens | null} */
function stored() {
  try {
    const raw = localStorage.getItem(SESSION_KEY);
    if (raw === null) return null;
    const tokens = JSON.parse(raw);
    return typeof tokens?.access_token === 'string' && typeof tokens?.user?.id === 'string' ? tokens : null;
  } catch {
    return null;
  }
}

/**
 * Runs `work` while this tab holds the refresh lease in localStorage: the stand-in for a Web Lock
 * where the browser has none. A tab takes a free (or expired) lease, waits a moment for a
 * racing tab's write to land, and goes ahead only if the lease is still its own.
 * @template T
 * @param {() => Promise<T>} work
 * @returns {Promise<T>}
 */
async function withLease(work) {
  const me = `${Date.now()}-${Math.random()}`;
  const pause = (/** @type {number} */ ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const holder = () => {
    try {
      return JSON.parse(localStorage.getItem(LEASE_KEY) ?? 'null');
    } catch {
      return null;
    }
  };
  for (let attempt = 0; attempt < 100; attempt += 1) {
    const lease = holder();
    if (lease === null || typeof lease.until !== 'number' || lease.until < Date.now()) {
      localStorage.setItem(LEASE_KEY, JSON.stringify({ owner: me, until: Date.now() + REQUEST_TIMEOUT_MS + 5000 }));
      await pause(60);
      if (holder()?.owner === me) {
        try {
          return await work();
        } finally {
          if (holder()?.owner === me) localStorage.removeItem(LEASE_KEY);
        }
      }
    }
    await pause(100 + Math.random() * 200);
  }
  return work();
}

/** The signed-in user's session. */
export class Session {
  /**
   * @param {Tokens} tokens
   * @param {(why: string | null) => void} onSignedOut told once, with why (null: the user signed out)
   */
  constructor(tokens, onSignedOut) {
    this.tokens = tokens;
    this.onSignedOut = onSignedOut;
    this.ended = false;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.timer = undefined;
    this.onStorage = (/** @type {StorageEvent} */ event) => {
      if (event.key !== SESSION_KEY || this.ended) return;
      const next = stored();
      if (next === null || next.user.id !== this.tokens.user.id) {
        this.end('You signed out in another tab.');
      } else {
        this.tokens = next;
        this.schedule();
      }
    };
    window.addEventListener('storage', this.onStorage);
    this.schedule();
  }

  /** The session kept from an earlier visit, if any. */
  static restore(/** @type {(why: string | null) => void} */ onSignedOut) {
    const tokens = stored();
    return tokens === null ? null : new Session(tokens, onSignedOut);
  }

  /**
   * Signs in with a pair the server answered.
   * @param {any} pair
   * @param {(why: string | null) => void} onSignedOut
   */
  static start(pair, onSignedOut) {
    const tokens = tokensOf(pair);
    localStorage.setItem(SESSION_KEY, JSON.stringify(tokens));
    return new Session(tokens, onSignedOut);
  }

  get user() {
    return this.tokens.user;
  }

  schedule() {
    clearTimeout(this.timer);
    // Tabs share the tokens, so their timers would fire together: each waits a little more at
    // random, and the first one's new pair is taken up by the others.
    const jitter = Math.random() * 15_000;
    const wait = Math.max(1000, this.tokens.expires_at - Date.now() - REFRESH_BEFORE_MS - jitter);
    this.timer = setTimeout(() => {
      this.refresh().catch(() => {});
    }, Math.min(wait, 2 ** 31 - 1));
  }

  /** An access token with time left, refreshed first when it is about to expire. */
  async accessToken() {
    if (this.tokens.expires_at - Date.now() < REFRESH_BEFORE_MS) await this.refresh();
    return this.tokens.access_token;
  }

  /** Gets a new pair, unless another tab already did. */
  async refresh() {
    if (this.ended) throw new ApiError(401, 'unauthorized', 'You are signed out.');
    const used = this.tokens.refresh_token;
    const run = async () => {
      const current = stored();
      if (current !== null && current.user.id === this.tokens.user.id && current.refresh_token !== used) {
        this.tokens = current;
        return;
      }
      try {
        const pair = await publicRequest('POST', '/api/auth/refresh', { refresh_token: used });
        // Signed out while the answer was on its way: the new pair is not kept.
        if (this.ended) throw new ApiError(401, 'unauthorized', 'You are signed out.');
        this.tokens = tokensOf(pair);
        localStorage.setItem(SESSION_KEY, JSON.stringify(this.tokens));
      } catch (error) {
        if (error instanceof ApiError && error.status === 401) this.end(`Your sign-in ended: ${error.message}`);
        throw error;
      }
    };
    if (navigator.locks) {
      await navigator.locks.request('switchboard.refresh', run);
    } else {
      await withLease(run);
    }
    if (this.ended) throw new ApiError(401, 'unauthorized', 'You are signed out.');
    this.schedule();
  }

  /**
   * A request with the access token; on 401 the token is refreshed and the request tried once more.
   * @param {string} method
   * @param {string} path
   * @param {{ json?: unknown, body?: BodyInit, contentType?: string, signal?: AbortSignal }} [options]
   */
  async request(method, path, options = {}) {
    for (let attempt = 0; ; attempt += 1) {
      /** @type {Record<string, string>} */
      const headers = { authorization: `Bearer ${await this.accessToken()}` };
      /** @type {BodyInit | undefined} */
      let body = options.body;
      if (options.json !== undefined) {
        headers['content-type'] = 'application/json';
        body = JSON.stringify(options.json);
      } else if (options.contentType) {
        headers['content-type'] = options.contentType;
      }
      const response = await send(path, { method, headers, body, signal: options.signal });
      if (response.status === 401 && attempt === 0) {
        await this.refresh();
        continue;
      }
      return answer(response);
    }
  }

  /** Signs out here and in every tab, and ends the sign-in on the server, so that its refresh
   * token buys nothing more. */
  signOut() {
    const refresh_token = this.tokens.refresh_token;
    this.end(null);
    publicRequest('POST', '/api/auth/logout', { refresh_token }).catch(() => {
      // Unreachable or already ended: the tokens are gone from this browser either way.
    });
  }

  /** @param {string | null} why */
  end(why) {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.timer);
    window.removeEventListener('storage', this.onStorage);
    const current = stored();
    if (current !== null && current.user.id === this.tokens.user.id) localStorage.removeItem(SESSION_KEY);
    this.onSignedOut(why);
  }
}
