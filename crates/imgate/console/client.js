// imgate client: one user's live connection to an imgate gateway.
//
//   import { ImgateClient } from '/console/client.js';
//   const c = new ImgateClient({ userid: 'agent1' });          // or { token: JWT, getToken }
//   c.addEventListener('message', (e) => show(e.detail));     // every message frame, once
//   c.addEventListener('state', (e) => setBadge(e.detail));   // connecting|connected|reconnecting|offline
//   c.addEventListener('conversation' | 'note' | 'presence', …) // the team inbox's 104, 105, 106
//   c.addEventListener('erased', …)  // 107: a person was erased; drop data.contact_id's messages
//   c.connect();
//   const ack = await c.send({ contact_id: 'o123', msg_type: 'text', msg: { content: 'hi' } });
//
// It reconnects by itself (backoff with jitter) with `since` = the highest seq seen, so a
// dropped connection or a restarted server loses nothing; frames are deduplicated by seq
// and id, so nothing is shown twice. The highest seq is kept in localStorage per user.
// Sends carry a client id: a retry of the same send is recognised by the server.
//
// Token mode: the gateway closes a socket with 4001 when its token expires. Given
// `getToken` (an async function returning a fresh JWT, as Centrifugo's client takes), the
// client calls it on every reconnect, that one included, and connects with what it
// returns. Without `getToken`, a 4001 ends the client (state `offline`, a `close` event):
// its token cannot be renewed.

const MESSAGE_CODES = (code) => (code >= 102 && code <= 107) || code >= 1000;
/** Frames that are not messages, each its own event: the team inbox's 104 a
 *  conversation's change (claim, transfer, resolve…), 105 an internal note, 106 an
 *  agent's presence; 107 a person erased (DELETE P/contacts/{id}). */
const INBOX_EVENTS = { 104: 'conversation', 105: 'note', 106: 'presence', 107: 'erased' };
/** The gateway's close code for an expired token. */
export const CLOSE_TOKEN_EXPIRED = 4001;

export class ImgateClient extends EventTarget {
  constructor({ base = location.origin, userid = '', token = '', getToken = null, path = '/im_component/wx_official_account' } = {}) {
    super();
    this.base = base.replace(/\/$/, '');
    this.path = path;
    this.userid = userid || subjectOf(token) || '';
    this.token = token;
    this.getToken = getToken;
    this.opening = 0;             // the latest #open; an older one still awaiting getToken gives way
    this.state = 'offline';
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.closed = false;
    this.pending = [];            // sends awaiting their answer, in order
    this.seen = new Set();        // ids of frames already delivered
    this.sinceKey = `imgate.since.${this.userid}`;
    this.since = Number(localStorage.getItem(this.sinceKey) || 0);
    addEventListener('online', () => this.state !== 'connected' && this.#reconnectSoon(0));
    addEventListener('offline', () => this.#setState('offline'));
  }

  /** HTTP headers for the gateway's other endpoints (history, media). */
  headers() {
    return this.token ? { Authorization: `Bearer ${this.token}` } : {};
  }

  /** A URL on the gateway with the user's identity attached (the token too: an <img> or
   *  <audio> cannot send headers). */
  url(path, params = {}) {
    const u = new URL(this.base + path);
    if (this.token) u.searchParams.set('token', this.token);
    else u.searchParams.set('userid', this.userid);
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) u.searchParams.set(k, v);
    return u.toString();
  }

  connect() {
    this.closed = false;
    this.#open();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
    this.#setState('offline');
  }

  /** Send a message; resolves with the ack frame, rejects with an Error carrying the frame. */
  send({ contact_id, msg_type = 'text', msg, id = newId() }) {
    const frame = { data: { id, msg_type, contact_id, msg }, result: { code: codeOf(msg_type), message: 'common' } };
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
        reject(Object.assign(new Error('not connected: the message was not sent'), { frame: null, id }));
        return;
      }
      const entry = { id, resolve, reject, timer: setTimeout(() => this.#giveUp(entry), 60000) };
      this.pending.push(entry);
      this.ws.send(JSON.stringify(frame));
    });
  }

  /** No answer in time: tell the caller, but keep the place in the queue, so that the late
   *  answer, when it comes, is not taken for the next send's. */
  #giveUp(entry) {
    entry.dead = true;
    entry.reject(Object.assign(new Error('no answer from the gateway yet'), { frame: null, id: entry.id, lost: true }));
  }

  async #open() {
    clearTimeout(this.timer);
    if (this.ws?.readyState === WebSocket.OPEN) return;
    const me = ++this.opening;
    this.#setState(this.attempt ? 'reconnecting' : 'connecting');
    if (this.getToken && (this.attempt > 0 || !this.token)) {
      // A reconnect, after an expired token or not: a fresh token (the old one may have
      // expired while the network was down).
      let fresh = '';
      try {
        fresh = String((await this.getToken()) || '');
      } catch (e) {
        // Shaped as the gateway's error frames, which 'error' events carry too.
        this.dispatchEvent(new CustomEvent('error', { detail: { result: { code: -1, message: `getToken: ${e?.message || e}` } } }));
      }
      if (this.closed || me !== this.opening) return;
      if (!fresh) {
        this.#reconnectSoon();
        return;
      }
      this.token = fresh;
    }
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) {
      // Never two sockets for one client (the browser's `online` event may come while
      // one is still connecting).
      if (this.ws.readyState === WebSocket.OPEN) return;
      this.ws.onclose = null;
      this.ws.close();
    }
    const u = new URL(this.base.replace(/^http/, 'ws') + this.path + '/msg');
    if (this.token) u.searchParams.set('token', this.token);
    else u.searchParams.set('userid', this.userid);
    u.searchParams.set('since', String(this.since));
    const ws = new WebSocket(u.toString());
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.#setState('connected');
    };
    ws.onmessage = (e) => this.#frame(e.data);
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      for (const p of this.pending.splice(0)) {
        clearTimeout(p.timer);
        p.reject(Object.assign(new Error('connection lost before the answer: check the message, then retry'), { frame: null, id: p.id, lost: true }));
      }
      this.dispatchEvent(new CustomEvent('close', { detail: { code: e.code, reason: e.reason } }));
      if (e.code === CLOSE_TOKEN_EXPIRED) {
        // Not the network: reconnect at once with a fresh token, or stop if none can come.
        if (this.getToken) this.#reconnectSoon(0);
        else this.close();
        return;
      }
      if (!this.closed) this.#reconnectSoon();
    };
    ws.onerror = () => {};
  }

  #reconnectSoon(delay) {
    if (this.closed) return;
    this.attempt += 1;
    const backoff = delay ?? Math.min(15000, 500 * 2 ** Math.min(this.attempt - 1, 5)) * (0.5 + Math.random() / 2);
    this.#setState(navigator.onLine === false ? 'offline' : 'reconnecting');
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.#open(), backoff);
  }

  #setState(s) {
    if (this.state === s) return;
    this.state = s;
    this.dispatchEvent(new CustomEvent('state', { detail: s }));
  }

  #frame(text) {
    let f;
    try {
      f = JSON.parse(text);
    } catch {
      return;
    }
    const code = Number(f?.result?.code);
    if (code === 101) {
      // The seed's convention; the browser answers pings by itself as well.
      if (this.ws?.readyState === WebSocket.OPEN) this.ws.send('pong');
      return;
    }
    if (code === 0 || code === -1) {
      // The answer to the oldest pending send: the server answers a socket's sends in order.
      const p = this.pending.shift();
      if (!p) {
        if (code === -1) this.dispatchEvent(new CustomEvent('error', { detail: f }));
        return;
      }
      clearTimeout(p.timer);
      if (p.dead) return;
      if (code === 0) p.resolve(f);
      else p.reject(Object.assign(new Error(f.result.message || 'refused'), { frame: f, id: p.id }));
      return;
    }
    if (!MESSAGE_CODES(code)) return;
    const seq = Number(f.data?.seq || 0);
    const key = `${seq}:${f.data?.id}`;
    if (this.seen.has(key)) return;
    this.seen.add(key);
    if (seq > this.since) {
      this.since = seq;
      localStorage.setItem(this.sinceKey, String(seq));
    }
    this.dispatchEvent(new CustomEvent(code === 103 ? 'status' : INBOX_EVENTS[code] || 'message', { detail: f }));
  }
}

/** The `sub` claim of a JWT, read without checking it (the server does). */
export function subjectOf(token) {
  try {
    const body = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(body)).sub || '';
  } catch {
    return '';
  }
}

export function newId() {
  return (crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`).replace(/-/g, '');
}

export function codeOf(type) {
  return { text: 1001, image: 1002, voice: 1003, video: 1004, shortvideo: 1005, location: 1006, link: 1007 }[type] || 1099;
}
