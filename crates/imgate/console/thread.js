// One conversation's view: its messages (history pages as the agent scrolls up, live ones
// as they come), each bubble created or updated on its own; the WeChat reply window; where
// the view is (at the newest message, it stays there as images load; scrolled up, new
// messages are counted on a "N new ↓" button instead of moving the view).

import { t } from './i18n.js';
import { body, mediaLoader, notice } from './messages.js';
import { state, thread, windowOpen } from './state.js';
import { $, clock, data, duration, el, linkify, tData } from './util.js';

const P = '/im_component/wx_official_account';
/** Closer than this to the bottom counts as "at the newest message". */
const STICK_PX = 40;
/** Start loading older messages this far from the top. */
const OLDER_PX = 200;
/** How long a wheel, key or touch counts as the agent moving the view, if no scroll follows. */
const USER_MS = 300;
/** Pages fetched for one scroll before giving up on finding older messages. */
const MAX_EMPTY_PAGES = 20;

export class ThreadView {
  constructor(client, { onRetry, onZoom, onWindow }) {
    this.client = client;
    this.onRetry = onRetry;
    this.onZoom = onZoom;
    this.onWindow = onWindow;
    this.box = $('messages');
    this.inner = $('log');
    this.older = $('older');
    this.below = $('new-below');
    this.nodes = new Map();   // id → node, for the open conversation
    this.stick = true;
    this.media = mediaLoader(client, () => this.#keepBottom());
    // Whether the agent moved the view (wheel, touch, keys, the scrollbar): only that takes
    // the view off the bottom. Content that grows or shrinks under it (an image loading,
    // the header changing) moves scrollTop too, and must not.
    this.user = false;
    this.userAt = 0;
    const intent = () => {
      this.user = true;
      this.userAt = performance.now();
    };
    this.box.addEventListener('wheel', (e) => e.deltaY < 0 && intent(), { passive: true });
    this.box.addEventListener('touchmove', intent, { passive: true });
    this.box.addEventListener('keydown', (e) => ['ArrowUp', 'PageUp', 'Home'].includes(e.key) && intent());
    this.box.addEventListener('pointerdown', (e) => e.target === this.box && intent());
    // Focus moved to a message (Tab to an image): the browser scrolls it into view for the agent.
    this.box.addEventListener('focusin', (e) => e.target !== this.box && intent());
    this.box.addEventListener('scroll', () => {
      if (this.#gap() < STICK_PX) {
        this.stick = true;
        this.user = false;
        this.#clearBelow();
      } else if (this.user) {
        this.stick = false;
        this.user = false;
      } else if (this.stick) {
        this.box.scrollTop = this.box.scrollHeight;
      }
      if (this.box.scrollTop < OLDER_PX) this.loadOlder();
    });
    // At the very top a wheel moves nothing and fires no scroll: ask here too.
    this.box.addEventListener('wheel', (e) => e.deltaY < 0 && this.box.scrollTop < OLDER_PX && this.loadOlder(), { passive: true });
    // Images, video and late media grow the content, and the header and reply box (the
    // window line, the reason it is closed) shrink the view: at the bottom, stay there.
    const ro = new ResizeObserver(() => this.#keepBottom());
    for (const n of [this.inner, this.older, this.box]) ro.observe(n);
    this.box.addEventListener('load', () => this.#keepBottom(), true);
    this.below.addEventListener('click', () => this.toBottom());
    this.timer = null;
  }

  // --- frames -------------------------------------------------------------------------------

  /** A frame for any conversation. History frames (`live` false) never set the window:
   *  they are older than what the contact lookup or a live frame said. */
  ingest(frame, { live = false } = {}) {
    const d = frame.data || {};
    const code = Number(frame.result?.code);
    const th = thread(d.contact_id || '');
    if (d.company_id) th.company = d.company_id;
    const seq = Number(d.seq || 0);
    if (seq && seq < th.minSeq) th.minSeq = seq;
    if (live && d.window) this.setWindow(th, d.window);
    if (code === 103) {
      th.statuses.add(d.id);
      const m = th.messages.get(d.msg?.ref);
      if (m) {
        // A template's later word from WeChat (TEMPLATESENDJOBFINISH): delivered or failed.
        m.state = ['sent', 'delivered'].includes(d.msg.status) ? d.msg.status : 'failed';
        m.error = d.msg.reason || '';
        m.errcode = d.msg.errcode;
        this.render(th, m);
      }
      return false;
    }
    const out = d.direction === 'out';
    const known = th.messages.get(d.id);
    const m = known || { id: d.id, out };
    const before = known && `${m.seq}|${m.state}`;
    m.seq = seq || m.seq;
    m.data = known?.local ? { ...d, msg: { ...d.msg } } : d;
    if (!known) {
      m.state = out ? (d.status === 'sending' ? 'sending' : 'sent') : undefined;
      th.messages.set(d.id, m);
    } else if (out && m.state === 'sending' && d.status !== 'sending') {
      m.state = 'sent';
    } else if (out && m.state === 'failed' && m.lost) {
      // It was stored after all: the copy (or the status frame to come) tells the outcome.
      m.state = d.status === 'sending' ? 'sending' : 'sent';
      m.error = '';
      m.lost = false;
    }
    const isNew = !known || !this.nodes.has(m.id);
    // A page that brings a message already shown leaves its bubble alone (focus stays).
    if (th.contact === state.current && (isNew || before !== `${m.seq}|${m.state}`)) {
      const below = live && isNew && !out && !this.#stuck();
      this.render(th, m);
      if (below) {
        th.newBelow += 1;
        this.#showBelow(th);
      }
    }
    return !known;
  }

  setWindow(th, w) {
    th.window = w;
    th.windowVersion += 1;
    if (th.contact === state.current) this.renderWindow(th);
  }

  // --- the open conversation ------------------------------------------------------------------

  /** Show `contact`'s conversation: what is known at once, at its newest message. */
  show(th) {
    this.nodes.clear();
    this.box.dataset.contact = th.contact;
    this.inner.replaceChildren();
    th.newBelow = 0;
    this.#clearBelow();
    const msgs = [...th.messages.values()].sort(bySeq);
    this.inner.append(...msgs.map((m) => this.#node(th, m)));
    this.#olderHint(th);
    this.renderWindow(th);
    this.toBottom();
  }

  clear() {
    this.nodes.clear();
    delete this.box.dataset.contact;
    this.inner.replaceChildren();
    this.#clearBelow();
    this.renderWindow(null);
  }

  /** The newest page of a conversation opened for the first time (the list's start may
   *  hold only part of it). */
  async loadNewest(th) {
    if (th.opened) return;
    th.opened = true;
    const page = await this.#page(th, undefined);
    if (page && page.next_before === null) th.complete = true;
    if (th.contact === state.current) this.#olderHint(th);
  }

  /** Older messages, until some not shown yet appear (a page may hold only messages the
   *  list's start already brought), keeping the place: the message on top stays put. */
  async loadOlder() {
    const th = state.current === null ? null : thread(state.current);
    if (!th || th.complete || th.loading) return;
    th.loading = true;
    this.#olderHint(th);
    try {
      let added = 0;
      for (let i = 0; i < MAX_EMPTY_PAGES && !added && !th.complete; i += 1) {
        const before = Number.isFinite(th.minSeq) ? th.minSeq : undefined;
        const page = await this.#page(th, before, { keepPlace: true });
        if (!page) break;
        added = page.added;
        if (page.next_before === null) th.complete = true;
      }
    } finally {
      th.loading = false;
    }
    if (th.contact !== state.current) return;
    this.#olderHint(th);
    // Still at the top (short pages): go on.
    if (!th.complete && this.box.scrollTop < OLDER_PX) requestAnimationFrame(() => this.loadOlder());
  }

  async #page(th, before, { keepPlace = false } = {}) {
    let j;
    try {
      const r = await fetch(this.client.url(`${P}/history`, { contact_id: th.contact, limit: 50, before }), { headers: this.client.headers() });
      if (!r.ok) return null;
      j = await r.json();
    } catch {
      return null;
    }
    const shown = th.contact === state.current;
    const anchor = keepPlace && shown ? this.inner.querySelector('[data-id]') : null;
    const top = anchor ? anchor.offsetTop - this.box.scrollTop : 0;
    let added = 0;
    for (const f of j.data.messages) if (this.ingest(f)) added += 1;
    const seqs = j.data.messages.map((f) => Number(f.data?.seq || 0)).filter(Boolean);
    if (seqs.length) th.minSeq = Math.min(th.minSeq, ...seqs);
    // At the newest message (all of it fits), stay there; else the top message stays put.
    if (this.#stuck()) this.#keepBottom();
    else if (anchor?.isConnected) this.box.scrollTop = anchor.offsetTop - top;
    return { added, next_before: j.data.next_before ?? null };
  }

  #olderHint(th) {
    const text = th.loading ? t('older.loading') : th.complete ? t('older.none') : t('older.more');
    this.older.textContent = text;
    this.older.dataset.key = th.loading ? 'older.loading' : th.complete ? 'older.none' : 'older.more';
  }

  /** A message's bubble, created or brought up to date, in seq order. */
  render(th, m) {
    if (th.contact !== state.current) return;
    const old = this.nodes.get(m.id);
    const node = this.#node(th, m);
    if (old?.isConnected) {
      old.replaceWith(node);
      this.nodes.set(m.id, node);
      return;
    }
    const seq = m.seq || Infinity;
    let after = null;
    if (seq !== Infinity) {
      // From the end: new messages are usually the newest.
      for (let n = this.inner.lastElementChild; n; n = n.previousElementSibling) {
        const s = Number(n.dataset.seq || Infinity);
        if (s <= seq) break;
        after = n;
      }
    }
    this.inner.insertBefore(node, after);
    // The agent's own new reply: to the bottom, wherever the view was.
    if (m.mine) this.toBottom();
    else this.#keepBottom();
  }

  /** A retried message got a new id: its bubble stays. */
  rekey(oldId, newId) {
    const n = this.nodes.get(oldId);
    if (!n) return;
    this.nodes.delete(oldId);
    this.nodes.set(newId, n);
    n.dataset.id = newId;
  }

  /** All bubbles again (the language changed, or the window opened or closed: Retry). */
  refresh(th, only = () => true) {
    for (const m of th.messages.values()) if (only(m) && this.nodes.has(m.id)) this.render(th, m);
    this.#olderHint(th);
    this.#showBelow(th);
  }

  #node(th, m) {
    const d = m.data;
    const attrs = { 'data-id': m.id, 'data-seq': m.seq || undefined };
    let node;
    if (d.msg_type === 'note') {
      // An internal note (105): apart from the messages, never sent to the follower.
      node = el('div', { class: 'note', ...attrs },
        el('span', { class: 'when' }, t('note.label'), ' · ', data(d.name), ' · ', clock(d.send_time)),
        el('div', { class: 'bubble', translate: 'no' }, linkify(d.msg?.text || '')));
    } else if (d.msg_type === 'conversation') {
      node = el('p', { class: 'notice', 'data-event': `conv.${d.msg?.action}`, ...attrs }, convNotice(d.msg || {}), ' · ', clock(d.send_time));
    } else if (d.msg_type === 'event' || d.msg_type === 'system') {
      node = el('p', { class: 'notice', 'data-event': d.msg?.event || d.msg_type, ...attrs }, notice(d), ' · ', clock(d.send_time));
    } else {
      const colleague = m.out && d.name && d.name !== this.client.userid ? [data(d.name), ' · '] : null;
      const who = m.out ? t('alt.out') : t('alt.in', { who: th.contact });
      node = el('div', { class: `msg ${m.out ? 'out' : 'in'}`, 'data-state': m.out ? m.state : undefined, ...attrs },
        el('div', { class: 'bubble', translate: 'no' }, body(d, { media: this.media, zoom: this.onZoom, alt: who, local: m.local })),
        el('span', { class: 'when' }, colleague, clock(d.send_time), m.out ? ' · ' : null, m.out ? this.#stateLine(th, m) : null));
    }
    this.nodes.set(m.id, node);
    return node;
  }

  #stateLine(th, m) {
    if (m.state === 'sending') return el('span', { class: 'sending' }, t('msg.sending'));
    if (m.state === 'queued') return el('span', { class: 'sending' }, t('msg.queued'));
    if (m.state === 'failed') {
      const reason = m.errcode === 45015 || m.errcode === 45047 ? t(`err.${m.errcode}`)
        : m.errorKey ? t(m.errorKey) : m.error ? data(m.error) : t('err.notdelivered');
      // No Retry while WeChat would refuse it again: the window is closed.
      const retry = windowOpen(th.window) ? el('button', { type: 'button', class: 'retry', onclick: () => this.onRetry(th, m) }, t('retry')) : null;
      return el('span', { class: 'failed' }, t('msg.failed'), reason, retry);
    }
    return el('span', {}, t(m.state === 'delivered' ? 'msg.delivered' : 'msg.sent'));
  }

  // --- where the view is ------------------------------------------------------------------------

  #gap() {
    return this.box.scrollHeight - this.box.scrollTop - this.box.clientHeight;
  }

  /** At the newest message: the agent has not moved the view since it was put there (the
   *  wheel that does comes before its scroll event, which comes with the next frame). */
  #stuck() {
    // A wheel that scrolled nothing (at the top, or all of it fits) is soon forgotten.
    return this.stick && !(this.user && performance.now() - this.userAt < USER_MS);
  }

  #keepBottom() {
    if (this.#stuck()) this.box.scrollTop = this.box.scrollHeight;
  }

  toBottom() {
    this.stick = true;
    this.user = false;
    this.box.scrollTop = this.box.scrollHeight;
    this.#clearBelow();
  }

  #showBelow(th) {
    if (!th?.newBelow) return;
    this.below.hidden = false;
    this.below.textContent = t('new.below', { n: th.newBelow });
  }

  #clearBelow() {
    if (state.current !== null) thread(state.current).newBelow = 0;
    this.below.hidden = true;
  }

  // --- the WeChat window ------------------------------------------------------------------------

  /** The window line and the reply box: called on every change of the window and when it
   *  runs out (a timer at `closes_at`), not only on a periodic redraw. */
  renderWindow(th) {
    const p = $('window');
    const closed = $('closed');
    clearTimeout(this.timer);
    const w = th?.window;
    if (!w || th.contact !== state.current) {
      p.hidden = true;
      closed.hidden = true;
      this.#setOpen(th, true);
      return;
    }
    const now = Date.now() / 1000;
    const left = w.closes_at - now;
    const open = windowOpen(w);
    p.hidden = false;
    p.className = open ? 'window' : 'window closed';
    p.textContent = windowLine(w, now);
    closed.hidden = open;
    closed.textContent = open ? '' : left <= 0 ? t('closed.time') : t('closed.quota', { quota: w.quota });
    this.#setOpen(th, open);
    // The countdown's next minute, or the moment a window closes.
    const soonest = Math.min(left, ...openWindows(w, now).map((x) => x.closes_at - now));
    if (open) this.timer = setTimeout(() => this.renderWindow(th), Math.min(60_000, Math.max(1000, soonest * 1000 + 50)));
  }

  #setOpen(th, open) {
    if (th && th.wasOpen !== open) {
      const first = th.wasOpen === undefined;
      th.wasOpen = open;
      // Retry is offered only while the window is open.
      if (!first) this.refresh(th, (m) => m.state === 'failed');
    }
    this.onWindow(open);
  }
}

/** The windows of `w` (the gateway's `windows`) a reply can use at `now`. */
const openWindows = (w, now) => (Array.isArray(w?.windows) ? w.windows : []).filter((x) => x.closes_at > now && x.remaining > 0);

/** The window line: the window a reply can use; when WeChat's windows overlap (48 h after a
 *  message, a minute after a click), each with its time and the replies left in it. */
export function windowLine(w, now = Date.now() / 1000) {
  if (!windowOpen(w, now)) return t('window.closed');
  const each = openWindows(w, now);
  if (each.length < 2) return t('window.open', { left: duration(w.closes_at - now), remaining: w.remaining, quota: w.quota });
  return each.map((x) => t('window.each', { kind: t(`window.kind.${x.kind}`), left: duration(x.closes_at - now), remaining: x.remaining, quota: x.quota })).join(' · ');
}

/** A conversation's change (104) in words (names as data). */
export function convNotice(m) {
  const p = { by: m.by || '', to: m.to || '' };
  const line = {
    claim: () => tData('conv.claim', { by: m.to || m.by || '' }),
    transfer: () => tData('conv.transfer', p),
    resolve: () => (m.by ? tData('conv.resolve', { by: m.by }) : [t('conv.resolve.auto')]),
    reopen: () => (m.by ? tData('conv.reopen', { by: m.by }) : [t('conv.reopen.auto')]),
    assign: () => tData('conv.assign', { to: p.to }),
    remark: () => (m.name ? tData('conv.remark', { by: m.by || '', name: m.name }) : tData('conv.remark.clear', { by: m.by || '' })),
    unassign: () => [t('conv.unassign')],
  }[m.action];
  const text = line ? line() : tData('conv.other', { action: m.action || '' });
  return m.note ? [...text, ...tData('conv.note', { note: m.note })] : text;
}

const bySeq = (a, b) => (a.seq || Infinity) - (b.seq || Infinity) || (a.data.send_time || 0) - (b.data.send_time || 0);
