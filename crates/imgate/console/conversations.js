// The conversation list's data source: which conversations there are, each one's last
// message, unread count and account. Where the gateway answers the team inbox's
// `GET P/conversations` index, the list starts from it (and unread is the server's);
// where it answers 404 (today's gateway), the browser builds the list from `P/history`
// and the live frames. Nothing outside this module knows which.
//
// Interface (what list.js and app.js use):
//   const list = new Conversations(client);
//   await list.load()            -> the frames it read (app.js fills the message views from them)
//   list.ingest(frame, {live, open, hidden})   a message or status frame; emits 'change'
//   list.markRead(contact)       the agent has seen it
//   list.setAccount(contact, {company, wechat})
//   list.get(contact)            -> Summary | undefined
//   list.compare(a, b)           the list's order (newest first)
//   list.addEventListener('change', (e) => e.detail.contact)
//
// A Summary: { contact, company, wechat, unread, last: { id, seq, time, out, name, msg_type, msg } }

const P = '/im_component/wx_official_account';

export class Conversations extends EventTarget {
  constructor(client) {
    super();
    this.client = client;
    this.items = new Map();
    /** The team inbox's view (with the server's index only): waiting|mine|unassigned|all. */
    this.view = 'all';
    /** Its counts per view, as the index answered them. */
    this.counts = {};
  }

  get(contact) {
    return this.items.get(contact);
  }

  get size() {
    return this.items.size;
  }

  #ensure(contact) {
    let c = this.items.get(contact);
    if (!c) {
      c = { contact, company: '', wechat: false, unread: 0, last: null };
      this.items.set(contact, c);
    }
    return c;
  }

  #changed(contact) {
    this.dispatchEvent(new CustomEvent('change', { detail: { contact } }));
  }

  /** The list to start with: the server's index where the gateway has one (the team
   *  inbox), else the newest messages of all conversations (one page of history).
   *  Returns the history frames it read ([] with the index: each conversation then loads
   *  its messages when opened). */
  async load() {
    if (await this.#index()) return [];
    const r = await fetch(this.client.url(`${P}/history`, { limit: 200 }), { headers: this.client.headers() });
    if (!r.ok) return [];
    const frames = (await r.json()).data.messages;
    for (const f of frames) this.ingest(f);
    return frames;
  }

  /** `GET P/conversations` (docs: the team-inbox contract). A 404 is a gateway without
   *  it: the list is then built here, as before. Not exercised by the tests yet: today's
   *  gateway answers 404. */
  async #index() {
    let r;
    try {
      r = await fetch(this.client.url(`${P}/conversations`, { view: this.view, limit: 200 }), { headers: this.client.headers() });
    } catch {
      return false;
    }
    if (!r.ok) return false;
    const j = await r.json().catch(() => null);
    const list = j?.data?.conversations;
    if (!Array.isArray(list)) return false;
    this.server = true;
    this.counts = j.data.counts || {};
    for (const o of list) this.#fromServer(o);
    return true;
  }

  // --- the team inbox (server index only; untested until the gateway has it) ----------------

  /** Another view: the list starts again from the index. */
  async setView(view) {
    if (!this.server) return;
    this.view = view;
    this.items.clear();
    this.dispatchEvent(new CustomEvent('reset'));
    await this.#index();
  }

  /** claim | transfer | resolve | reopen: the conversation as the server answers it, or an
   *  Error whose `assignee` names who holds it (409). */
  async act(contact, action, body) {
    const r = await fetch(this.client.url(`${P}/conversations/${encodeURIComponent(contact)}/${action}`), {
      method: 'POST',
      headers: { ...this.client.headers(), 'content-type': 'application/json' },
      body: body ? JSON.stringify(body) : undefined,
    });
    const j = await r.json().catch(() => ({}));
    if (!r.ok) throw Object.assign(new Error(j.result?.message || String(r.status)), { status: r.status, assignee: j.data?.assignee });
    if (j.data?.contact_id) this.#fromServer(j.data);
    return j.data;
  }

  #fromServer(o) {
    const c = this.#ensure(o.contact_id || '');
    if (o.company_id) c.company = o.company_id;
    if (o.appid) c.wechat = true;
    c.unread = Number(o.unread || 0);
    Object.assign(c, { state: o.state, assignee: o.assignee ?? null, waiting_since: o.waiting_since ?? null });
    const l = o.last_message;
    if (l) {
      c.last = { id: l.id, seq: Number(l.seq || 0), time: Number(o.last_at || 0), out: l.direction === 'out', name: '', msg_type: l.msg_type, msg: l.msg_type === 'text' ? { content: l.preview || '' } : {} };
    }
    this.#changed(c.contact);
  }

  /** A frame: a message updates its conversation's last message; a live one from the
   *  follower counts as unread unless the agent is looking at it (`open` and not `hidden`). */
  ingest(frame, { live = false, open = false, hidden = false } = {}) {
    const d = frame.data || {};
    if (Number(frame.result?.code) === 103) return;
    const c = this.#ensure(d.contact_id || '');
    if (d.company_id) c.company = d.company_id;
    const out = d.direction === 'out';
    const last = { id: d.id, seq: Number(d.seq || 0), time: Number(d.send_time || 0), out, name: d.name || '', msg_type: d.msg_type, msg: d.msg || {} };
    const newer = !c.last || c.last.id === d.id || last.time > c.last.time || (last.time === c.last.time && (last.seq || Infinity) >= (c.last.seq || 0));
    let changed = false;
    if (newer) {
      c.last = last;
      changed = true;
    }
    if (live && !out && (!open || hidden)) {
      c.unread += 1;
      changed = true;
    }
    if (changed) this.#changed(c.contact);
  }

  /** A message the agent is sending (before the gateway has it). */
  sending(contact, data) {
    this.ingest({ data: { ...data, direction: 'out' }, result: { code: 1001 } });
  }

  markRead(contact) {
    const c = this.items.get(contact);
    if (c && c.unread) {
      c.unread = 0;
      this.#changed(contact);
      // With the server's index, unread is the server's: tell it (untested, see #index).
      if (this.server && c.last?.seq) {
        fetch(this.client.url(`${P}/conversations/${encodeURIComponent(contact)}/read`), {
          method: 'POST',
          headers: { ...this.client.headers(), 'content-type': 'application/json' },
          body: JSON.stringify([{ seq: c.last.seq }]),
        }).catch(() => {});
      }
    }
  }

  setAccount(contact, { company, wechat }) {
    const c = this.#ensure(contact);
    if (company) c.company = company;
    if (wechat) c.wechat = true;
    if (c.last) this.#changed(contact);
  }

  /** Newest first. */
  compare(a, b) {
    return (b.last?.time || 0) - (a.last?.time || 0) || (b.last?.seq || Infinity) - (a.last?.seq || Infinity) || (a.contact < b.contact ? -1 : 1);
  }
}
