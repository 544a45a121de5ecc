// The reply box: one draft per conversation, the byte count WeChat allows, sending (a send
// made while the gateway is away waits and goes when it is back), Retry in place, and
// images from the clip, a paste or a drop.

import { newId } from './client.js';
import { CardComposer } from './cards.js';
import { t } from './i18n.js';
import { templateTitles } from './messages.js';
import { state, thread, windowOpen } from './state.js';
import { $, data, el, utf8Bytes } from './util.js';

const P = '/im_component/wx_official_account';
/** WeChat's limit for a text reply (custom-send), in UTF-8 bytes. */
export const MAX_TEXT_BYTES = 2048;
/** The gateway's limit for an internal note, in characters. */
export const MAX_NOTE_CHARS = 4000;
/** How often the console tells a follower the agent is typing, at most. */
const TYPING_EVERY_MS = 5000;
/** Canned replies offered at once after `/`. */
const CANNED_SHOWN = 8;

export class Composer {
  constructor(client, { view, list }) {
    this.client = client;
    this.view = view;
    this.list = list;
    this.queue = [];          // [thread, message] waiting for the connection
    this.open = true;         // the window allows a reply
    this.text = $('text');
    this.counter = $('counter');
    $('composer').addEventListener('submit', (e) => {
      e.preventDefault();
      this.submit();
    });
    this.note = false;        // note mode: the box writes an internal note, never sent
    this.canned = [];         // the account's canned replies (GET P/canned)
    this.menu = $('canned-menu');
    this.choices = [];
    this.active = 0;
    this.text.addEventListener('keydown', (e) => {
      if (this.#menuKey(e)) return;
      if (e.key === 'Enter' && !e.shiftKey && !e.altKey && !e.isComposing) {
        e.preventDefault();
        this.submit();
      }
    });
    this.text.addEventListener('input', () => {
      if (state.current !== null) thread(state.current).draft = this.text.value;
      this.count();
      this.#offer();
      this.#typing();
    });
    this.text.addEventListener('blur', () => setTimeout(() => this.#closeMenu(), 150));
    $('note-mode').addEventListener('click', () => this.setNote(!this.note));
    $('file').addEventListener('change', () => {
      const file = $('file').files[0];
      $('file').value = '';
      if (file) this.image(file);
    });
    // A pasted or dropped image goes as the clip's does.
    this.text.addEventListener('paste', (e) => this.#files(e, e.clipboardData));
    const area = $('conversation');
    area.addEventListener('dragover', (e) => {
      if ([...(e.dataTransfer?.types || [])].includes('Files')) e.preventDefault();
    });
    area.addEventListener('drop', (e) => this.#files(e, e.dataTransfer));
    // A file dropped anywhere else is not opened by the browser in place of the console.
    for (const type of ['dragover', 'drop']) {
      addEventListener(type, (e) => [...(e.dataTransfer?.types || [])].includes('Files') && e.preventDefault());
    }
    client.addEventListener('state', (e) => e.detail === 'connected' && this.#flush());
    // The template picker, offered when the window has closed.
    this.templates = new Map(); // account → Promise of its templates: asked once per page
    this.tpl = [];              // the open conversation's account's templates
    $('template-open').addEventListener('click', () => this.#togglePicker());
    $('template-select').addEventListener('change', () => this.#fields());
    $('template-send').addEventListener('click', () => this.#sendTemplate());
    // Link cards, menus and mini program cards, offered while the window is open.
    this.cards = new CardComposer(this);
  }

  /** A WeChat follower sees "typing…" while the agent types: at most one a conversation
   *  every TYPING_EVERY_MS (WeChat shows it for 15 s; the gateway throttles too). Stored
   *  nowhere; a refusal (a closed window) is nobody's concern. */
  #typing() {
    if (this.note || !this.open || state.current === null || !this.text.value) return;
    const th = thread(state.current);
    if (!th.wechat || this.client.state !== 'connected') return;
    const now = Date.now();
    if (now - (th.typingAt || 0) < TYPING_EVERY_MS) return;
    th.typingAt = now;
    this.client.send({ contact_id: th.contact, msg_type: 'typing', msg: {} }).catch(() => {});
  }

  #files(e, dt) {
    const files = [...(dt?.files || [])].filter((f) => f.type.startsWith('image/'));
    if (!files.length || state.current === null || !this.open) return;
    e.preventDefault();
    for (const f of files) this.image(f);
  }

  /** The open conversation changed: its own draft. */
  show(th) {
    this.#closePicker();
    this.cards.close();
    this.text.value = th ? th.draft : '';
    this.count();
  }

  /** The byte count (WeChat followers: against WeChat's limit). */
  count() {
    const th = state.current === null ? null : thread(state.current);
    if (this.note) {
      const chars = [...this.text.value].length;
      const over = chars > MAX_NOTE_CHARS;
      this.counter.textContent = `${chars}/${MAX_NOTE_CHARS}`;
      this.counter.classList.toggle('over', over);
      this.counter.title = t('note.counter', { max: MAX_NOTE_CHARS });
      this.over = over;
      $('send').disabled = over;
      return !over;
    }
    const n = utf8Bytes(this.text.value);
    const limited = Boolean(th?.wechat || th?.window);
    const over = limited && n > MAX_TEXT_BYTES;
    this.counter.textContent = limited ? `${n}/${MAX_TEXT_BYTES}` : (n ? String(n) : '');
    this.counter.classList.toggle('over', over);
    this.counter.title = t('counter.title', { max: MAX_TEXT_BYTES });
    this.over = over;
    $('send').disabled = !this.open || over;
    return !over;
  }

  /** The window opened or closed: the box follows. */
  setOpen(open) {
    this.open = open;
    // A note is internal: the WeChat window does not restrict it.
    $('text').disabled = !open && !this.note;
    $('file').disabled = !open || this.note;
    // A WeChat follower's closed window: a template still reaches them.
    const th = state.current === null ? null : thread(state.current);
    const picker = !open && !this.note && Boolean(th?.wechat || th?.window);
    $('template').hidden = !picker;
    if (!picker) this.#closePicker();
    this.cards.offer(open && !this.note && Boolean(th?.wechat || th?.window));
    this.count();
  }

  // --- template messages: the account's templates, one input per field --------------------------

  #closePicker() {
    $('template-form').hidden = true;
    $('template-open').setAttribute('aria-expanded', 'false');
  }

  async #togglePicker() {
    if (!$('template-form').hidden || state.current === null) return this.#closePicker();
    const th = thread(state.current);
    $('template-form').hidden = false;
    $('template-open').setAttribute('aria-expanded', 'true');
    const err = $('template-error');
    err.hidden = true;
    try {
      const list = await this.#templates(th);
      if (state.current !== th.contact) return;
      this.tpl = list;
      $('template-select').replaceChildren(...list.map((x) => el('option', { value: x.template_id }, x.title || x.template_id)));
      this.#fields();
    } catch (e) {
      err.hidden = false;
      err.replaceChildren(t('template.failed'), data(e.message));
    }
  }

  /** GET P/templates, once per account (a failure is asked again next time). */
  #templates(th) {
    const key = th.wechat?.original_id || th.company || th.contact;
    let p = this.templates.get(key);
    if (!p) {
      p = fetch(this.client.url(`${P}/templates`, { contact_id: th.contact }), { headers: this.client.headers() }).then(async (r) => {
        const j = await r.json().catch(() => ({}));
        if (!r.ok) throw new Error(j.result?.message || String(r.status));
        const list = Array.isArray(j.data?.templates) ? j.data.templates : [];
        for (const x of list) templateTitles.set(x.template_id, x.title);
        return list;
      });
      p.catch(() => this.templates.delete(key));
      this.templates.set(key, p);
    }
    return p;
  }

  /** One input per field of the chosen template, named by its line in the template
   *  (`订单编号：{{keyword1.DATA}}` → 订单编号), its key and the template's title. */
  #fields() {
    const x = this.tpl.find((y) => y.template_id === $('template-select').value);
    const names = {};
    for (const m of String(x?.content || '').matchAll(/^(.*?)\{\{(\w+)\.DATA\}\}/gm)) names[m[2]] = m[1].replace(/[：:]\s*$/, '').trim();
    $('template-fields').replaceChildren(...(Array.isArray(x?.fields) ? x.fields : []).map((k) => el('label', { translate: 'no' },
      el('span', { translate: 'no' }, names[k] ? `${names[k]} · ${k}` : k), ' ',
      el('input', { 'data-field': k, autocomplete: 'off', 'aria-label': `${x.title} · ${names[k] || ''} ${k}` }))));
  }

  #sendTemplate() {
    const id = $('template-select').value;
    if (state.current === null || !id) return;
    const inputs = [...$('template-fields').querySelectorAll('input')];
    const values = Object.fromEntries(inputs.map((i) => [i.dataset.field, { value: i.value }]));
    const msg = { template_id: id, data: values };
    // Where a tap on it leads, if anywhere: a page, or a mini program's page (WeChat
    // prefers the mini program and falls back to the page).
    const url = $('template-url').value.trim();
    const appid = $('template-mp-appid').value.trim();
    const pagepath = $('template-mp-pagepath').value.trim();
    if (url) msg.url = url;
    if (appid || pagepath) msg.miniprogram = { appid, pagepath };
    for (const i of [...inputs, $('template-url'), $('template-mp-appid'), $('template-mp-pagepath')]) i.value = '';
    this.#closePicker();
    this.send(thread(state.current), 'template', msg);
  }

  /** Note mode on or off: the box looks different and says so, and its text goes to the
   *  conversation's notes (`POST …/notes`), never to the follower. */
  setNote(on) {
    this.note = on;
    $('composer').classList.toggle('note', on);
    $('note-mode').setAttribute('aria-pressed', String(on));
    this.text.placeholder = t(on ? 'note.placeholder' : 'placeholder');
    this.text.dataset.i18nPlaceholder = on ? 'note.placeholder' : 'placeholder';
    $('compose-error').hidden = true;
    this.setOpen(this.open);
  }

  async #writeNote(th, text) {
    const err = $('compose-error');
    err.hidden = true;
    try {
      await this.list.act(th.contact, 'notes', { text });
    } catch (e) {
      err.hidden = false;
      err.replaceChildren(t('note.failed'), e.message);
      if (state.current === th.contact && !this.text.value) this.text.value = text;
      return;
    }
  }

  // --- canned replies: `/` in the box offers them -------------------------------------------

  setCanned(list) {
    this.canned = Array.isArray(list) ? list : [];
  }

  /** The box starts with `/`: the canned replies whose shortcut starts with, or whose text
   *  holds, what follows. */
  #offer() {
    const v = this.text.value;
    if (!v.startsWith('/') || v.includes('\n') || !this.canned.length || this.note) return this.#closeMenu();
    const q = v.slice(1).toLowerCase();
    this.choices = this.canned.filter((c) => c.shortcut.toLowerCase().startsWith(q) || c.text.toLowerCase().includes(q)).slice(0, CANNED_SHOWN);
    if (!this.choices.length) return this.#closeMenu();
    this.active = Math.min(this.active, this.choices.length - 1);
    this.menu.replaceChildren(...this.choices.map((c, i) => el('li', {
      role: 'option', id: `canned-${i}`, 'aria-selected': String(i === this.active),
      onmousedown: (e) => { e.preventDefault(); this.#pick(i); },
    }, el('b', { translate: 'no' }, `/${c.shortcut}`), ' ', el('span', { translate: 'no' }, c.text))));
    this.menu.hidden = false;
    this.text.setAttribute('aria-expanded', 'true');
    this.text.setAttribute('aria-activedescendant', `canned-${this.active}`);
  }

  #closeMenu() {
    this.menu.hidden = true;
    this.choices = [];
    this.active = 0;
    this.text.setAttribute('aria-expanded', 'false');
    this.text.removeAttribute('aria-activedescendant');
  }

  #pick(i) {
    const c = this.choices[i];
    if (!c) return;
    this.text.value = c.text;
    if (state.current !== null) thread(state.current).draft = c.text;
    this.#closeMenu();
    this.count();
    this.text.focus();
  }

  /** Keys while the menu is open: ↑ ↓ choose, Enter or Tab take, Esc closes. */
  #menuKey(e) {
    if (this.menu.hidden || e.isComposing) return false;
    const n = this.choices.length;
    if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      this.active = (this.active + (e.key === 'ArrowDown' ? 1 : n - 1)) % n;
      this.#offer();
    } else if ((e.key === 'Enter' && !e.shiftKey) || e.key === 'Tab') {
      this.#pick(this.active);
    } else if (e.key === 'Escape') {
      this.#closeMenu();
      e.stopPropagation();
    } else {
      return false;
    }
    e.preventDefault();
    return true;
  }

  submit() {
    const text = this.text.value;
    if (this.note) {
      if (!text.trim() || state.current === null || !this.count()) return;
      const th = thread(state.current);
      this.text.value = '';
      th.draft = '';
      this.count();
      this.#writeNote(th, text);
      return;
    }
    if (!text.trim() || state.current === null || !this.open || !this.count()) return;
    const th = thread(state.current);
    this.text.value = '';
    th.draft = '';
    this.count();
    this.send(th, 'text', { content: text });
  }

  /** A new outgoing message: shown at once, sent now or when the connection is back. */
  send(th, msg_type, msg, extra = {}) {
    const id = newId();
    const m = { id, out: true, mine: true, state: 'sending', local: extra.local, file: extra.file, data: { id, msg_type, msg, contact_id: th.contact, send_time: Math.floor(Date.now() / 1000), direction: 'out', name: this.client.userid } };
    th.messages.set(id, m);
    this.list.sending(th.contact, m.data);
    if (msg_type === 'image' && !msg.media_path) return this.#upload(th, m);
    this.#go(th, m);
    return m;
  }

  image(file) {
    if (state.current === null) return;
    const th = thread(state.current);
    this.send(th, 'image', {}, { local: URL.createObjectURL(file), file });
  }

  async #upload(th, m) {
    m.state = 'sending';
    this.view.render(th, m);
    try {
      const r = await fetch(this.client.url(`${P}/media`), { method: 'POST', body: m.file, headers: { ...this.client.headers(), 'content-type': m.file.type || 'application/octet-stream' } });
      const j = await r.json().catch(() => ({}));
      if (!r.ok) throw Object.assign(new Error(j.result?.message || `${r.status}`), { upload: true });
      m.data.msg = { media_path: j.data.media_path };
    } catch (e) {
      this.#failed(th, m, e, 'err.upload');
      return;
    }
    this.#go(th, m);
  }

  #go(th, m) {
    if (this.client.state !== 'connected') {
      // Not a failure: the client reconnects by itself, and this goes out then.
      m.state = 'queued';
      this.queue.push([th, m]);
      this.view.render(th, m);
      return;
    }
    m.state = 'sending';
    this.view.render(th, m);
    this.client.send({ contact_id: th.contact, msg_type: m.data.msg_type, msg: m.data.msg, id: m.id })
      .then(() => {
        if (m.state === 'sending') m.state = 'sent';
        this.view.render(th, m);
      })
      .catch((e) => {
        if (!e.frame && !e.lost && this.client.state !== 'connected') {
          // The socket went between the check and the send: wait for it.
          m.state = 'queued';
          this.queue.push([th, m]);
          this.view.render(th, m);
          return;
        }
        this.#failed(th, m, e);
      });
  }

  #failed(th, m, e, key) {
    m.state = 'failed';
    m.errorKey = key || (e.lost ? (e.message.startsWith('no answer') ? 'err.timeout' : 'err.lost') : '');
    m.error = e.frame?.result?.message || e.message || '';
    m.errcode = e.frame?.data?.errcode;
    m.lost = Boolean(e.lost);
    // Stored by the gateway and refused by WeChat: the same id would be answered from the
    // history, not sent again; a retry needs a new one (the bubble stays the same).
    m.stored = Number(e.frame?.data?.seq || 0) > 0;
    const w = m.errcode;
    if (w === 45015 || w === 45047) this.onRefused?.(th);
    this.view.render(th, m);
  }

  /** Retry a failed message in its own bubble. */
  retry(th, m) {
    if (m.state !== 'failed' || !windowOpen(th.window)) return;
    m.error = '';
    m.errorKey = '';
    m.errcode = undefined;
    if (m.stored) {
      const old = m.id;
      m.id = newId();
      m.data = { ...m.data, id: m.id };
      th.messages.delete(old);
      th.messages.set(m.id, m);
      this.view.rekey(old, m.id);
      m.stored = false;
    }
    if (m.data.msg_type === 'image' && !m.data.msg?.media_path) return this.#upload(th, m);
    this.#go(th, m);
  }

  /** The latest failed message of the open conversation, retried (a shortcut). */
  retryLatest() {
    if (state.current === null) return;
    const th = thread(state.current);
    const m = [...th.messages.values()].reverse().find((x) => x.state === 'failed');
    if (m) this.retry(th, m);
  }

  #flush() {
    for (const [th, m] of this.queue.splice(0)) this.#go(th, m);
  }
}
