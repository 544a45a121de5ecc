// The card composer: what a WeChat follower can be sent besides text and images, in a
// small form — a link card (`news`), a menu they answer with a tap (`msgmenu`) and a mini
// program card (`miniprogrampage`, its cover an uploaded image). The gateway checks every
// field again and names the first one that is wrong; this form only keeps an agent from
// sending one it can already see is incomplete.

import { t } from './i18n.js';
import { state, thread } from './state.js';
import { $, el } from './util.js';

const P = '/im_component/wx_official_account';

/** The fields of each kind: [key, required, input type]. A menu's choices are one per line. */
export const KINDS = {
  news: [['title', true], ['description', false], ['url', true, 'url'], ['picurl', false, 'url']],
  msgmenu: [['head_content', false], ['list', true, 'lines'], ['tail_content', false]],
  miniprogrampage: [['title', true], ['appid', true], ['pagepath', true], ['thumb', true, 'file']],
};

/** The `msg` of a card from what was typed (strings by key; a menu's lines), or the key of
 *  the first required field left empty. Pure: the console's unit test calls it. */
export function cardMsg(kind, values) {
  const fields = KINDS[kind];
  if (!fields) return { missing: 'kind' };
  const msg = {};
  for (const [key, required, type] of fields) {
    const v = String(values[key] ?? '').trim();
    if (type === 'lines') {
      const lines = v.split('\n').map((l) => l.trim()).filter(Boolean);
      if (required && !lines.length) return { missing: key };
      // WeChat sends the chosen id back (`bizmsgmenuid`): the choice's number is enough.
      msg.list = lines.map((content, i) => ({ id: String(i + 1), content }));
    } else if (v) {
      msg[key] = v;
    } else if (required) {
      return { missing: key };
    }
  }
  return { msg };
}

export class CardComposer {
  /** `composer`: the reply box, whose `send` shows and sends the card like any message. */
  constructor(composer) {
    this.composer = composer;
    this.client = composer.client;
    $('card-open').addEventListener('click', () => (this.isOpen() ? this.close() : this.open()));
    $('card-kind').addEventListener('change', () => this.#fields());
    $('card-send').addEventListener('click', () => this.#send());
    this.#fields();
  }

  isOpen() {
    return !$('card-form').hidden;
  }

  /** The button shows only where a card can go: a WeChat follower, an open window, no note. */
  offer(on) {
    $('card-open').hidden = !on;
    if (!on) this.close();
  }

  open() {
    $('card-form').hidden = false;
    $('card-open').setAttribute('aria-expanded', 'true');
    $('card-error').hidden = true;
    $('card-form').querySelector('input, textarea')?.focus();
  }

  close() {
    $('card-form').hidden = true;
    $('card-open').setAttribute('aria-expanded', 'false');
  }

  #fields() {
    const kind = $('card-kind').value;
    $('card-fields').replaceChildren(...KINDS[kind].map(([key, required, type]) => {
      const id = `card-${key}`;
      const input = type === 'lines'
        ? el('textarea', { id, rows: 3, 'data-key': key, required })
        : el('input', { id, 'data-key': key, type: type || 'text', required, autocomplete: 'off', accept: type === 'file' ? 'image/jpeg,image/png' : undefined });
      return el('label', { for: id }, el('span', { 'data-i18n': `card.${key}` }, t(`card.${key}`)), ' ', input);
    }));
    $('card-error').hidden = true;
  }

  #error(...words) {
    const e = $('card-error');
    e.hidden = false;
    e.replaceChildren(...words);
  }

  async #send() {
    if (state.current === null) return;
    const th = thread(state.current);
    const kind = $('card-kind').value;
    const inputs = [...$('card-fields').querySelectorAll('[data-key]')];
    const values = Object.fromEntries(inputs.filter((i) => i.type !== 'file').map((i) => [i.dataset.key, i.value]));
    const file = inputs.find((i) => i.type === 'file')?.files?.[0];
    if (file) values.thumb = file.name;
    const { msg, missing } = cardMsg(kind, values);
    if (missing) {
      this.#error(t('card.missing', { field: t(`card.${missing}`) }));
      $(`card-${missing}`)?.focus();
      return;
    }
    $('card-send').disabled = true;
    try {
      // The cover goes up first: the card names it by its media path.
      if (file) msg.thumb = await this.#upload(file);
    } catch (e) {
      this.#error(t('err.upload'), ': ', e.message);
      return;
    } finally {
      $('card-send').disabled = false;
    }
    for (const i of inputs) i.value = '';
    this.close();
    this.composer.send(th, kind, msg);
  }

  async #upload(file) {
    const r = await fetch(this.client.url(`${P}/media`), { method: 'POST', body: file, headers: { ...this.client.headers(), 'content-type': file.type || 'application/octet-stream' } });
    const j = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(j.result?.message || `${r.status}`);
    return j.data.media_path;
  }
}
