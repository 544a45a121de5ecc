// Small DOM and formatting helpers shared by the console's modules.

import { getLang, t } from './i18n.js';
import { emojify } from './emoji.js';

export const $ = (id) => document.getElementById(id);

/** An element: `el('a', { href, class, onclick }, ...children)`. Text is always text. */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

/** Data (an id, a key, a server's words) inside a translated sentence: not ours to translate. */
export const data = (v) => el('span', { translate: 'no' }, String(v ?? ''));

/** A URL from message data, if it is one a page may follow: http(s) only. Anything else
 *  (javascript:, data:…) is made into neither a link nor a source. */
export function safeUrl(u) {
  try {
    const url = new URL(String(u), location.origin);
    if (url.protocol === 'http:' || url.protocol === 'https:') return url.toString();
  } catch { /* not a URL */ }
  return null;
}

/** Text with its links clickable and WeChat's emoticons as emoji; never HTML. */
export function linkify(text) {
  const out = [];
  const re = /https?:\/\/[^\s<>"]+/g;
  let last = 0;
  text = String(text);
  for (const m of text.matchAll(re)) {
    if (m.index > last) out.push(emojify(text.slice(last, m.index)));
    out.push(el('a', { href: m[0], target: '_blank', rel: 'noopener noreferrer' }, m[0]));
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(emojify(text.slice(last)));
  return out;
}

const sameDay = (a, b) => a.toDateString() === b.toDateString();

/** A message's time: the time today, the date and the time before. */
export function clock(unix, { short = false } = {}) {
  if (!unix) return '';
  const d = new Date(unix * 1000);
  const time = d.toLocaleTimeString(getLang(), { hour: '2-digit', minute: '2-digit' });
  if (sameDay(d, new Date())) return time;
  const date = d.toLocaleDateString(getLang(), { year: d.getFullYear() === new Date().getFullYear() ? undefined : 'numeric', month: 'numeric', day: 'numeric' });
  return short ? date : `${date} ${time}`;
}

export function duration(secs) {
  if (secs <= 0) return t('dur.m', { m: 0 });
  const h = Math.floor(secs / 3600);
  const m = Math.floor((secs % 3600) / 60);
  return h ? t('dur.hm', { h, m }) : t('dur.m', { m: Math.max(m, 1) });
}

const encoder = new TextEncoder();
export const utf8Bytes = (s) => encoder.encode(s).length;

/** A translated sentence as nodes, its `{name}` parts filled with `params` as data (names,
 *  ids: not ours to translate). */
export function tData(key, params = {}) {
  return t(key, Object.fromEntries(Object.keys(params).map((k) => [k, `\u0000${k}\u0000`])))
    .split('\u0000')
    .map((part, i) => (i % 2 ? data(params[part]) : part))
    .filter((p) => p !== '');
}
