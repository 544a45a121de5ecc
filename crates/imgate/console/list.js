// The conversation list: one row per conversation, created, updated and moved one at a
// time as frames come (never rebuilt), so that keyboard focus and the row under the mouse
// stay put. While the pointer is over the list, rows keep their places (their text still
// updates); they move into order when it leaves. One tab stop: arrow keys move inside.

import { t } from './i18n.js';
import { $, clock, data, duration, el } from './util.js';

/** Load the next page of the index this close to the list's end. */
const MORE_PX = 300;
import { preview } from './messages.js';

export class ListView {
  constructor(source, { onOpen, userid }) {
    this.source = source;
    this.onOpen = onOpen;
    this.userid = userid;
    this.ul = $('conversations');
    this.rows = new Map();     // contact → { li, button, name, time, preview, badge, sr, account }
    this.order = [];           // contacts, in the list's order
    this.current = null;
    this.hover = false;
    this.dirty = false;
    source.addEventListener('change', (e) => this.update(e.detail.contact));
    // Another view of the team inbox: the rows start again.
    source.addEventListener('reset', () => {
      this.rows.clear();
      this.order = [];
      this.ul.replaceChildren();
      $('empty-list').hidden = false;
    });
    source.addEventListener('remove', (e) => this.remove(e.detail.contact));
    // The index comes in pages: the next one as the agent nears the end of the list.
    this.ul.addEventListener('scroll', () => this.more(), { passive: true });
    // The waiting clocks move on.
    setInterval(() => this.refresh(), 30_000);
    this.ul.addEventListener('pointerenter', () => (this.hover = true));
    this.ul.addEventListener('pointerleave', () => {
      this.hover = false;
      if (this.dirty) this.#reorder();
    });
    this.ul.addEventListener('keydown', (e) => this.#key(e));
    this.ul.addEventListener('focusin', (e) => e.target.matches('button[data-contact]') && this.#rove(e.target));
  }

  /** The contacts in the order shown. */
  contacts() {
    return [...this.ul.children].map((li) => li.dataset.contact);
  }

  /** The next page of the index while the list's end is in view (or near). */
  async more() {
    while (this.source.hasMore && this.ul.scrollHeight - this.ul.scrollTop - this.ul.clientHeight < MORE_PX) {
      const before = this.source.next;
      await this.source.more();
      if (this.source.next === before) break;
    }
  }

  remove(contact) {
    const r = this.rows.get(contact);
    if (!r) return;
    const focused = r.li.contains(document.activeElement);
    this.rows.delete(contact);
    this.order.splice(this.order.indexOf(contact), 1);
    r.li.remove();
    if (focused || !this.ul.querySelector('button[tabindex="0"]')) {
      const b = this.ul.querySelector('button');
      if (b) {
        this.#rove(b);
        if (focused) b.focus();
      }
    }
    $('empty-list').hidden = this.rows.size > 0;
  }

  update(contact) {
    const c = this.source.get(contact);
    if (!c || (!c.last && !this.source.server)) return;
    let r = this.rows.get(contact);
    const fresh = !r;
    if (fresh) r = this.#create(contact);
    this.#fill(r, c);
    // Its place in `order`: out, then in before the first that sorts after it.
    if (!fresh) this.order.splice(this.order.indexOf(contact), 1);
    let lo = 0;
    let hi = this.order.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.source.compare(this.source.get(this.order[mid]), c) <= 0) lo = mid + 1;
      else hi = mid;
    }
    this.order.splice(lo, 0, contact);
    $('empty-list').hidden = true;
    if (fresh) {
      const next = this.rows.get(this.order[lo + 1]);
      this.ul.insertBefore(r.li, next ? next.li : null);
      if (this.rows.size === 1 || !this.ul.querySelector('button[tabindex="0"]')) r.button.tabIndex = 0;
    } else if (this.hover) {
      this.dirty = true;
    } else {
      this.#place(r.li, this.rows.get(this.order[lo + 1])?.li ?? null);
    }
  }

  /** Every row again (the language changed). */
  refresh() {
    for (const contact of this.rows.keys()) this.#fill(this.rows.get(contact), this.source.get(contact));
  }

  select(contact) {
    const old = this.rows.get(this.current);
    if (old) old.button.setAttribute('aria-current', 'false');
    this.current = contact;
    const r = this.rows.get(contact);
    if (r) {
      r.button.setAttribute('aria-current', 'true');
      this.#rove(r.button);
    }
  }

  /** Focus the open conversation's row (or the first). */
  focus() {
    (this.rows.get(this.current)?.button || this.ul.querySelector('button'))?.focus();
  }

  /** The conversation `step` rows from the open one. */
  neighbour(step) {
    const list = this.contacts();
    if (!list.length) return null;
    const i = list.indexOf(this.current);
    return list[Math.min(list.length - 1, Math.max(0, i < 0 ? 0 : i + step))];
  }

  #create(contact) {
    const r = {
      name: el('span', { class: 'name', translate: 'no' }),
      time: el('span', { class: 'time' }),
      preview: el('span', { class: 'preview', translate: 'no' }),
      badge: el('span', { class: 'badge', 'aria-hidden': 'true' }),
      sr: el('span', { class: 'sr' }),
      account: el('span', { class: 'account' }),
      waiting: el('span', { class: 'waiting', hidden: true }),
    };
    r.button = el('button', { type: 'button', tabindex: '-1', 'aria-current': 'false', 'data-contact': contact, onclick: () => this.onOpen(contact) },
      r.name, r.time, r.preview, r.badge, r.sr, r.account, r.waiting);
    r.li = el('li', { 'data-contact': contact }, r.button);
    r.name.textContent = contact || t('unknown');
    this.rows.set(contact, r);
    return r;
  }

  #fill(r, c) {
    if (!c) return;
    // A follower's name (their remark) instead of their openid, which stays in the title.
    const name = c.name || c.contact || t('unknown');
    if (r.name.textContent !== name) r.name.textContent = name;
    r.button.title = c.name ? c.contact : '';
    const last = c.last;
    const time = last ? clock(last.time, { short: true }) : '';
    if (r.time.textContent !== time) r.time.textContent = time;
    const by = last?.out ? `${last.name && last.name !== this.userid ? last.name : t('you')}: ` : '';
    const text = last ? by + preview(last) : '';
    if (r.preview.textContent !== text) r.preview.textContent = text;
    // The team inbox: how long the follower has waited for an answer, and who owns it.
    const waits = c.state !== 'resolved' && c.waiting_since != null;
    r.waiting.hidden = !waits;
    r.waiting.textContent = waits ? t('waiting.for', { d: duration(Date.now() / 1000 - c.waiting_since) }) : '';
    r.li.dataset.state = c.state || '';
    r.li.dataset.assignee = c.assignee || '';
    r.badge.textContent = c.unread ? String(c.unread) : '';
    r.badge.hidden = !c.unread;
    r.sr.textContent = c.unread ? t('unread', { n: c.unread }) : '';
    const owner = c.state === 'resolved' ? t('act.resolved') : c.assignee ? `→${c.assignee}` : '';
    const key = `${c.wechat}|${c.company}|${c.wechat ? t('account.wechat') : ''}|${owner}`;
    if (r.accountKey !== key) {
      r.accountKey = key;
      const who = c.state === 'resolved' ? t('act.resolved') : c.assignee ? el('span', { class: 'owner' }, '→ ', data(c.assignee)) : null;
      const parts = [c.wechat ? t('account.wechat') : null, c.company ? data(c.company) : null, who].filter(Boolean);
      r.account.replaceChildren(...parts.flatMap((p, i) => (i ? [' · ', p] : [p])));
      r.account.hidden = !parts.length;
    }
  }

  /** Move `li` before `ref` if it is not there yet. moveBefore keeps focus (and hover);
   *  where the browser lacks it, focus is given back. */
  #place(li, ref) {
    if (li.nextElementSibling === ref && li.parentNode === this.ul) return;
    const focused = li.contains(document.activeElement) ? document.activeElement : null;
    if (this.ul.moveBefore) this.ul.moveBefore(li, ref);
    else this.ul.insertBefore(li, ref);
    if (focused && document.activeElement !== focused) focused.focus({ preventScroll: true });
  }

  #reorder() {
    this.dirty = false;
    for (let i = this.order.length - 1; i >= 0; i -= 1) {
      this.#place(this.rows.get(this.order[i]).li, this.rows.get(this.order[i + 1])?.li ?? null);
    }
  }

  #rove(button) {
    for (const b of this.ul.querySelectorAll('button[tabindex="0"]')) if (b !== button) b.tabIndex = -1;
    button.tabIndex = 0;
  }

  #key(e) {
    const buttons = [...this.ul.querySelectorAll('button[data-contact]')];
    const i = buttons.indexOf(document.activeElement);
    if (i < 0 || e.altKey || e.ctrlKey || e.metaKey) return;
    const to = { ArrowDown: i + 1, ArrowUp: i - 1, Home: 0, End: buttons.length - 1 }[e.key];
    if (to === undefined) return;
    e.preventDefault();
    const b = buttons[Math.max(0, Math.min(buttons.length - 1, to))];
    this.#rove(b);
    b.focus();
  }
}
