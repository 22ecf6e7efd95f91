// The connection to `GET /ws` (PROTOCOL.md): the token goes in the subprotocol offer, never in
// the URL; every connect asks for the events after the last one applied (`after_seq`), so a
// reconnect continues exactly where the page was. It reconnects by itself (backoff with jitter,
// at once when the browser comes back online), closes a connection that has gone silent past the
// heartbeat, and tells its state in a sentence.

const PROTOCOL = 'switchboard.v1';
const FIRST_RETRY_MS = 500;
const LAST_RETRY_MS = 10_000;
/** How long past the heartbeat interval a silent connection is given before it is closed. */
const SILENCE_GRACE_MS = 10_000;
/** How long a ping sent after the page comes back may wait for its answer. */
const PROBE_MS = 5_000;
/** How long a connection may take to say `connection_established`. */
const CONNECT_TIMEOUT_MS = 10_000;
/** The close code given to a socket let go because the device went offline (not sent). */
const OFFLINE = 4001;
/** The close code given to a socket let go because it went silent (not sent). */
const SILENT = 4000;

/**
 * @typedef {{ state: 'connecting' | 'connected' | 'reconnecting' | 'failed', text: string }} Status
 * @typedef {{
 *   token: () => Promise<string>,
 *   refresh: () => Promise<void>,
 *   afterSeq: () => number | null,
 *   onFrame: (frame: any) => void,
 *   onStatus: (status: Status) => void,
 *   onOpen: () => void,
 *   onClosed: (code: number) => void,
 * }} Handlers
 */

export class Connection {
  /** @param {Handlers} handlers */
  constructor(handlers) {
    this.handlers = handlers;
    /** @type {WebSocket | null} */
    this.socket = null;
    this.open = false;
    /** A connect is under way (waiting for a token, before its socket exists): no second one. */
    this.connecting = false;
    this.stopped = false;
    this.failures = 0;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.retry = undefined;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.watchdog = undefined;
    this.silenceMs = 25_000 + SILENCE_GRACE_MS;
    this.onOnline = () => this.reconnectNow();
    this.onOffline = () => {
      // The socket cannot be of use any more, and its close may take long to come: it is
      // given up now, so that coming back online connects at once.
      const socket = this.socket;
      if (socket === null) return;
      socket.close();
      this.closed(socket, new CloseEvent('close', { code: OFFLINE }));
    };
    // Back from sleep (a closed lid) or from the background: a connection that looks open may
    // be dead; a ping tells within PROBE_MS.
    this.onVisible = () => {
      if (document.visibilityState === 'visible') this.probe();
    };
    window.addEventListener('online', this.onOnline);
    window.addEventListener('offline', this.onOffline);
    document.addEventListener('visibilitychange', this.onVisible);
    window.addEventListener('pageshow', this.onVisible);
  }

  start() {
    this.handlers.onStatus({ state: 'connecting', text: 'Connecting…' });
    this.connect();
  }

  async connect() {
    if (this.stopped || this.connecting || this.socket !== null) return;
    this.connecting = true;
    clearTimeout(this.retry);
    let token;
    try {
      token = await this.handlers.token();
    } catch (error) {
      this.connecting = false;
      this.scheduleRetry(`cannot sign the connection in (${messageOf(error)})`);
      return;
    }
    this.connecting = false;
    if (this.stopped || this.socket !== null) return;
    const after = this.handlers.afterSeq();
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const query = after === null ? '' : `?after_seq=${after}`;
    const socket = new WebSocket(`${scheme}//${location.host}/ws${query}`, [PROTOCOL, `jwt.${token}`]);
    this.socket = socket;
    // A handshake that hangs is given up like a silent connection.
    this.feedWatchdog(CONNECT_TIMEOUT_MS);
    socket.onmessage = (message) => {
      if (socket !== this.socket) return;
      this.feedWatchdog();
      let frame;
      try {
        frame = JSON.parse(String(message.data));
      } catch {
        return;
      }
      if (frame?.type === 'connection_established') {
        this.open = true;
        this.failures = 0;
        const interval = Number(frame.payload?.heartbeat_interval_ms);
        if (interval > 0) this.silenceMs = interval + SILENCE_GRACE_MS;
        this.feedWatchdog();
        this.handlers.onStatus({ state: 'connected', text: 'Connected' });
        this.handlers.onFrame(frame);
        this.handlers.onOpen();
        return;
      }
      this.handlers.onFrame(frame);
    };
    socket.onclose = (close) => this.closed(socket, close);
  }

  /**
   * A connection closed (or was given up as silent): find out why and connect again.
   * @param {WebSocket} closedSocket
   * @param {CloseEvent} close
   */
  closed(closedSocket, close) {
    if (closedSocket !== this.socket) return;
    this.socket = null;
    const wasOpen = this.open;
    this.open = false;
    clearTimeout(this.watchdog);
    if (this.stopped) return;
    if (close.code === 1008) {
      // The access token expired during the session: a new one, then on at once.
      this.handlers.refresh().then(
        () => this.reconnectNow(),
        (error) => this.scheduleRetry(`the sign-in could not be renewed (${messageOf(error)})`),
      );
      return;
    }
    this.handlers.onClosed(close.code);
    if (wasOpen) this.failures = 0;
    this.scheduleRetry(reasonOf(close, wasOpen));
  }

  /**
   * Sends a client frame; false when not connected (the caller keeps it for the next connection).
   * @param {any} frame
   */
  send(frame) {
    if (!this.open || this.socket === null || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  /** Starts the silence timer again: `wait` ms from now without a frame closes the connection. */
  feedWatchdog(wait = this.silenceMs) {
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => {
      // Nothing, not even a heartbeat: the connection is dead without knowing it. Its close
      // may take long to come, so it is treated as closed now.
      const socket = this.socket;
      if (socket === null) return;
      socket.close();
      this.closed(socket, new CloseEvent('close', { code: SILENT }));
    }, wait);
  }

  /** Asks the server for a pong; without an answer within PROBE_MS the connection is replaced. */
  probe() {
    if (this.socket === null) {
      this.reconnectNow();
    } else if (this.send({ type: 'ping', payload: {} })) {
      this.feedWatchdog(PROBE_MS);
    }
  }

  /** @param {string} why */
  async scheduleRetry(why) {
    this.failures += 1;
    const wait = Math.min(LAST_RETRY_MS, FIRST_RETRY_MS * 2 ** (this.failures - 1)) * (0.75 + Math.random() / 2);
    let text = `Reconnecting… (${why})`;
    if (this.failures >= 3) {
      // Several tries failed: say why, as precisely as can be found out.
      const reachable = await fetch('/health/live', { cache: 'no-store' }).then(
        (r) => r.ok,
        () => false,
      );
      if (!reachable) {
        text = `Cannot connect: the server does not answer; trying again in ${Math.ceil(wait / 1000)} s.`;
      } else {
        // The server answers but refuses the socket: perhaps the token (a browser does not
        // tell why an upgrade failed). A new one, now and then; each refresh spends a token.
        if (this.failures === 3 || this.failures % 10 === 0) {
          try {
            await this.handlers.refresh();
          } catch (error) {
            text = `Cannot connect: ${messageOf(error)}`;
          }
        }
        if (text.startsWith('Reconnecting')) {
          text = `Cannot connect: the server refused the connection (${why}); trying again in ${Math.ceil(wait / 1000)} s.`;
        }
      }
      if (this.stopped || this.connecting || this.socket !== null) return; // reconnected meanwhile
      this.handlers.onStatus({ state: 'failed', text });
    } else {
      this.handlers.onStatus({ state: 'reconnecting', text });
    }
    clearTimeout(this.retry);
    this.retry = setTimeout(() => this.connect(), wait);
  }

  reconnectNow() {
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retry);
    clearTimeout(this.watchdog);
    window.removeEventListener('online', this.onOnline);
    window.removeEventListener('offline', this.onOffline);
    document.removeEventListener('visibilitychange', this.onVisible);
    window.removeEventListener('pageshow', this.onVisible);
    this.socket?.close(1000);
    this.socket = null;
  }
}

/** @param {unknown} error */
function messageOf(error) {
  return error instanceof Error ? error.message : String(error);
}

/**
 * @param {CloseEvent} close
 * @param {boolean} wasOpen
 */
function reasonOf(close, wasOpen) {
  if (close.code === 1001) return 'the server is restarting or the connection was idle';
  if (close.code === SILENT) return 'the connection went silent';
  if (close.code === OFFLINE) return 'this device is offline';
  if (close.code === 1009) return 'a message was too large for the server';
  if (close.reason) return close.reason;
  return wasOpen ? 'the connection was lost' : 'the server could not be reached';
}
