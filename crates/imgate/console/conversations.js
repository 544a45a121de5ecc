// The conversation list's data source: which conversations there are, each one's last
// message, unread count and account. Where the gateway answers the team inbox's
// `GET P/conversations` index (docs/inbox.md), the list is the server's: paged with its
// cursor as the agent scrolls, in its order (waiting first, the longest waiting first),
// unread counted by the server (a reload keeps it), one view (待回复, mine, unassigned,
// all) and a search at a time; live frames update it (each change asks the server for that
// one conversation, so the row is what the server would list). Where it answers 404 (a
// gateway without the inbox), the browser builds the list from `P/history` and the live
// frames. Conversations between two gateway users are not in the index: with it, they
// join the list as their live messages come. Nothing outside this module knows which.
//
// Interface (what list.js and app.js use):
//   const list = new Conversations(client);
//   await list.load()            -> the frames it read (app.js fills the message views from them)
//   list.ingest(frame, {live, open, hidden})   a message, status or 104 frame; emits 'change'
//   list.more()                  the next page of the index (the list was scrolled down)
//   list.setView(v), list.setQuery(q)          another view or search: 'reset', then rows
//   list.markRead(contact)       the agent has seen it
//   list.act(contact, action, body)            claim | transfer | resolve | reopen | notes
//   list.setAccount(contact, {company, wechat})
//   list.setName(contact, name)  the follower's name (their remark) is now `name`
//   list.forget(contact)         the person was erased (frame 107): the row goes
//   list.get(contact)            -> Summary | undefined
//   list.compare(a, b)           the list's order
//   events: 'change' {contact}, 'remove' {contact}, 'reset', 'counts'
//
// A Summary: { contact, name (a follower's remark, or ''), company, wechat, unread,
//              last: { id, seq, time, out, name, msg_type, msg },
//              and with the index: state, assignee, waiting_since, local (not in the index) }

const P = '/im_component/wx_official_account';
/** One page of the index. */
const PAGE = 50;
/** Changes that come together (a burst of messages) ask the server once. */
const SETTLE_MS = 150;
/** A conversation between two gateway users reaches the index up to a second after its
 *  message (docs/inbox.md): a 404 is asked again this much later, a few times. */
const INDEX_LAG_MS = 1500;
const INDEX_LAG_TRIES = 3;
/** Contacts of the newest history page asked about at the start (see load). */
const MAX_ASKED = 50;

export class Conversations extends EventTarget {
  constructor(client) {
    super();
    this.client = client;
    this.items = new Map();
    /** With the server's index only: the view (waiting|mine|unassigned|all) and search. */
    this.view = 'all';
    this.q = '';
    /** Its counts per view, as the index last answered them. */
    this.counts = {};
    /** The next page's cursor, null when the last page is in. */
    this.next = null;
    this.paging = null;
    /** Bumped by each view or search: an answer for an older one is dropped. */
    this.gen = 0;
    this.pending = new Map();   // contact → a refresh in flight (and whether to ask again)
    this.unlisted = new Map();  // contact → [[frame, opts]] not listed, while the server is asked
    this.lagging = new Map();   // contact → 404s so far (the index may not have it yet)
    this.laterTimers = new Map(); // contact → the refresh once the index has caught up
    this.countsTimer = null;
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
      c = { contact, name: '', company: '', wechat: false, unread: 0, last: null };
      this.items.set(contact, c);
    }
    return c;
  }

  #changed(contact) {
    this.dispatchEvent(new CustomEvent('change', { detail: { contact } }));
  }

  #fetch(path, params, init = {}) {
    const headers = { ...this.client.headers(), ...(init.body ? { 'content-type': 'application/json' } : {}) };
    return fetch(this.client.url(path, params), { ...init, headers });
  }

  /** The list to start with: the server's index where the gateway has one (the team
   *  inbox), else the newest messages of all conversations (one page of history).
   *  Returns the history frames it read ([] with the index: each conversation then loads
   *  its messages when opened). */
  async load() {
    const indexed = await this.#page();
    const r = await fetch(this.client.url(`${P}/history`, { limit: 200 }), { headers: this.client.headers() });
    if (!r.ok) return [];
    const frames = (await r.json()).data.messages;
    if (!indexed) {
      for (const f of frames) this.ingest(f);
      return frames;
    }
    // With the index, the newest page of history only finds conversations between gateway
    // users (which the index does not keep): each contact not listed is asked about once;
    // a 404 lists it from its frames.
    const asked = new Set();
    for (const f of frames) {
      const contact = f.data?.contact_id || '';
      const code = Number(f.result?.code);
      if (this.items.has(contact) || !(code === 102 || code >= 1000)) continue;
      if (!asked.has(contact) && asked.size >= MAX_ASKED) continue;
      asked.add(contact);
      this.#unlisted(contact, f, {});
    }
    return frames;
  }

  #unlisted(contact, frame, opts) {
    const list = this.unlisted.get(contact);
    if (list) {
      list.push([frame, opts]);
      return;
    }
    this.unlisted.set(contact, [[frame, opts]]);
    this.refresh(contact);
  }

  /** One page of `GET P/conversations` (the first, or the one after `this.next`). False
   *  where the gateway has no index (404) or did not answer. */
  async #page(cursor) {
    const gen = this.gen;
    let r;
    try {
      r = await this.#fetch(`${P}/conversations`, { view: this.view, q: this.q || undefined, limit: PAGE, cursor });
    } catch {
      return false;
    }
    if (!r.ok) return false;
    const j = await r.json().catch(() => null);
    const list = j?.data?.conversations;
    if (!Array.isArray(list) || gen !== this.gen) return false;
    this.server = true;
    this.next = j.data.next ?? null;
    this.#counts(j.data.counts);
    for (const o of list) this.#fromServer(o);
    return true;
  }

  /** The next page, if there is one and none is on its way. Resolves when it is in. */
  more() {
    if (!this.server || this.next === null) return Promise.resolve(false);
    this.paging ||= this.#page(this.next).finally(() => (this.paging = null));
    return this.paging;
  }

  /** Whether the index has more pages than the list shows. */
  get hasMore() {
    return Boolean(this.server && this.next !== null);
  }

  #counts(c) {
    if (!c) return;
    this.counts = c;
    this.dispatchEvent(new CustomEvent('counts'));
  }

  /** The counts again, once a burst of changes has settled. */
  #recount() {
    clearTimeout(this.countsTimer);
    this.countsTimer = setTimeout(async () => {
      try {
        const r = await this.#fetch(`${P}/conversations`, { view: this.view, q: this.q || undefined, limit: 1 });
        if (r.ok) this.#counts((await r.json()).data?.counts);
      } catch { /* the next change asks again */ }
    }, SETTLE_MS);
  }

  /** Another view: the list starts again from the index. */
  async setView(view) {
    if (!this.server) return;
    this.view = view;
    await this.#restart();
  }

  /** A search (`q`, empty for none): the list starts again from the index. */
  async setQuery(q) {
    if (!this.server || q === this.q) return;
    this.q = q;
    await this.#restart();
  }

  async #restart() {
    this.gen += 1;
    this.next = null;
    this.paging = null;
    this.items.clear();
    this.dispatchEvent(new CustomEvent('reset'));
    await this.#page();
  }

  /** Whether the current view holds `c` (the server's rule, docs/inbox.md). */
  holds(c) {
    if (c.local) return this.view === 'all' && !this.q;
    const open = c.state !== 'resolved';
    switch (this.view) {
      case 'mine': return c.assignee === this.client.userid;
      case 'unassigned': return !c.assignee && open;
      case 'waiting': return open && c.waiting_since != null;
      default: return true;
    }
  }

  /** An action on a conversation (claim | transfer | resolve | reopen | notes | read): the
   *  conversation as the server answers it, or an Error with the status and, for a 409,
   *  `assignee` (who holds it). */
  async act(contact, action, body) {
    const r = await this.#fetch(`${P}/conversations/${encodeURIComponent(contact)}/${action}`, {}, {
      method: 'POST',
      body: body ? JSON.stringify(body) : undefined,
    });
    const j = await r.json().catch(() => ({}));
    if (!r.ok) throw Object.assign(new Error(j.result?.message || String(r.status)), { status: r.status, assignee: j.data?.assignee });
    if (j.data?.contact_id && this.items.has(contact)) this.#fromServer(j.data);
    this.#recount();
    return j.data;
  }

  /** The server's word on one conversation, asked once per burst of changes. A 404 is a
   *  conversation the index does not keep (between gateway users): it stays local. */
  refresh(contact) {
    const p = this.pending.get(contact);
    if (p) {
      p.again = true;
      return;
    }
    const entry = { again: false };
    this.pending.set(contact, entry);
    const gen = this.gen;
    setTimeout(async () => {
      try {
        const r = await this.#fetch(`${P}/conversations/${encodeURIComponent(contact)}`);
        if (gen !== this.gen) return;
        const waiting = this.unlisted.get(contact);
        this.unlisted.delete(contact);
        if (r.ok) {
          this.lagging.delete(contact);
          const o = (await r.json()).data;
          if (o?.contact_id !== undefined && (this.items.has(contact) || this.#inRange(o))) this.#fromServer(o);
        } else {
          // 404: not in the index (yet: a pair of gateway users lands a second late); any
          // other answer (a token that just expired, a node restarting): the server could
          // not say. Either way what came is shown, and the server asked again later.
          if (waiting && !this.items.has(contact) && this.holds({ local: true })) {
            this.#ensure(contact).local = true;
            for (const [f, opts] of waiting) this.ingest(f, opts);
          }
          const tries = (this.lagging.get(contact) || 0) + 1;
          this.lagging.set(contact, tries);
          if (tries < INDEX_LAG_TRIES) setTimeout(() => gen === this.gen && this.refresh(contact), INDEX_LAG_MS);
        }
      } catch { /* the next frame asks again */ } finally {
        this.pending.delete(contact);
        if (entry.again) this.refresh(contact);
      }
    }, SETTLE_MS);
  }

  /** A conversation not listed yet belongs in the list now if it sorts before the last
   *  loaded row (else a later page brings it). */
  #inRange(o) {
    if (this.next === null) return true;
    const c = summary(o);
    for (const x of this.items.values()) if (!x.local && this.compare(c, x) > 0) return false;
    return true;
  }

  #fromServer(o) {
    const contact = o.contact_id || '';
    const c = this.#ensure(contact);
    const s = summary(o);
    if (s.company) c.company = s.company;
    if (s.wechat) c.wechat = true;
    if (s.wechat) c.name = s.name;
    Object.assign(c, { unread: s.unread, state: s.state, assignee: s.assignee, waiting_since: s.waiting_since, at: s.at, direct: s.direct, local: false });
    // A live message already shown may be newer than the server's answer (it was asked
    // before the message was committed): keep the newer.
    if (s.last && (!c.last || s.last.seq >= (c.last.seq || 0))) c.last = c.last?.id === s.last.id ? { ...s.last, msg: c.last.msg, name: c.last.name } : s.last;
    if (!this.holds(c)) {
      this.items.delete(contact);
      this.dispatchEvent(new CustomEvent('remove', { detail: { contact } }));
      return;
    }
    this.#changed(contact);
  }

  /** A frame: a message updates its conversation's last message; a live one from the
   *  follower counts as unread unless the agent is looking at it (`open` and not `hidden`).
   *  With the index, every live change also asks the server for the conversation. */
  ingest(frame, { live = false, open = false, hidden = false } = {}) {
    const d = frame.data || {};
    const code = Number(frame.result?.code);
    const contact = d.contact_id || '';
    if (code === 107) return this.forget(contact);
    if (code === 105 || code === 106) return;
    if (code === 103 || code === 104) {
      if (code === 104 && this.items.has(contact)) {
        const c = this.items.get(contact);
        if (d.msg?.state) c.state = d.msg.state;
        if (d.msg && 'assignee' in d.msg) c.assignee = d.msg.assignee ?? null;
        // An agent named the follower (their remark): every console names them at once.
        if (d.msg?.action === 'remark' && typeof d.msg.name === 'string') c.name = d.msg.name;
        this.#changed(contact);
      }
      if (live && this.server) {
        this.refresh(contact);
        this.#recount();
      }
      return;
    }
    const out = d.direction === 'out';
    const known = this.items.has(contact);
    if (this.server && live && !known) {
      // Not listed: the server says whether it belongs (and where); a gateway user's
      // conversation (404) is listed from its frames, as without the index.
      this.#unlisted(contact, frame, { live, open, hidden });
      this.#recount();
      return;
    }
    const c = this.#ensure(contact);
    if (d.company_id) c.company = d.company_id;
    // A WeChat follower's own frame (it carries their window) names them: their remark.
    if (!out && d.window !== undefined && typeof d.name === 'string' && c.name !== d.name) {
      c.name = d.name;
      c.wechat = true;
      this.#changed(contact);
    }
    const last = lastOf(d);
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
    if (live && !out && open && !hidden && this.server && !c.local) this.#read(contact, last.seq);
    if (changed) this.#changed(c.contact);
    if (live && this.server && !c.local) {
      this.refresh(contact);
      // Between gateway users the index has the message a second later: ask once more then.
      if (c.direct) this.#later(contact);
      this.#recount();
    }
  }

  /** One more refresh of `contact` once the index has caught up (debounced). */
  #later(contact) {
    clearTimeout(this.laterTimers.get(contact));
    const gen = this.gen;
    this.laterTimers.set(contact, setTimeout(() => {
      this.laterTimers.delete(contact);
      if (gen === this.gen) this.refresh(contact);
    }, INDEX_LAG_MS));
  }

  /** The person was erased: their row goes, and whatever was waiting to be listed. */
  forget(contact) {
    this.unlisted.delete(contact);
    if (!this.items.delete(contact)) return;
    this.dispatchEvent(new CustomEvent('remove', { detail: { contact } }));
    if (this.server) this.#recount();
  }

  /** A message the agent is sending (before the gateway has it). */
  sending(contact, data) {
    const c = this.items.get(contact);
    if (this.server && !c) return;
    this.ingest({ data: { ...data, direction: 'out' }, result: { code: 1001 } });
  }

  markRead(contact) {
    const c = this.items.get(contact);
    if (c && c.unread) {
      c.unread = 0;
      this.#changed(contact);
      if (this.server && !c.local) this.#read(contact, c.last?.seq);
    }
  }

  /** Unread is the server's: tell it the agent has seen the conversation up to `seq`. */
  #read(contact, seq) {
    this.#fetch(`${P}/conversations/${encodeURIComponent(contact)}/read`, {}, {
      method: 'POST',
      body: JSON.stringify(seq ? [{ seq }] : []),
    }).then(() => this.#recount()).catch(() => {});
  }

  setAccount(contact, { company, wechat }) {
    const c = this.items.get(contact);
    if (!c) return;
    if (company) c.company = company;
    if (wechat) c.wechat = true;
    if (c.last) this.#changed(contact);
  }

  setName(contact, name) {
    const c = this.items.get(contact);
    if (!c || c.name === name) return;
    c.name = name;
    this.#changed(contact);
  }

  /** With the index, the server's order: waiting first (the longest waiting first), then
   *  the latest message first. Without it, newest first. */
  compare(a, b) {
    if (this.server) {
      const wa = a.state !== 'resolved' && a.waiting_since != null;
      const wb = b.state !== 'resolved' && b.waiting_since != null;
      if (wa !== wb) return wa ? -1 : 1;
      if (wa) return a.waiting_since - b.waiting_since || (a.contact < b.contact ? -1 : 1);
      const ta = a.at ?? a.last?.time ?? 0;
      const tb = b.at ?? b.last?.time ?? 0;
      // Within a second, a gateway user's conversation (not the server's) goes by its seq.
      const local = (a.local || b.local) && (b.last?.seq || 0) - (a.last?.seq || 0);
      return tb - ta || local || (a.contact < b.contact ? -1 : 1);
    }
    return (b.last?.time || 0) - (a.last?.time || 0) || (b.last?.seq || Infinity) - (a.last?.seq || Infinity) || (a.contact < b.contact ? -1 : 1);
  }
}

function lastOf(d) {
  return { id: d.id, seq: Number(d.seq || 0), time: Number(d.send_time || 0), out: d.direction === 'out', name: d.name || '', msg_type: d.msg_type, msg: d.msg || {} };
}

/** The index's conversation object as a Summary. */
function summary(o) {
  const l = o.last_message;
  return {
    contact: o.contact_id || '',
    name: o.profile?.name || '',
    company: o.company_id || '',
    wechat: Boolean(o.appid),
    direct: o.kind === 'user',
    unread: Number(o.unread || 0),
    state: o.state,
    assignee: o.assignee ?? null,
    waiting_since: o.waiting_since ?? null,
    at: Number(o.last_at || 0),
    last: l ? { id: l.id, seq: Number(l.seq || 0), time: Number(o.last_at || 0), out: l.direction === 'out', name: '', msg_type: l.msg_type, msg: { content: l.preview || '' } } : null,
  };
}
